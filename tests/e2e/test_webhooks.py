"""Outbound webhooks (contract §8) with the three services as processes and a receiver of our own
on loopback that verifies every call with the ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import re
import signal
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from services.publisher.webhooks.standard import EVENT_TYPES
from shared.settings import SERVICES
from tests.e2e.test_whole_loop import link
from tests.e2e.webhooks_flow import Hooks, open_hooks
from tests.support import eventually

pytestmark = pytest.mark.e2e

ANA = "ana.hooks@example.net"
SAM = "+447911123456"


def sqlite_urls(tmp_path: Path) -> dict[str, str]:
    return {s: f"sqlite+aiosqlite:///{tmp_path / f'{s}.db'}" for s in SERVICES}


@pytest.fixture(params=["sqlite", "postgres"])
async def hooks(
    request: pytest.FixtureRequest,
    amqp_url: str,
    tmp_path: Path,
    pg_database: Callable[[], str],
) -> AsyncIterator[Hooks]:
    urls = (
        sqlite_urls(tmp_path) if request.param == "sqlite" else {s: pg_database() for s in SERVICES}
    )
    async for running in open_hooks(amqp_url, urls, tmp_path):
        yield running


async def confirm_email(hooks: Hooks, address: str) -> None:
    mails = await eventually(lambda: hooks.stack.smtp.to(address), what="confirmation")
    url = link(mails[0].part("plain"), "/confirm/")
    page = await hooks.client.get(url)
    assert page.status_code == 200
    if "<form" in page.text:  # a page with a button: the person's own click confirms
        await hooks.client.post(url, data={})


async def test_every_event_type_arrives_signed_and_verifiable(hooks: Hooks) -> None:
    crm = await hooks.add_endpoint("crm")
    assert crm["secret"].startswith("whsec_") and crm["state"] == "active"
    subs = hooks.stack.url("subscriptions")

    # subscriber.confirmed (email, by its link; SMS, by YES)
    response = await hooks.client.post(
        subs + "/api/v1/subscribers",
        json={"email": ANA, "name": "Ana", "country": "GB", "language": "en"},
    )
    assert response.status_code == 202
    await confirm_email(hooks, ANA)
    await hooks.sign_up_by_sms(SAM)
    confirmed = await hooks.arrived("crm", "subscriber.confirmed", 2)
    by_channel = {tuple(r.payload["data"]["channels"]): r.payload["data"] for r in confirmed}
    assert by_channel[("email",)]["email"] == ANA and by_channel[("email",)]["name"] == "Ana"
    assert by_channel[("sms",)]["phone"] == SAM
    for data in by_channel.values():
        assert data["confirmed_at"].endswith("Z") and data["frequency"] == "immediate"

    # action.published: the action as the API returns it
    action = await hooks.publish("Every event", ("email", "sms"))
    published = (await hooks.arrived("crm", "action.published"))[0].payload
    assert published["data"] == action

    # subscriber.updated: the preference centre from the alert email
    alert = await eventually(
        lambda: [m for m in hooks.stack.smtp.to(ANA) if "/act/" in m.part("plain")],
        what="the alert email",
    )
    preferences = link(alert[0].part("plain"), "/preferences/")
    saved = await hooks.client.post(
        preferences, json={"themes": ["torture"], "channels": ["email"]}
    )
    assert saved.status_code == 200, saved.text
    updated = (await hooks.arrived("crm", "subscriber.updated"))[0].payload["data"]
    assert updated["themes"] == ["torture"] and updated["email"] == ANA

    # response.recorded: DONE 2 by SMS
    await eventually(
        lambda: len([m for m in hooks.stack.twilio.messages if m.to == SAM]) >= 2,
        what="the alert SMS",
    )
    await hooks.stack.twilio.send_inbound_sms(hooks.stack.sms_webhook, from_=SAM, body="DONE 2")
    response_event = (await hooks.arrived("crm", "response.recorded"))[0].payload["data"]
    assert response_event["action_id"] == action["id"]
    assert response_event["reference"] == action["reference"]
    assert (response_event["kind"], response_event["count"], response_event["source"]) == (
        "sms_reply",
        2,
        "sms",
    )
    assert response_event["country"] == "GB"

    # action.updated, action.closed
    staff = hooks.auth(hooks.staff)
    follow_up = {"kind": "further_information", "content": {"en": {"subject": "News", "sms": "x"}}}
    sent = await hooks.client.post(
        f"{hooks.api}/actions/{action['id']}/updates", json=follow_up, headers=staff
    )
    assert sent.status_code == 202, sent.text
    closed = await hooks.client.post(
        f"{hooks.api}/actions/{action['id']}/close", json={"outcome": "released"}, headers=staff
    )
    assert closed.status_code == 200
    update = (await hooks.arrived("crm", "action.updated"))[0].payload["data"]
    assert update["kind"] == "further_information" and update["content"]["en"]["subject"] == "News"
    close = (await hooks.arrived("crm", "action.closed"))[0].payload["data"]
    assert close == {
        "action_id": action["id"],
        "reference": action["reference"],
        "outcome": "released",
    }

    # subscriber.unsubscribed: STOP by SMS
    await hooks.stack.twilio.send_inbound_sms(hooks.stack.sms_webhook, from_=SAM, body="STOP")
    stopped = (await hooks.arrived("crm", "subscriber.unsubscribed"))[0].payload["data"]
    sam_id = stopped["subscriber_id"]
    assert (stopped["channel"], stopped["reason"]) == ("sms", "sms_stop")

    # subscriber.erased: their id only
    async def erase() -> bool:
        gone = await hooks.client.delete(
            f"{subs}/api/v1/subscribers/{sam_id}", headers=hooks.auth()
        )
        return gone.status_code in (200, 202, 204)

    await eventually(erase, what="the admin token known to subscriptions")
    erased = (await hooks.arrived("crm", "subscriber.erased"))[0].payload
    assert erased["data"] == {"subscriber_id": sam_id}

    calls = hooks.inbox.to("crm")
    assert {r.type for r in calls} == set(EVENT_TYPES)
    assert all(r.verified for r in calls), "every call verifies with standardwebhooks"
    assert all(re.fullmatch(r"msg_[0-9a-f]{32}", r.webhook_id) for r in calls)
    assert len({r.webhook_id for r in calls}) == len(calls)
    for r in calls:
        assert set(r.payload) == {"type", "timestamp", "data"}
        assert r.payload["timestamp"].endswith("Z")

    # The deliveries list: ids and states, no data; and Sam's earlier events keep no trace.
    deliveries = await hooks.client.get(
        f"{hooks.api}/webhooks/{crm['id']}/deliveries", headers=hooks.auth()
    )
    assert deliveries.status_code == 200
    listed = deliveries.json()["items"]
    assert {d["state"] for d in listed} == {"delivered"}
    assert SAM not in deliveries.text and ANA not in deliveries.text
    assert all(
        set(d)
        == {
            "webhook_id",
            "type",
            "state",
            "attempts",
            "last_status",
            "next_attempt_at",
            "occurred_at",
        }
        for d in listed
    )


@pytest.fixture
async def sqlite_hooks_factory(amqp_url: str, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Stacks on SQLite with a receiver whose answers the test chooses."""
    opened: list[Any] = []

    async def make(respond: Any, env: dict[str, str] | None = None) -> Hooks:
        generator = open_hooks(amqp_url, sqlite_urls(tmp_path), tmp_path, respond=respond, env=env)
        opened.append(generator)
        return await generator.__anext__()

    yield make
    for generator in opened:
        await generator.aclose()


