"""The audit log: every staff change with who, what, which action and when; admin-only, newest
first, paginated, filtered; append-only in the database; a console page and each action's
history."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.exc import DBAPIError

from services.publisher.audit import AuditConsumer
from services.publisher.auth import create_api_token, revoke_api_token
from services.publisher.models import AuditEntry
from services.publisher.staff import create_staff_user, disable_staff_user
from shared import events
from tests.publisher.conftest import Api
from tests.publisher.console_support import PASSWORD, Browser, compose_fields, make_user


async def audit(api: Api, **params: Any) -> dict[str, Any]:
    response = await api.client.get("/api/v1/audit", params=params, headers=api.auth("admin"))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_the_life_of_an_action_is_in_the_log(api: Api) -> None:
    created = await api.create("staff")
    action_id = created["id"]
    staff = api.auth("staff")
    client = api.client
    edited = await client.patch(
        f"/api/v1/actions/{action_id}", json={"title": "Retitled"}, headers=staff
    )
    assert edited.status_code == 200
    await api.publish(action_id)
    targets = {"targets": [{"name": "Minister", "email": "minister@example.org"}]}
    put = await client.put(f"/api/v1/actions/{action_id}/targets", json=targets, headers=staff)
    assert put.status_code == 200
    update_body = {
        "kind": "further_information",
        "content": {"en": {"subject": "News", "body": "b", "sms": "s"}},
    }
    sent = await client.post(
        f"/api/v1/actions/{action_id}/updates", json=update_body, headers=api.auth("admin")
    )
    assert sent.status_code == 202
    closed = await client.post(
        f"/api/v1/actions/{action_id}/close", json={"outcome": "released"}, headers=staff
    )
    assert closed.status_code == 200
    # Refused changes leave no entry.
    again = await client.post(f"/api/v1/actions/{action_id}/publish", headers=staff)
    assert again.status_code == 409

    log = await audit(api, action_id=action_id)
    entries = log["items"]
    assert [e["event"] for e in entries] == [
        "action.closed",
        "action.follow_up",
        "action.targets_changed",
        "action.published",
        "action.edited",
        "action.created",
    ]
    assert log["total"] == 6 and log["next_offset"] is None
    who = {e["event"]: (e["actor_kind"], e["actor"]) for e in entries}
    assert who["action.follow_up"] == ("token", "test admin")
    assert who["action.created"] == who["action.closed"] == ("token", "test staff")
    for entry in entries:
        assert entry["action_id"] == action_id
        assert entry["subject"].startswith(created["reference"])
    details = {e["event"]: e["details"] for e in entries}
    assert details["action.edited"] == {"fields": ["title"]}
    assert details["action.closed"]["outcome"] == "released"
    assert details["action.targets_changed"]["after"] == ["Minister <minister@example.org>"]
    times = [e["at"] for e in entries]
    assert times == sorted(times, reverse=True)
    # No token secret anywhere in the log.
    assert not any(token in str(log) for token in api.tokens.values())


async def test_pages_and_filters(sqlite_api: Api) -> None:
    first = (await sqlite_api.create())["id"]
    for _ in range(4):
        await sqlite_api.create()
    everything = await audit(sqlite_api)
    # The fixture's three tokens, then five drafts.
    assert everything["total"] == 8
    page = await audit(sqlite_api, limit=3)
    assert len(page["items"]) == 3 and page["next_offset"] == 3
    rest = await audit(sqlite_api, limit=3, offset=6)
    assert len(rest["items"]) == 2 and rest["next_offset"] is None
    ids = [e["id"] for e in everything["items"]]
    assert ids == sorted(ids, reverse=True)
    assert [
        e["id"]
        for e in page["items"]
        + (await audit(sqlite_api, limit=3, offset=3))["items"]
        + rest["items"]
    ] == ids
    only = await audit(sqlite_api, action_id=first)
    assert [e["event"] for e in only["items"]] == ["action.created"]
    tokens = await audit(sqlite_api, event="token.created")
    assert tokens["total"] == 3
    assert {e["subject"] for e in tokens["items"]} == {
        "token test admin (admin)",
        "token test staff (staff)",
        "token test coordinator (coordinator)",
    }
    for params in ({"event": "nonsense"}, {"action_id": "not-an-id"}, {"limit": 0}):
        bad = await sqlite_api.client.get(
            "/api/v1/audit", params=params, headers=sqlite_api.auth("admin")
        )
        assert bad.status_code == 422, params
    for role in ("staff", "coordinator"):
        refused = await sqlite_api.client.get("/api/v1/audit", headers=sqlite_api.auth(role))
        assert refused.status_code == 403
    assert (await sqlite_api.client.get("/api/v1/audit")).status_code == 401


async def test_tokens_and_accounts_made_and_revoked_from_the_command_line(sqlite_api: Api) -> None:
    sessionmaker = sqlite_api.app.state.runtime.sessionmaker
    await create_api_token(sessionmaker, role="staff", name="ci")
    await revoke_api_token(sessionmaker, name="ci")
    await create_staff_user(sessionmaker, email="Ana@Example.org", role="staff", password=PASSWORD)
    await disable_staff_user(sessionmaker, email="ana@example.org")
    entries = (await audit(sqlite_api, limit=4))["items"]
    assert [(e["event"], e["subject"]) for e in entries] == [
        ("account.disabled", "account ana@example.org (staff)"),
        ("account.created", "account ana@example.org (staff)"),
        ("token.revoked", "token ci (staff)"),
        ("token.created", "token ci (staff)"),
    ]
    assert {e["actor_kind"] for e in entries} == {"cli"}
    assert all(e["actor"] for e in entries)


async def test_console_changes_are_the_account_s(sqlite_api: Api) -> None:
    staff = Browser(sqlite_api.app)
    admin = Browser(sqlite_api.app)
    coordinator = Browser(sqlite_api.app)
    try:
        await staff.sign_in(await make_user(sqlite_api.app, "staff"))
        await admin.sign_in(await make_user(sqlite_api.app, "admin"))
        await coordinator.sign_in(await make_user(sqlite_api.app, "coordinator"))
        await staff.get("/actions/new")
        made = await staff.post("/actions/new", compose_fields())
        action_id = made.headers["location"].rsplit("/", 1)[1]
        await staff.get(f"/actions/{action_id}/publish")
        published = await staff.post(f"/actions/{action_id}/publish", {"confirm": "yes"})
        assert published.status_code == 303
        entries = (await audit(sqlite_api, action_id=action_id))["items"]
        assert [(e["event"], e["actor_kind"], e["actor"]) for e in entries] == [
            ("action.published", "account", "staff@example.org"),
            ("action.created", "account", "staff@example.org"),
        ]

        # The action's page shows its own history, to whoever may see the page.
        page = await coordinator.get(f"/actions/{action_id}")
        history = page.text.split('aria-label="History"', 1)[1]
        assert "Published" in history and "Draft created" in history
        assert "staff@example.org" in history and "test admin" not in history

        # The whole log: admins only.
        log = await admin.get("/audit")
        assert log.status_code == 200
        assert "Audit log" in log.text and "token <code>test staff</code>" not in log.text
        assert "API token created" in log.text and "staff@example.org" in log.text
        filtered = await admin.get("/audit?event=action.published")
        assert "Draft created" not in filtered.text.split("</select>", 1)[1]
        assert (await admin.get("/audit?event=junk&page=zzz")).status_code == 200
        for browser in (staff, coordinator):
            assert (await browser.get("/audit")).status_code == 403
        signed_out = Browser(sqlite_api.app)
        away = await signed_out.get("/audit")
        assert away.status_code == 303 and away.headers["location"].startswith("/login")
        await signed_out.aclose()
    finally:
        for browser in (staff, admin, coordinator):
            await browser.aclose()


async def test_the_database_refuses_to_change_or_remove_an_entry(api: Api) -> None:
    sessionmaker = api.app.state.runtime.sessionmaker
    await api.create()
    for statement in (
        update(AuditEntry).values(actor="someone else"),
        delete(AuditEntry),
        text("DELETE FROM publisher_audit_log"),
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with sessionmaker() as session, session.begin():
                await session.execute(statement)
    async with sessionmaker() as session:
        actors = set((await session.execute(select(AuditEntry.actor))).scalars())
    assert "someone else" not in actors and len(actors) >= 2


async def test_erasures_reported_by_subscriptions_are_logged_once(sqlite_api: Api) -> None:
    consumer = AuditConsumer(sqlite_api.app.state.database)
    subscriber = uuid.uuid4()
    erased = events.SubscriberErased(subscriber_id=subscriber, erased_by="privacy desk")
    await consumer(erased)
    await consumer(erased)  # redelivered
    entries = (await audit(sqlite_api, event="subscriber.erased"))["items"]
    assert [(e["actor_kind"], e["actor"], e["subject"]) for e in entries] == [
        ("token", "privacy desk", f"subscriber {subscriber}")
    ]
