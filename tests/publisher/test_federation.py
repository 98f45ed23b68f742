"""Federation in-process (contract §9): a hub and a section as two apps on their own databases,
the hub's calls taken from its delivery rows and posted to the section's inbox by the test, in
whatever order the test wants (the three-stack run is tests/e2e/test_federation.py)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr
from sqlalchemy import select

from services.publisher.audit import Actor
from services.publisher.federation import hub
from services.publisher.federation.models import Section
from services.publisher.federation.section import CountsReporter, ensure_hub_endpoint
from services.publisher.tally import stats_changed_at
from services.publisher.webhooks.delivery import WebhookDeliverer
from services.publisher.webhooks.models import WebhookDelivery, WebhookEvent
from services.publisher.webhooks.standard import new_event_id, signed_headers
from shared.db import utcnow
from shared.settings import Settings
from tests.publisher.conftest import Api, _open_api, migrated, publisher_settings, sample_action
from tests.publisher.console_support import Browser, make_user
from tests.support import eventually, free_port

OPERATOR = Actor("cli", "test")


@pytest.fixture
async def office(tmp_path: Path) -> AsyncIterator[Api]:
    """The hub (the international office): any uanet with sections added."""
    opened, close = await _open_api(await migrated(f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"))
    try:
        yield opened
    finally:
        await close()


async def add_section(office: Api, code: str, url: str | None = None) -> str:
    """``uanet sections add``; returns the section's key."""
    async with office.app.state.database.write() as session:
        _, key = await hub.add_section(
            session,
            code=code,
            name=f"Section {code}",
            url=url or f"https://{code.lower()}.example.org",
            secret_key=office.app.state.sealing_key,
            actor=OPERATOR,
        )
    return key


async def remove_section(office: Api, code: str) -> None:
    async with office.app.state.database.write() as session:
        await hub.remove_section(session, code=code, actor=OPERATOR)


async def sent_to(office: Api, code: str) -> list[tuple[str, dict[str, Any]]]:
    """What the hub has queued for the section's inbox, oldest first: (webhook-id, event)."""
    async with office.app.state.database.read() as session:
        endpoint_id = (await session.get(Section, code)).endpoint_id  # type: ignore[union-attr]
        rows = (
            await session.execute(
                select(WebhookEvent.id, WebhookEvent.body)
                .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
                .order_by(WebhookDelivery.id)
            )
        ).all()
    return [(event_id, json.loads(body)) for event_id, body in rows]


class SectionOffice:
    """A section's uanet, and its inbox as the hub's deliverer calls it."""

    def __init__(self, api: Api, code: str, key: str) -> None:
        self.api, self.code, self.key = api, code, key

    async def deliver(self, webhook_id: str, event: dict[str, Any]) -> int:
        body = json.dumps(event).encode()
        headers = signed_headers(self.key, webhook_id, body, utcnow())
        headers.update({"content-type": "application/json", "uanet-section": self.code})
        answer = await self.api.client.post(
            "/api/v1/federation/inbox", content=body, headers=headers
        )
        return answer.status_code

    async def copy_of(self, hub_action_id: str) -> dict[str, Any] | None:
        listed = await self.api.client.get("/api/v1/actions", headers=self.api.auth("coordinator"))
        for item in listed.json()["items"]:
            if (item.get("origin") or {}).get("action_id") == hub_action_id:
                found: dict[str, Any] = item
                return found
        return None

    async def audit(self, event: str) -> list[dict[str, Any]]:
        return await audit_of(self.api, event)


async def audit_of(office: Api, event: str) -> list[dict[str, Any]]:
    got = await office.client.get(
        "/api/v1/audit", params={"event": event}, headers=office.auth("admin")
    )
    items: list[dict[str, Any]] = got.json()["items"]
    return items


@asynccontextmanager
async def open_section(
    office: Api, tmp_path: Path, code: str, auto: str = "none"
) -> AsyncIterator[tuple[SectionOffice, Settings]]:
    """A section added on the hub and its own uanet, set up with the key the hub gave it."""
    key = await add_section(office, code)
    url = await migrated(f"sqlite+aiosqlite:///{tmp_path / f'{code}.db'}")
    settings = publisher_settings(url).model_copy(
        update={
            "hub_url": "https://hub.example.org",
            "section_code": code,
            "hub_key": SecretStr(key),
            "syndication_auto_publish": auto,
        }
    )
    opened, close = await _open_api(url, settings)
    try:
        yield SectionOffice(opened, code, key), settings
    finally:
        await close()


@pytest.fixture
async def section_uk(office: Api, tmp_path: Path) -> AsyncIterator[SectionOffice]:
    """Section UK, publishing urgent hub actions on arrival."""
    async with open_section(office, tmp_path, "UK", "urgent") as (section, _):
        yield section