async def test_a_failing_endpoint_gets_the_event_until_it_answers_then_never_again(
    sqlite_hooks_factory: Callable[..., Any],
) -> None:
    async def flaky(endpoint: str, calls: int) -> int:
        return 500 if calls < 3 else 200

    hooks: Hooks = await sqlite_hooks_factory(flaky)
    endpoint = await hooks.add_endpoint("flaky", ["action.published"])
    await hooks.publish()
    await eventually(lambda: len(hooks.inbox.to("flaky")) >= 4, what="four tries")
    await asyncio.sleep(3)  # more than the whole schedule: nothing comes after the 200
    calls = hooks.inbox.to("flaky")
    assert [c.status for c in calls] == [500, 500, 500, 200]
    assert len({c.webhook_id for c in calls}) == 1
    assert len({c.body for c in calls}) == 1, "every try sends the same bytes"
    assert all(c.verified for c in calls)
    state = await hooks.endpoint(endpoint["id"])
    assert state["state"] == "active" and state["failures_in_a_row"] == 0
    assert state["last_success_at"] is not None


async def test_410_disables_the_endpoint_after_one_try_and_replay_brings_it_back(
    sqlite_hooks_factory: Callable[..., Any],
) -> None:
    gone = True

    async def answer(endpoint: str, calls: int) -> int:
        return 410 if gone else 204

    hooks: Hooks = await sqlite_hooks_factory(answer)
    endpoint = await hooks.add_endpoint("gone", ["action.published"])
    before = datetime.now(UTC) - timedelta(seconds=1)
    first = await hooks.publish("First")
    await eventually(lambda: hooks.inbox.to("gone"), what="one try")
    disabled = await eventually(
        lambda: _disabled(hooks, endpoint["id"]), what="the endpoint disabled"
    )
    assert "410" in disabled["disabled_reason"]
    # While it is disabled, another endpoint's events are kept; a replay sends them too.
    await hooks.add_endpoint("other", ["action.published"])
    await hooks.publish("Second")
    await hooks.arrived("other", "action.published")
    await asyncio.sleep(2)
    assert len(hooks.inbox.to("gone")) == 1
    first_id = hooks.inbox.to("gone")[0].webhook_id

    gone = False
    replay = await asyncio.to_thread(
        hooks.stack.cli, "webhooks", "replay", endpoint["id"], "--since", before.isoformat()
    )
    assert replay.returncode == 0, replay.stderr
    assert "2 event(s) queued again" in replay.stdout

    def answered() -> list[Any]:
        done = [c for c in hooks.inbox.to("gone") if c.status == 204]
        return done if len(done) >= 2 else []

    again = await eventually(answered, what="the replayed events")
    titles = {c.payload["data"]["title"]: c.webhook_id for c in again}
    assert titles["First"] == first_id, "a replay keeps the event's first id"
    assert first["title"] == "First"
    assert (await hooks.endpoint(endpoint["id"]))["state"] == "active"


