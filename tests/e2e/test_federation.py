"""Federation end to end (contract §9): a hub on SQLite and two sections on PostgreSQL, each its
own uanet, through HTTP only."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, expect
from standardwebhooks import Webhook

from shared.settings import SERVICES
from tests.browser.conftest import CHROMIUM, chromium
from tests.e2e.federation_flow import Network, open_network
from tests.e2e.test_whole_loop import link
from tests.support import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture
async def network(tmp_path: Path, pg_database: Callable[[], str]) -> AsyncIterator[Network]:
    def sqlite(name: str) -> dict[str, str]:
        return {s: f"sqlite+aiosqlite:///{tmp_path / f'{name}-{s}.db'}" for s in SERVICES}

    def postgres(_name: str) -> dict[str, str]:
        return {s: pg_database() for s in SERVICES}

    async for running in open_network(tmp_path, sqlite, postgres, {"UK": "urgent", "FR": "none"}):
        await running.sections["UK"].import_members(tmp_path, "fr")
        await running.sections["FR"].import_members(tmp_path, "fr")
        yield running


async def _respond(network: Network, code: str, subject: str, count: int, which: int = 0) -> None:
    """Member ``which`` of the section reports ``count`` actions on the page their alert
    links to."""
    office = network.sections[code]
    alerts = await eventually(
        lambda: len(found := office.mails_to_members(subject)) > which and found,
        what="an alert",
    )
    alert = sorted(alerts, key=lambda m: m.rcpt_tos[0])[which]
    act = link(alert.part("plain"), "/act/")
    reported = await network.client.post(act, json={"kind": "letter", "count": count})
    assert reported.status_code in (200, 201, 202), reported.text


@asynccontextmanager
async def _hub_page(network: Network, action_id: str) -> AsyncIterator[Page | None]:
    """The hub's action page open in headless Chromium (None where Debian's chromium is
    missing: no screenshots then)."""
    if not CHROMIUM.exists():
        print("no chromium: no screenshots of the hub's sections table")
        yield None
        return
    async with chromium() as browser, network.hub.console_in_chromium(browser) as page:
        await page.goto(f"{network.hub.stack.url('publisher')}/actions/{action_id}")
        yield page


async def _screenshots(page: Page, network: Network, into: Path) -> None:
    """Once both sections reported, counts the page took live (opened before the responses):
    the sections table as staff see it, then the overview."""
    for code, actions in (("UK", "3"), ("FR", "2")):
        cell = page.locator(f'[data-stat="sections.{code}.responses.actions"]')
        await expect(cell).to_have_text(actions)
        status = page.locator(f'[data-stat="sections.{code}.status"]')
        await expect(status).to_have_text("published")
    await expect(page.locator('[data-stat="network.responses.actions"]')).to_have_text("5")
    await page.screenshot(path=into / "hub-sections.png", full_page=True)
    await page.goto(f"{network.hub.stack.url('publisher')}/overview")
    await page.screenshot(path=into / "hub-overview.png", full_page=True)


async def test_hub_publishes_sections_send_and_the_counts_come_back(
    network: Network, artifacts_dir: Path
) -> None:
    hub, uk, fr = network.hub, network.sections["UK"], network.sections["FR"]
    for office in (hub, fr):
        await office.console_account()  # made now (a CLI run), not inside the timings
    started = time.monotonic()
    action = await network.hub_publishes("Federated case")

    # UK publishes urgent actions on arrival: its French members get the French text.
    await eventually(
        lambda: len(uk.mails_to_members("Federated case (fr)")) == len(uk.members),
        timeout=15,
        what="UK's members mailed within 15 s",
    )
    auto_seconds = time.monotonic() - started
    uk_copy = await network.local_copy("UK", action["id"])
    assert uk_copy["status"] == "published"
    assert uk_copy["origin"]["reference"] == action["reference"]

    # FR gets a draft "from the international office"; staff edit the subject and publish.
    fr_copy = await network.local_copy("FR", action["id"])
    assert fr_copy["status"] == "draft" and fr_copy["audience"]["countries"] == []
    assert fr_copy["origin"] == {
        "hub": hub.stack.url("publisher"),
        "action_id": action["id"],
        "reference": action["reference"],
    }
    assert not fr.mails_to_members()
    async with fr.console() as console:
        page = (await console.get(f"/actions/{fr_copy['id']}")).text
    assert "From the international office" in page and action["reference"] in page
    assert f'action="/actions/{fr_copy["id"]}/decline"' in page
    content = fr_copy["content"]
    content["fr"]["subject"] = "Action urgente de la section"
    staff = fr.auth(fr.staff)
    edited = await network.client.patch(
        f"{fr.api}/actions/{fr_copy['id']}", json={"content": content}, headers=staff
    )
    assert edited.status_code == 200, edited.text
    by_hand = time.monotonic()
    published = await network.client.post(
        f"{fr.api}/actions/{fr_copy['id']}/publish", headers=staff
    )
    assert published.status_code == 200
    await eventually(
        lambda: len(fr.mails_to_members("Action urgente de la section")) == len(fr.members),
        what="FR's members mailed the edited subject",
    )
    timings = {
        "hub_publish_to_auto_section_inboxes_s": round(auto_seconds, 2),
        # Staff's edit and publish done by the test at once: the network's own part of it.
        "hub_publish_to_by_hand_section_inboxes_s": round(time.monotonic() - started, 2),
        "by_hand_section_publish_to_inboxes_s": round(time.monotonic() - by_hand, 2),
    }
    print(
        "hub publish -> UK inboxes (auto): {hub_publish_to_auto_section_inboxes_s}s; hub publish "
        "-> FR inboxes (edited and published by hand at once): "
        "{hub_publish_to_by_hand_section_inboxes_s}s (FR publish -> inboxes: "
        "{by_hand_section_publish_to_inboxes_s}s)".format(**timings)
    )
    (artifacts_dir / "federation").mkdir(exist_ok=True)
    (artifacts_dir / "federation" / "timings.json").write_text(json.dumps(timings, indent=2))
    everyone = uk.members + fr.members
    assert not [m for m in hub.stack.smtp.messages if set(m.rcpt_tos) & set(everyone)]

    async def counted() -> dict[str, Any] | None:
        stats = await network.hub_stats(action["id"])
        parts = stats["sections"]
        if (
            parts.get("UK", {}).get("responses", {}).get("actions") == 3
            and parts.get("FR", {}).get("responses", {}).get("actions") == 2
        ):
            return stats
        return None

    # Responses in both sections show on the hub within 15 s, per section and in the network,
    # and live on the hub's console page (open before they come).
    async with _hub_page(network, action["id"]) as page:
        await _respond(network, "UK", "Federated case (fr)", 3)
        await _respond(network, "FR", "Action urgente de la section", 2)
        stats = await eventually(counted, timeout=15, what="both sections' counts on the hub")
        if page is not None:
            await _screenshots(page, network, artifacts_dir / "federation")

    assert stats["sections"]["UK"]["status"] == "published"
    assert stats["sections"]["UK"]["recipients"]["email"] == len(uk.members)
    assert stats["network"]["responses"]["actions"] == 5
    assert stats["network"]["responses"]["people"] == 2
    assert stats["network"]["recipients"]["email"] == len(everyone)

    async with hub.console() as console:
        page = (await console.get(f"/actions/{action['id']}")).text
        overview = (await console.get("/overview")).text
    assert 'data-section="UK"' in page and 'data-section="FR"' in page
    assert 'data-stat="network.responses.actions">5<' in page
    assert "data-sections-month" in overview

    # Nothing personal reaches the hub: stats, stream, CSV.
    csv_text = (
        await network.client.get(
            f"{hub.api}/actions/{action['id']}/stats.csv", headers=hub.auth(hub.coordinator)
        )
    ).text
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert {r["section"] for r in rows} >= {"", "UK", "FR", "network"}
    async with network.client.stream(
        "GET",
        f"{hub.api}/actions/{action['id']}/stats/stream",
        headers=hub.auth(hub.coordinator),
    ) as stream:
        first = ""
        async for chunk in stream.aiter_text():
            first += chunk
            if "\n\n" in first:
                break
    bodies = json.dumps(stats) + csv_text + first
    for address in everyone:
        assert address not in bodies
    assert not re.search(r"Member \d", bodies)

    # The hub's follow-up reaches UK's recipients and waits on FR's page.
    follow_up = {
        "kind": "further_information",
        "content": {"en": {"subject": "Hub news (en)"}, "fr": {"subject": "Hub news (fr)"}},
    }
    sent = await network.client.post(
        f"{hub.api}/actions/{action['id']}/updates",
        json=follow_up,
        headers=hub.auth(hub.staff),
    )
    assert sent.status_code == 202, sent.text
    await eventually(
        lambda: len(uk.mails_to_members("Hub news (fr)")) == len(uk.members),
        what="the follow-up at UK's members",
    )

    async def waiting() -> list[Any]:
        got = await network.client.get(
            f"{fr.api}/actions/{fr_copy['id']}", headers=fr.auth(fr.coordinator)
        )
        pending: list[Any] = got.json()["pending_updates"]
        return pending

    pending = await eventually(waiting, what="the follow-up waiting at FR")
    assert pending[0]["content"]["fr"]["subject"] == "Hub news (fr)"
    assert not fr.mails_to_members("Hub news")
    sent_by_staff = await network.client.post(
        f"{fr.api}/actions/{fr_copy['id']}/pending_updates/{pending[0]['id']}/send",
        headers=staff,
    )
    assert sent_by_staff.status_code == 200, sent_by_staff.text
    assert sent_by_staff.json()["pending_updates"] == []
    await eventually(
        lambda: len(fr.mails_to_members("Hub news (fr)")) == len(fr.members),
        what="FR's staff sent it",
    )

    # The hub's close closes both.
    closed = await network.client.post(
        f"{hub.api}/actions/{action['id']}/close",
        json={"outcome": "released"},
        headers=hub.auth(hub.staff),
    )
    assert closed.status_code == 200
    for code in ("UK", "FR"):

        async def is_closed(code: str = code) -> bool:
            return (await network.local_copy(code, action["id"]))["status"] == "closed"

        await eventually(is_closed, what=f"{code} closed")

    async def statuses() -> bool:
        parts = (await network.hub_stats(action["id"]))["sections"]
        return parts["UK"]["status"] == "closed" and parts["FR"]["status"] == "closed"

    await eventually(statuses, timeout=15, what="the hub sees both closed")
    listed = await asyncio.to_thread(hub.stack.cli, "sections", "list")
    assert listed.returncode == 0 and "UK" in listed.stdout and "never" not in listed.stdout


def _signed(key: str, body: bytes, *, when: datetime | None = None) -> dict[str, str]:
    when = when or datetime.now(UTC)
    msg_id = "msg_" + "1" * 32
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": Webhook(key).sign(msg_id, when, body),
        "content-type": "application/json",
    }


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_forged_and_cross_section_calls_get_401_and_change_nothing(
    network: Network,
) -> None:
    hub, uk = network.hub, network.sections["UK"]
    action = await network.hub_publishes("Trust", urgency="standard")
    await network.local_copy("UK", action["id"])
    report = {
        "type": "section.counts",
        "timestamp": "2026-12-06T00:00:00Z",
        "data": {
            "action_id": action["id"],
            "status": "published",
            "reference": "UA 1/26",
            "version": 10**17,
            "updated_at": "2026-12-06T00:00:00Z",
            "recipients": {"email": 999},
        },
    }
    body = json.dumps(report).encode()
    counts = f"{hub.api}/federation/counts"
    uk_key, fr_key = network.keys["UK"], network.keys["FR"]
    stale = datetime.now(UTC) - timedelta(minutes=6)
    attempts = [
        ("FR's key under UK's code", body, {**_signed(fr_key, body), "uanet-section": "UK"}),
        ("no signature", body, {"uanet-section": "UK", "content-type": "application/json"}),
        ("an unknown section", body, {**_signed(uk_key, body), "uanet-section": "XX"}),
        ("a stale timestamp", body, {**_signed(uk_key, body, when=stale), "uanet-section": "UK"}),
        ("another body", body + b" ", {**_signed(uk_key, body), "uanet-section": "UK"}),
    ]
    for label, sent, headers in attempts:
        answer = await network.client.post(counts, content=sent, headers=headers)
        assert answer.status_code == 401, label
    # A hub event forged with another section's key, at UK's inbox.
    fake = json.dumps(
        {
            "type": "action.closed",
            "timestamp": "x",
            "data": {
                "action_id": action["id"],
                "reference": action["reference"],
                "outcome": "released",
            },
        }
    )
    inbox = f"{uk.api}/federation/inbox"
    for headers in (
        {**_signed(network.keys["FR"], fake.encode()), "uanet-section": "UK"},
        {**_signed(network.keys["UK"], fake.encode()), "uanet-section": "FR"},
    ):
        answer = await network.client.post(inbox, content=fake.encode(), headers=headers)
        assert answer.status_code == 401
    assert (await network.local_copy("UK", action["id"]))["status"] == "draft"
    stats = await network.hub_stats(action["id"])
    assert stats["sections"].get("UK", {}).get("recipients", {}).get("email", 0) != 999

    removed = await asyncio.to_thread(hub.stack.cli, "sections", "remove", "UK")
    assert removed.returncode == 0, removed.stderr
    genuine = {**_signed(network.keys["UK"], body), "uanet-section": "UK"}
    answer = await network.client.post(counts, content=body, headers=genuine)
    assert answer.status_code == 401, "a removed section is refused"


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_a_section_down_while_the_hub_publishes_and_the_hub_down_while_they_report(
    network: Network,
) -> None:
    hub, fr = network.hub, network.sections["FR"]
    fr.stack.kill("publisher", signal.SIGTERM)
    action = await network.hub_publishes("While FR sleeps")
    await asyncio.sleep(30)
    fr.stack.start("publisher")
    await fr.stack.wait_ready("publisher")
    fr_copy = await network.local_copy("FR", action["id"])
    assert fr_copy["status"] == "draft"

    # UK (auto) sends and its members respond while the hub is down; the hub ends with the
    # newest counts once it is back.
    hub.stack.kill("publisher", signal.SIGKILL)
    await _respond(network, "UK", "While FR sleeps (fr)", 1)
    await _respond(network, "UK", "While FR sleeps (fr)", 2, which=1)
    await asyncio.sleep(5)
    hub.stack.start("publisher")
    await hub.stack.wait_ready("publisher")

    async def newest() -> bool:
        stats = await network.hub_stats(action["id"])
        return stats["sections"].get("UK", {}).get("responses", {}).get("actions") == 3

    await eventually(newest, timeout=60, what="the hub's newest UK counts")
    stats = await network.hub_stats(action["id"])
    assert stats["sections"]["UK"]["responses"]["people"] == 2
    assert stats["network"]["responses"]["actions"] == 3