async def test_a_follow_up_and_close_before_their_action_wait_for_it(
    office: Api, section_uk: SectionOffice
) -> None:
    """The hub's calls to a section are not ordered: a publish tried again after a failure can
    arrive after its follow-up and close. Those are refused (409, the hub tries again) until the
    action is there, so the section ends closed, with the follow-up sent, nothing lost."""
    action = await office.publish((await office.create())["id"])
    sent = await office.client.post(
        f"/api/v1/actions/{action['id']}/updates",
        json={"kind": "further_information", "content": {"en": {"subject": "News", "sms": "News"}}},
        headers=office.auth("staff"),
    )
    assert sent.status_code == 202, sent.text
    closed = await office.client.post(
        f"/api/v1/actions/{action['id']}/close",
        json={"outcome": "released"},
        headers=office.auth("staff"),
    )
    assert closed.status_code == 200, closed.text
    published, follow_up, close = await sent_to(office, "UK")
    assert [e["type"] for _, e in (published, follow_up, close)] == [
        "action.published",
        "action.updated",
        "action.closed",
    ]

    assert await section_uk.deliver(*close) == 409
    assert await section_uk.deliver(*follow_up) == 409
    assert await section_uk.copy_of(action["id"]) is None
    assert await section_uk.deliver(*published) == 204
    copy = await section_uk.copy_of(action["id"])
    assert copy is not None and copy["status"] == "published"  # urgent: on arrival
    # The hub's retries, now that the action is there.
    assert await section_uk.deliver(*follow_up) == 204
    assert await section_uk.deliver(*close) == 204
    assert await section_uk.deliver(*close) == 204  # and a retry of a retry changes nothing
    copy = await section_uk.copy_of(action["id"])
    assert copy is not None and copy["status"] == "closed" and copy["outcome"] == "released"
    updates = await section_uk.api.client.get(
        f"/api/v1/actions/{copy['id']}", headers=section_uk.api.auth("coordinator")
    )
    assert updates.json()["pending_updates"] == []
    received = await section_uk.audit("hub_action.received")
    assert [e["action_id"] for e in received] == [copy["id"]]
    assert len(await section_uk.audit("hub_action.auto_published")) == 1
    assert len(await section_uk.audit("action.follow_up")) == 1


async def test_a_hub_action_that_can_never_be_taken_is_answered_and_audited(
    office: Api, section_uk: SectionOffice
) -> None:
    """Sending it again would change nothing: 2xx (the hub stops), an audit entry for staff,
    and its follow-ups and close are not refused for ever either."""
    action = await office.publish((await office.create())["id"])
    (webhook_id, published), *_ = await sent_to(office, "UK")
    published["data"]["content"] = {}  # no language: not an action this section can take
    assert await section_uk.deliver(webhook_id, published) == 204
    assert await section_uk.copy_of(action["id"]) is None
    (refused,) = await section_uk.audit("hub_action.refused")
    assert refused["details"]["hub_action_id"] == action["id"]
    close = {
        "type": "action.closed",
        "timestamp": "2026-12-07T00:00:00Z",
        "data": {"action_id": action["id"], "reference": "UA 1/26", "outcome": "released"},
    }
    assert await section_uk.deliver(new_event_id(), close) == 204
    # An action the section was never sent is not one it waits for: the hub sends it no close.
    unknown = {**close, "data": {**close["data"], "action_id": str(uuid.uuid4())}}
    assert await section_uk.deliver(new_event_id(), unknown) == 409


async def test_follow_ups_and_the_close_go_only_to_the_sections_the_action_went_to(
    office: Api,
) -> None:
    """A section refuses (409) a follow-up of an action it never got, so the hub must send none:
    not to a section outside the action's ``sections``, one added after the publish, or one
    removed (nothing at all goes to a removed section)."""
    for code in ("UK", "FR", "DE"):
        await add_section(office, code)
    to_two = await office.publish((await office.create(title="Two", sections=["UK", "FR"]))["id"])
    to_all = await office.publish((await office.create(title="All"))["id"])
    await remove_section(office, "FR")
    await add_section(office, "ES")  # after the publishes: never got them
    for action in (to_two, to_all):
        closed = await office.client.post(
            f"/api/v1/actions/{action['id']}/close",
            json={"outcome": "released"},
            headers=office.auth("staff"),
        )
        assert closed.status_code == 200, closed.text

    async def calls(code: str) -> list[tuple[str, str]]:
        return [(e["type"], e["data"]["reference"]) for _, e in await sent_to(office, code)]

    two, every = to_two["reference"], to_all["reference"]
    assert await calls("UK") == [
        ("action.published", two),
        ("action.published", every),
        ("action.closed", two),
        ("action.closed", every),
    ]
    assert await calls("DE") == [("action.published", every), ("action.closed", every)]
    assert await calls("ES") == []
    later = await office.publish((await office.create(title="Later"))["id"])
    async with office.app.state.database.read() as session:
        assert await hub.sent_to(session, uuid.UUID(to_all["id"])) == ["DE", "UK"]
        # Nothing goes to a removed section: no row, and its inbox went with its deliveries.
        assert await hub.sent_to(session, uuid.UUID(later["id"])) == ["DE", "ES", "UK"]
        removed = await session.get(Section, "FR")
        assert removed is not None and removed.removed_at is not None
        assert not (
            await session.execute(
                select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == removed.endpoint_id)
            )
        ).all()
    added = [e["subject"].split()[1] for e in await audit_of(office, "section.added")]
    assert sorted(added) == ["DE", "ES", "FR", "UK"]
    assert [e["subject"] for e in await audit_of(office, "section.removed")] == ["section FR"]