async def _disabled(hooks: Hooks, endpoint_id: str) -> dict[str, Any] | None:
    state = await hooks.endpoint(endpoint_id)
    return state if state["state"] == "disabled" else None


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_a_hanging_endpoint_delays_neither_another_endpoint_nor_the_alerts(
    sqlite_hooks_factory: Callable[..., Any], tmp_path: Path
) -> None:
    async def answer(endpoint: str, calls: int) -> int:
        if endpoint == "hangs":
            await asyncio.sleep(60)
        return 200

    hooks: Hooks = await sqlite_hooks_factory(answer, {"UANET_SMS_RATE": "0"})
    people = 2000
    csv = tmp_path / "people.csv"
    csv.write_text(
        "email,name,country,language,channels\n"
        + "".join(f"p{i}@fanout.example,P{i},GB,en,email\n" for i in range(people))
    )
    imported = await asyncio.to_thread(
        hooks.stack.cli, "subscribers", "import", str(csv), "--confirmed"
    )
    assert imported.returncode == 0, imported.stderr

    async def fan_out(title: str) -> float:
        started = asyncio.get_running_loop().time()
        await hooks.publish(title)
        await eventually(
            lambda: (
                sum(1 for m in hooks.stack.smtp.messages if title in m.header("Subject")) >= people
            ),
            timeout=300,
            what=f"{people} alerts of {title}",
        )
        return asyncio.get_running_loop().time() - started

    # Subjects carry the action's subject, not its title: give each its own.
    without = await fan_out_with_subject(hooks, "Without hanging", people)
    await hooks.add_endpoint("hangs")
    await hooks.add_endpoint("healthy")
    await asyncio.sleep(2.5)  # both lanes started
    with_hanging = await fan_out_with_subject(hooks, "With hanging", people)
    healthy = await hooks.arrived("healthy", "action.published", timeout=10)
    assert healthy[0].payload["data"]["title"] == "With hanging"
    print(
        f"fan-out of {people}: {without:.1f} s without, {with_hanging:.1f} s with a hanging "
        "endpoint"
    )
    # Not a timing test: the bound is loose, and only a fan-out waiting on the endpoint's
    # 15 s timeout (or its 60 s hang) would break it.
    assert with_hanging < max(3 * without, without + 12)
    assert not [r for r in hooks.inbox.to("hangs") if r.type == "action.published"]


async def fan_out_with_subject(hooks: Hooks, subject: str, people: int) -> float:
    import copy

    from tests.e2e.test_whole_loop import ACTION

    body = copy.deepcopy(ACTION)
    body["title"] = subject
    body["channels"] = ["email"]
    body["audience"] = {"countries": [], "themes": [], "languages": []}
    body["content"]["en"]["subject"] = subject
    body["content"]["fr"]["subject"] = subject
    staff = hooks.auth(hooks.staff)
    created = await hooks.client.post(f"{hooks.api}/actions", json=body, headers=staff)
    assert created.status_code == 201, created.text
    loop = asyncio.get_running_loop()
    started = loop.time()
    published = await hooks.client.post(
        f"{hooks.api}/actions/{created.json()['id']}/publish", headers=staff
    )
    assert published.status_code == 200
    await eventually(
        lambda: (
            sum(1 for m in hooks.stack.smtp.messages if m.header("Subject") == subject) >= people
        ),
        timeout=300,
        interval=0.1,
        what=f"{people} alerts of {subject}",
    )
    return loop.time() - started


