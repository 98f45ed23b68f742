"""The caps counted per subscriber hold when requests race on PostgreSQL, where transactions
really run at once (on SQLite every transaction takes the write lock in turn)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.app import create_app
from services.subscriptions.confirmations import PER_HOUR as CONFIRMATIONS_PER_HOUR
from services.subscriptions.letters import MAX_LETTERS_PER_ACTION
from services.subscriptions.links import Links
from services.subscriptions.responses import MAX_ACTIONS_PER_PERSON
from shared.settings import Settings
from tests.subscriptions.conftest import (
    PUBLIC_URL,
    action_published,
    add_recipient,
    add_subscriber,
    known_action,
    migrated,
    outbox,
    path_of,
)

RACERS = 9  # under the per-address sign-up limit, above every cap raced here


@pytest.fixture
async def subscriptions_db(pg_database: Callable[[], str]) -> str:
    return await migrated(pg_database())


async def seed(sessionmaker: async_sessionmaker[AsyncSession], links: Links) -> str:
    event = action_published(
        targets=[{"name": "Minister", "email": "minister@example.org"}],
        content={"en": {"subject": "Urgent Action", "model_letter": "Release him."}},
    )
    async with sessionmaker() as session:
        subscriber = await add_subscriber(
            session, email="ana@example.net", email_status="pending", language="en"
        )
        action = known_action(event)
        session.add(action)
        await session.flush()
        recipient = await add_recipient(session, action, subscriber)
        await session.commit()
    return path_of(links.act(recipient.id))


async def race(requests: Callable[[int], object]) -> list[httpx.Response]:
    answers = await asyncio.gather(*(requests(i) for i in range(RACERS)))  # type: ignore[misc]
    return list(answers)


async def test_concurrent_letters_stop_at_the_letter_cap(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    path = await seed(sessionmaker, links)
    letter = {"name": "Ana", "letter": "Please release him."}

    # A reply address each (one mailbox gets three checks an hour, fewer than the letter cap).
    answers = await race(
        lambda i: client.post(
            f"{path}/letter",
            json={**letter, "email": f"writer{i}@example.net", "letter_id": str(uuid.uuid4())},
        )
    )

    accepted = [a for a in answers if a.status_code == 202]
    assert len(accepted) == MAX_LETTERS_PER_ACTION
    assert {a.status_code for a in answers} == {202, 429}
    # No reply address is her confirmed email: each letter waits for its address's link, and
    # letters waiting count against the cap as sent ones do.
    asked = await outbox(sessionmaker, "dispatch.message")
    assert [m["template"] for m in asked] == ["letter_check"] * MAX_LETTERS_PER_ACTION


async def test_concurrent_reports_stop_at_the_cap(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    path = await seed(sessionmaker, links)

    answers = await race(lambda _: client.post(path, json={"kind": "call", "count": 20}))

    assert {a.status_code for a in answers} == {202}
    recorded = await outbox(sessionmaker, "response.recorded")
    assert sum(m["count"] for m in recorded) == MAX_ACTIONS_PER_PERSON


async def test_concurrent_sign_ups_send_at_most_the_confirmation_cap(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    await seed(sessionmaker, links)  # ana@example.net, waiting for confirmation
    sign_up = {"email": "ana@example.net", "country": "GB", "language": "en"}

    answers = await race(lambda _: client.post("/api/v1/subscribers", json=sign_up))

    assert {a.status_code for a in answers} == {202}
    sent = await outbox(sessionmaker, "dispatch.message")
    assert len([m for m in sent if m["template"] == "confirm_email"]) == CONFIRMATIONS_PER_HOUR


async def test_spellings_of_one_mailbox_racing_through_two_processes_get_the_cap(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """Two app instances on one database (each with its own connection pool, as two processes
    would be), each sign-up a new subscriber: only the mailbox's row keeps the count."""
    second = create_app(settings)
    async with second.router.lifespan_context(second):
        transport = httpx.ASGITransport(app=second)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as other:
            callers = (client, other)
            answers = await race(
                lambda n: callers[n % 2].post(
                    "/api/v1/subscribers",
                    json={"email": f"victim+{n}@gmail.com", "country": "GB"},
                    headers={"X-Forwarded-For": f"198.51.100.{n}"},
                )
            )
    assert {a.status_code for a in answers} == {202}
    sent = await outbox(sessionmaker, "dispatch.message")
    assert len(sent) == CONFIRMATIONS_PER_HOUR