async def test_an_action_names_only_sections_the_hub_has(office: Api) -> None:
    """Unknown (or removed) codes in ``sections``: 422 naming the field, on create and edit."""
    await add_section(office, "UK")
    await add_section(office, "FR")
    await remove_section(office, "FR")
    for codes in (["XX"], ["UK", "FR"]):
        refused = await office.client.post(
            "/api/v1/actions", json=sample_action(sections=codes), headers=office.auth("staff")
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["errors"][0]["field"] == "sections"
        assert codes[-1] in refused.json()["errors"][0]["message"]
    draft = await office.create(sections=["uk"])
    assert draft["sections"] == ["UK"]
    edited = await office.client.patch(
        f"/api/v1/actions/{draft['id']}", json={"sections": ["ZZ"]}, headers=office.auth("staff")
    )
    assert edited.status_code == 422 and edited.json()["errors"][0]["field"] == "sections"
    published = await office.publish(draft["id"])
    async with office.app.state.database.read() as session:
        assert await hub.sent_to(session, uuid.UUID(published["id"])) == ["UK"]


async def test_a_section_declines_a_hub_action_and_the_hub_sees_it(
    office: Api, tmp_path: Path
) -> None:
    """Section FR (no auto-publish) gets a draft, declines it (audited), reports ``declined``;
    the hub's close of it then changes nothing there."""
    async with open_section(office, tmp_path, "FR") as (fr, settings):
        opened, key = fr.api, fr.key
        await ensure_hub_endpoint(opened.app.state.database, settings, opened.app.state.sealing_key)
        action = await office.publish((await office.create())["id"])
        ((webhook_id, published),) = await sent_to(office, "FR")
        assert await fr.deliver(webhook_id, published) == 204
        draft = await fr.copy_of(action["id"])
        assert draft is not None and draft["status"] == "draft"
        assert not await fr.audit("hub_action.auto_published")
        declined = await opened.client.post(
            f"/api/v1/actions/{draft['id']}/decline", headers=opened.auth("staff")
        )
        assert declined.status_code == 200 and declined.json()["status"] == "declined"
        (entry,) = await fr.audit("hub_action.declined")
        assert entry["action_id"] == draft["id"] and entry["actor"] == "test staff"
        again = await opened.client.post(
            f"/api/v1/actions/{draft['id']}/decline", headers=opened.auth("staff")
        )
        assert again.status_code == 409

        assert await CountsReporter(opened.app.state.database, lambda: None).report_once() == 1
        async with opened.app.state.database.read() as session:
            body = (
                await session.execute(
                    select(WebhookEvent.body).where(WebhookEvent.type == "section.counts")
                )
            ).scalar_one()
        report = json.loads(body)["data"]
        assert report["status"] == "declined" and report["published_at"] is None
        assert await report_counts(office, "FR", key, report) == 204
        stats = await office.client.get(
            f"/api/v1/actions/{action['id']}/stats", headers=office.auth("coordinator")
        )
        assert stats.json()["sections"]["FR"]["status"] == "declined"

        closed = await office.client.post(
            f"/api/v1/actions/{action['id']}/close",
            json={"outcome": "released"},
            headers=office.auth("staff"),
        )
        assert closed.status_code == 200
        (_, close_call) = (await sent_to(office, "FR"))[-1]
        assert close_call["type"] == "action.closed"
        assert await fr.deliver(new_event_id(), close_call) == 204
        after = await fr.copy_of(action["id"])
        assert after is not None and after["status"] == "declined"


async def report_counts(office: Api, code: str, key: str, data: dict[str, Any]) -> int:
    """A section's counts report, signed as its reporter signs it."""
    body = json.dumps({"type": "section.counts", "timestamp": "x", "data": data}).encode()
    headers = signed_headers(key, new_event_id(), body, utcnow())
    headers.update({"content-type": "application/json", "uanet-section": code})
    answer = await office.client.post("/api/v1/federation/counts", content=body, headers=headers)
    return answer.status_code


async def test_the_sections_table_has_a_line_per_section_sent_to_and_when_each_published(
    office: Api,
) -> None:
    keys = {code: await add_section(office, code) for code in ("FR", "UK")}
    action = await office.publish((await office.create())["id"])
    browser = Browser(office.app)
    await browser.sign_in(await make_user(office.app, "coordinator"))
    try:
        page = (await browser.get(f"/actions/{action['id']}")).text
        for code in ("FR", "UK"):
            assert f'<tr data-section="{code}" data-waiting>' in page
        assert page.count("waiting for its report") == 2
        async with office.app.state.database.read() as session:
            before = await stats_changed_at(session=session, action_id=uuid.UUID(action["id"]))

        published_at = "2026-12-07T06:12:03Z"
        report = {
            "action_id": action["id"],
            "status": "published",
            "reference": "UA 7/26",
            "version": 2,
            "updated_at": "2099-01-01T00:00:00Z",
            "published_at": published_at,
            "recipients": {"email": 40},
            "responses": {"people": 3, "actions": 5},
        }
        assert await report_counts(office, "UK", keys["UK"], report) == 204
        # An older section says nothing of when it published: still taken.
        older = {k: v for k, v in report.items() if k != "published_at"}
        assert await report_counts(office, "FR", keys["FR"], {**older, "status": "received"}) == 204

        page = (await browser.get(f"/actions/{action['id']}")).text
        assert "waiting for its report" not in page
        uk_line = page[page.index('<tr data-section="UK">') :].split("</tr>")[0]
        assert ">07 Dec 06:12:03 UTC<" in uk_line and ">published<" in uk_line
        fr_line = page[page.index('<tr data-section="FR">') :].split("</tr>")[0]
        assert ">received<" in fr_line and "—" in fr_line
    finally:
        await browser.aclose()
    stats = (
        await office.client.get(
            f"/api/v1/actions/{action['id']}/stats", headers=office.auth("coordinator")
        )
    ).json()
    assert stats["sections"]["UK"]["published_at"] == published_at
    assert stats["sections"]["FR"]["published_at"] is None
    # The live stream's poll sees a section's report taken by another process.
    async with office.app.state.database.read() as session:
        after = await stats_changed_at(session=session, action_id=uuid.UUID(action["id"]))
    assert before is not None and after is not None and after > before
    assert after.year == 2099


async def test_the_hub_stats_list_only_sections_that_reported(office: Api) -> None:
    """Sent but silent sections are lines on the console, not counts in the API (§9's shape)."""
    await add_section(office, "UK")
    action = await office.publish((await office.create())["id"])
    stats = (
        await office.client.get(
            f"/api/v1/actions/{action['id']}/stats", headers=office.auth("coordinator")
        )
    ).json()
    assert stats["sections"] == {}
    assert stats["network"]["recipients"] == {"email": 0, "sms": 0}


async def test_the_hubs_deliverer_sends_a_refused_close_again_until_it_is_taken(
    office: Api,
) -> None:
    """The other half of the order fix, on the hub: a section's 409 (or any other refusal) is
    tried again, never given up; once the action is taken, what waits goes at once."""
    answered: list[tuple[str, int]] = []
    have: set[str] = set()

    async def inbox(request: web.Request) -> web.Response:
        event = json.loads(await request.read())
        action_id = event["data"].get("action_id") or event["data"]["id"]
        if event["type"] == "action.published":
            published = [a for a in answered if a[0] == "action.published"]
            status = 503 if not published else 204  # down the first time
            if status == 204:
                have.add(action_id)
        else:
            status = 204 if action_id in have else 409
        answered.append((event["type"], status))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/api/v1/federation/inbox", inbox)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    deliverer = WebhookDeliverer(
        office.app.state.database,
        secret_key=office.app.state.sealing_key,
        # Longer than the test waits after the first tries: only the catch-up sends them.
        retry_delays=[timedelta(seconds=1), timedelta(minutes=10)],
        disable_after=timedelta(days=5),
    )
    try:
        await add_section(office, "UK", f"http://127.0.0.1:{port}")
        action = await office.publish((await office.create())["id"])
        closed = await office.client.post(
            f"/api/v1/actions/{action['id']}/close",
            json={"outcome": "released"},
            headers=office.auth("staff"),
        )
        assert closed.status_code == 200
        deliverer.start()
        await eventually(
            lambda: ("action.closed", 204) in answered, timeout=20, what="the close taken"
        )
    finally:
        await deliverer.stop()
        await runner.cleanup()
    assert ("action.closed", 409) in answered
    assert answered.index(("action.published", 204)) < answered.index(("action.closed", 204))
    async with office.app.state.database.read() as session:
        states = (await session.execute(select(WebhookDelivery.state))).scalars().all()
    assert set(states) == {"delivered"}