async def test_sigkill_mid_stream_loses_no_event_and_never_changes_an_id(
    sqlite_hooks_factory: Callable[..., Any],
) -> None:
    async def slow(endpoint: str, calls: int) -> int:
        await asyncio.sleep(0.05)
        return 200

    hooks: Hooks = await sqlite_hooks_factory(slow)
    await hooks.add_endpoint("crm", ["action.published"])
    published = [(await hooks.publish(f"Kill {i}"))["id"] for i in range(40)]
    await eventually(lambda: len(hooks.inbox.to("crm")) >= 5, what="the stream under way")
    hooks.stack.kill("publisher", signal.SIGKILL)
    hooks.stack.start("publisher")
    await hooks.stack.wait_ready("publisher")
    await eventually(
        lambda: {c.payload["data"]["id"] for c in hooks.inbox.to("crm")} >= set(published),
        timeout=90,
        what="every event after the restart",
    )
    ids_of: dict[str, set[str]] = {}
    for call in hooks.inbox.to("crm"):
        ids_of.setdefault(call.payload["data"]["id"], set()).add(call.webhook_id)
    assert all(len(ids) == 1 for ids in ids_of.values()), "one webhook-id per event, always"
    resent = len(hooks.inbox.to("crm")) - len(ids_of)
    print(f"SIGKILL mid-stream: {len(ids_of)} events, {resent} sent twice with the same id")
    assert resent <= 16, "at most the tries in flight to the endpoint"


async def test_erasure_drops_what_waits_for_a_dead_endpoint_and_leaves_no_trace(
    sqlite_hooks_factory: Callable[..., Any], tmp_path: Path
) -> None:
    dead = True

    async def answer(endpoint: str, calls: int) -> int:
        return 503 if dead else 200

    # Tries an hour apart: the 50 events wait, as for a day-long outage.
    hooks: Hooks = await sqlite_hooks_factory(answer, {"UANET_WEBHOOK_RETRY_SCHEDULE": "1h,1h"})
    endpoint = await hooks.add_endpoint("crm", ["subscriber.updated", "subscriber.erased"])
    subs = hooks.stack.url("subscriptions")
    number = "+447911123499"
    await hooks.sign_up_by_sms(number, name="Zed Erasable")
    admin = hooks.auth()
    # The preference token is in no SMS: sign the link as the service does.
    from services.subscriptions.links import Links
    from shared.tokens import LinkSigner
    from tests.conftest import SECRET

    links = Links(LinkSigner(SECRET), subs)
    public_id = await _public_id(tmp_path, number)
    url = links.preferences(public_id)
    for i in range(50):
        saved = await hooks.client.post(url, json={"themes": [f"theme-{i}"]})
        assert saved.status_code == 200, saved.text
    await eventually(
        lambda: len({c.webhook_id for c in hooks.inbox.to("crm")}) >= 50,
        timeout=60,
        what="50 events tried once and waiting",
    )

    async def erase() -> bool:
        gone = await hooks.client.delete(f"{subs}/api/v1/subscribers/{public_id}", headers=admin)
        return gone.status_code in (200, 202, 204)

    await eventually(erase, what="the admin token known to subscriptions")
    await eventually(
        lambda: [c for c in hooks.inbox.to("crm") if c.type == "subscriber.erased"],
        what="the erasure event tried",
    )
    dead = False
    tried = len(hooks.inbox.to("crm"))
    replayed = await asyncio.to_thread(
        hooks.stack.cli, "webhooks", "replay", endpoint["id"], "--since", "2000-01-01T00:00:00Z"
    )
    assert replayed.returncode == 0, replayed.stderr
    await eventually(
        lambda: [c for c in hooks.inbox.to("crm")[tried:] if c.type == "subscriber.erased"],
        what="the erasure delivered",
    )
    await asyncio.sleep(2)
    after = hooks.inbox.to("crm")[tried:]
    assert [c.type for c in after] == ["subscriber.erased"], "none of their events went"
    # The audit log says an erasure happened, and OSDI keeps late letters anonymous, both under
    # the id the person no longer has (subscriptions gives the kept row a new random one).
    rows = _every_row(
        tmp_path / "publisher.db", but=("publisher_audit_log", "osdi_erased_subscribers")
    )
    for trace in (number, "Zed Erasable", str(public_id), public_id.hex):
        assert trace not in rows, "the publisher keeps no trace of the person"


def _every_row(path: Path, but: tuple[str, ...] = ()) -> str:
    """Every row of every table of a SQLite database, as text (what a query could find)."""
    with sqlite3.connect(path) as db:
        tables = [
            t
            for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            if t not in but
        ]
        return "\n".join(
            repr(row) for table in tables for row in db.execute(f'SELECT * FROM "{table}"')
        )


async def _public_id(tmp_path: Path, number: str) -> uuid.UUID:
    with sqlite3.connect(tmp_path / "subscriptions.db") as db:
        (value,) = db.execute(
            "SELECT public_id FROM subscribers WHERE phone = ?", (number,)
        ).fetchone()
    return uuid.UUID(str(value)) if len(str(value)) != 32 else uuid.UUID(hex=str(value))
