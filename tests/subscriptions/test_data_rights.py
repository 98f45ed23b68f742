"""A person's data (export) and its erasure, behind admin tokens learnt from the publisher's
events; on SQLite and PostgreSQL, and over a real RabbitMQ for the token events."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.app import create_app
from services.subscriptions.links import Links
from services.subscriptions.models import (
    ActionRecipient,
    ApiToken,
    Base,
    ConfirmationAllowance,
    Consent,
    Outbox,
    Response,
    Subscriber,
)
from services.subscriptions.responses import record_response
from services.subscriptions.tokens import make_token_handler
from shared import events
from shared.db import OutboxRelay, outbox_row, utcnow
from shared.events import DeliveryBatch, Recipient
from shared.messaging import Broker, Delivery, Reject
from tests.subscriptions.conftest import (
    PUBLIC_URL,
    action_published,
    add_recipient,
    known_action,
    migrated,
    outbox,
    path_of,
)
from tests.support import eventually

ADMIN_TOKEN = "uat_admin-token-for-tests"
STAFF_TOKEN = "uat_staff-token-for-tests"
DELIVERY = Delivery(queue="subscriptions.tokens", routing_key="token.issued", attempt=1)


def issued(token: str, role: str, token_id: uuid.UUID | None = None) -> events.ApiTokenIssued:
    return events.ApiTokenIssued(
        token_id=token_id or uuid.uuid4(),
        name=f"{role} token",
        role=role,  # type: ignore[arg-type]
        token_hash=hashlib.sha256(token.encode()).hexdigest(),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def feed(app: FastAPI, *messages: events.Message) -> None:
    handler = make_token_handler(app.state.runtime.sessionmaker)
    for message in messages:
        await handler(message, DELIVERY)


async def signed_up_and_active(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> Subscriber:
    """Ana signs up (from a given address), confirms her email, gets an action and reports."""
    response = await client.post(
        "/api/v1/subscribers",
        json={
            "email": "ana@example.net",
            "phone": "+447911123456",
            "name": "Ana Lima",
            "country": "GB",
            "themes": ["torture"],
        },
        headers={"X-Forwarded-For": "203.0.113.7"},
    )
    assert response.status_code == 202
    async with sessionmaker() as session:
        subscriber = (await session.execute(select(Subscriber))).scalar_one()
    confirmed = await client.post(path_of(links.confirm(subscriber.public_id)))
    assert confirmed.status_code == 200
    async with sessionmaker() as session, session.begin():
        subscriber = (await session.execute(select(Subscriber))).scalar_one()
        action = known_action(action_published())
        session.add(action)
        await session.flush()
        recipient = await add_recipient(session, action, subscriber)
        await record_response(
            session=session,
            recipient=recipient,
            subscriber=subscriber,
            report_id=uuid.uuid4(),
            kind="letter",
            count=2,
            source="page",
        )
    return subscriber


async def test_admin_endpoints_need_a_live_admin_token(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    links: Links,
) -> None:
    subscriber = await signed_up_and_active(client, sessionmaker, links)
    export = f"/api/v1/subscribers/{subscriber.public_id}/export"
    admin = issued(ADMIN_TOKEN, "admin")
    await feed(app, admin, issued(STAFF_TOKEN, "staff"))

    assert (await client.get(export)).status_code == 401
    assert (await client.get(export, headers=bearer("uat_unknown"))).status_code == 401
    assert (await client.get(export, headers=bearer("x" * 5000))).status_code == 401
    assert (await client.get(export, headers={"Authorization": "Basic abc"})).status_code == 401
    assert (await client.get(export, headers=bearer(STAFF_TOKEN))).status_code == 403
    assert (await client.delete(export.removesuffix("/export"))).status_code == 401
    assert (await client.get(export, headers=bearer(ADMIN_TOKEN))).status_code == 200
    bad_id = await client.get("/api/v1/subscribers/not-a-uuid/export", headers=bearer(ADMIN_TOKEN))
    assert bad_id.status_code == 422

    await feed(app, events.ApiTokenRevoked(token_id=admin.token_id))
    assert (await client.get(export, headers=bearer(ADMIN_TOKEN))).status_code == 401


async def test_token_events_are_idempotent_and_a_revocation_may_come_first(
    app: FastAPI, client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    token_id = uuid.uuid4()
    late_issue = issued(ADMIN_TOKEN, "admin", token_id)
    await feed(app, events.ApiTokenRevoked(token_id=token_id), late_issue, late_issue)
    unknown = f"/api/v1/subscribers/{uuid.uuid4()}/export"
    # Revoked before it was even known here: it never works.
    assert (await client.get(unknown, headers=bearer(ADMIN_TOKEN))).status_code == 401

    fresh = issued(STAFF_TOKEN, "admin")
    await feed(app, fresh, fresh)
    assert (await client.get(unknown, headers=bearer(STAFF_TOKEN))).status_code == 404
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(ApiToken)) == 2

    handler = make_token_handler(sessionmaker)
    broken = events.ApiTokenIssued(
        token_id=uuid.uuid4(), name="x", role="admin", token_hash="not-a-hash"
    )
    try:
        await handler(broken, DELIVERY)
    except Reject:
        pass
    else:
        raise AssertionError("a malformed token hash must be dead-lettered")


async def test_export_holds_everything_we_keep_about_the_person(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    links: Links,
) -> None:
    subscriber = await signed_up_and_active(client, sessionmaker, links)
    await feed(app, issued(ADMIN_TOKEN, "admin"))
    # She said STOP to our SMS: that suppression is hers too.
    stopped = await client.post(path_of(links.unsubscribe(subscriber.public_id, "sms")))
    assert stopped.status_code == 200

    response = await client.get(
        f"/api/v1/subscribers/{subscriber.public_id}/export", headers=bearer(ADMIN_TOKEN)
    )

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    data = response.json()
    assert data["id"] == str(subscriber.public_id)
    profile = data["profile"]
    assert (profile["email"], profile["phone"], profile["name"]) == (
        "ana@example.net",
        "+447911123456",
        "Ana Lima",
    )
    assert profile["themes"] == ["torture"]
    assert data["channels"] == {"email": "confirmed", "sms": "unsubscribed"}
    consent = {(c["channel"], c["event"], c["source"]) for c in data["consents"]}
    assert {("email", "given", "api"), ("email", "confirmed", "page")} <= consent
    assert ("sms", "withdrawn", "page") in consent
    assert any(c["client_address"] == "203.0.113.7" for c in data["consents"])
    assert all(c["at"] for c in data["consents"])
    [received] = data["actions_received"]
    assert (received["reference"], received["channels"]) == ("UA 12/26", ["email"])
    [reported] = data["responses"]
    assert (reported["kind"], reported["count"], reported["source"]) == ("letter", 2, "page")
    assert [(s["address"], s["reason"]) for s in data["suppressions"]] == [
        ("+447911123456", "unsubscribed")
    ]
    missing = await client.get(
        f"/api/v1/subscribers/{uuid.uuid4()}/export", headers=bearer(ADMIN_TOKEN)
    )
    assert missing.status_code == 404


async def test_erasure_strips_personal_data_but_counts_stay(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    links: Links,
) -> None:
    subscriber = await signed_up_and_active(client, sessionmaker, links)
    await feed(app, issued(ADMIN_TOKEN, "admin"))
    path = f"/api/v1/subscribers/{subscriber.public_id}"

    response = await client.delete(path, headers=bearer(ADMIN_TOKEN))

    assert response.status_code == 204
    async with sessionmaker() as session:
        [row] = (await session.execute(select(Subscriber))).scalars().all()
        addresses = (await session.execute(select(Consent.client_address))).scalars().all()
        responses = (await session.execute(select(Response))).scalars().all()
        recipients = (await session.execute(select(ActionRecipient))).scalars().all()
    assert (row.email, row.phone, row.name, row.themes) == (None, None, "", [])
    assert (row.email_status, row.sms_status) == (None, None)
    assert row.erased_at is not None
    assert row.public_id != subscriber.public_id  # old links and ids name nobody now
    assert addresses and set(addresses) == {None}
    assert [(r.kind, r.count) for r in responses] == [("letter", 2)]
    assert len(recipients) == 1
    [erased] = await outbox(sessionmaker, "subscriber.erased")
    assert erased["subscriber_id"] == str(subscriber.public_id)

    assert (await client.delete(path, headers=bearer(ADMIN_TOKEN))).status_code == 404
    export = await client.get(f"{path}/export", headers=bearer(ADMIN_TOKEN))
    assert export.status_code == 404
    page = await client.get(path_of(links.preferences(subscriber.public_id)))
    assert page.status_code == 404
    # The address is free to sign up again, as a new person.
    again = await client.post(
        "/api/v1/subscribers", json={"email": "ana@example.net", "country": "GB"}
    )
    assert again.status_code == 202


async def test_tokens_arrive_over_the_broker(
    amqp_url: str, tmp_path: Path, make_settings: Any
) -> None:
    database = await migrated(f"sqlite+aiosqlite:///{tmp_path / 'subscriptions.db'}")
    settings = make_settings(subscriptions_database_url=database, public_url=PUBLIC_URL)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.runtime.wait_started()
        publisher = Broker(amqp_url, name="test-publisher")
        await publisher.connect()
        try:
            admin = issued(ADMIN_TOKEN, "admin")
            await publisher.publish_event(admin)
            await publisher.publish_event(admin)  # redelivered: changes nothing
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as client:
                url = f"/api/v1/subscribers/{uuid.uuid4()}/export"

                async def status() -> int:
                    response = await client.get(url, headers=bearer(ADMIN_TOKEN))
                    return response.status_code

                await eventually(lambda: _is(status(), 404), what="the admin token to arrive")
                await publisher.publish_event(events.ApiTokenRevoked(token_id=admin.token_id))
                await eventually(lambda: _is(status(), 401), what="the revocation to arrive")
        finally:
            await publisher.close()


async def _is(status: Any, expected: int) -> bool:
    return bool(await status == expected)


async def test_admin_endpoints_check_the_token_before_the_path(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    await feed(app, issued(ADMIN_TOKEN, "admin"), issued(STAFF_TOKEN, "staff"))
    for method, path in (
        ("get", "/api/v1/subscribers/not-an-id/export"),
        ("delete", "/api/v1/subscribers/not-an-id"),
        ("get", "/api/v1/unknown"),
    ):
        assert (await client.request(method, path)).status_code == 401, path
        staff = await client.request(method, path, headers=bearer(STAFF_TOKEN))
        assert staff.status_code == 403, path
        admin = await client.request(method, path, headers=bearer(ADMIN_TOKEN))
        assert admin.status_code in (404, 422), path
    # The public sign-up stays public.
    signup = await client.post("/api/v1/subscribers", json={"email": "a@example.net"})
    assert signup.status_code == 422


async def test_a_token_s_use_is_reported_at_most_once_a_minute(
    app: FastAPI, client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    admin, staff = issued(ADMIN_TOKEN, "admin"), issued(STAFF_TOKEN, "staff")
    await feed(app, admin, staff)
    path = f"/api/v1/subscribers/{uuid.uuid4()}/export"
    assert await outbox(sessionmaker, "token.used") == []
    for _ in range(3):
        assert (await client.get(path, headers=bearer(ADMIN_TOKEN))).status_code == 404
    assert (await client.get(path, headers=bearer(STAFF_TOKEN))).status_code == 403
    await client.get(path, headers=bearer("uat_never-issued"))  # reports nothing
    reports = await outbox(sessionmaker, "token.used")
    # One per live token within the minute (a refused role is still a use of a live token).
    assert sorted(r["token_id"] for r in reports) == sorted(
        [str(admin.token_id), str(staff.token_id)]
    )


async def test_erasure_leaves_no_personal_data_in_any_table(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    links: Links,
) -> None:
    subscriber = await signed_up_and_active(client, sessionmaker, links)
    async with sessionmaker() as session, session.begin():
        # What was sent to her (her confirmations, an alert batch, a letter) has gone out.
        recipient = Recipient(
            subscriber_id=subscriber.public_id,
            channel="email",
            address="ana@example.net",
            language="en",
            name="Ana Lima",
            unsubscribe_url="http://x/unsubscribe/t",
        )
        batch = DeliveryBatch(action_id=uuid.uuid4(), message_kind="alert", recipients=[recipient])
        session.add(outbox_row(Outbox, batch))
        await session.execute(update(Outbox).values(published_at=utcnow()))
    await feed(app, issued(ADMIN_TOKEN, "admin"))
    # Her mailboxes' confirmation counts (keyed digests of them, not the addresses).
    digests = {links.signer.fingerprint(a) for a in ("ana@example.net", "+447911123456")}
    assert digests <= await allowance_keys(sessionmaker)

    erased = await client.delete(
        f"/api/v1/subscribers/{subscriber.public_id}", headers=bearer(ADMIN_TOKEN)
    )

    assert erased.status_code == 204
    assert not digests & await allowance_keys(sessionmaker)
    personal = ("ana@example.net", "+447911123456", "Ana Lima", "203.0.113.7")
    # The erasure event (to the other services) is the one row left that names her addresses;
    # it goes once published, with every other outbox row (the relay's retention).
    assert await rows_holding(sessionmaker, personal) == [
        ("subscriptions_outbox", "subscriber.erased")
    ]
    relay = OutboxRelay(sessionmaker, Outbox, app.state.runtime.broker, retention=timedelta(0))
    async with sessionmaker() as session, session.begin():
        await session.execute(update(Outbox).values(published_at=utcnow()))
    await relay.purge_published()
    assert await rows_holding(sessionmaker, personal) == []


async def allowance_keys(sessionmaker: async_sessionmaker[AsyncSession]) -> set[str]:
    async with sessionmaker() as session:
        return set((await session.execute(select(ConfirmationAllowance.key))).scalars())


async def rows_holding(
    sessionmaker: async_sessionmaker[AsyncSession], needles: tuple[str, ...]
) -> list[tuple[str, str]]:
    """(table, routing key or first column) of each row of any table holding one of ``needles``."""
    found: list[tuple[str, str]] = []
    async with sessionmaker() as session:
        for table in Base.metadata.sorted_tables:
            for row in (await session.execute(select(table))).mappings():
                text = " ".join(str(value) for value in row.values())
                if any(needle in text for needle in needles):
                    found.append(
                        (table.name, str(row.get("routing_key", next(iter(row.values())))))
                    )
    return found
