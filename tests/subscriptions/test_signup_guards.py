"""Sign-ups per client address are limited; consent records where it came from; each recipient
handed to the dispatcher carries the subscriber's frequency."""

from __future__ import annotations

import httpx
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.audience import resolve_audience
from services.subscriptions.limits import SignupLimiter
from services.subscriptions.links import Links
from services.subscriptions.models import Consent, Subscriber
from tests.subscriptions.conftest import action_published, known_action, outbox
from tests.subscriptions.test_audience import subscriber_row


def person(n: int) -> dict[str, str]:
    return {"email": f"person{n}@example.org", "country": "GB"}


async def test_sign_ups_are_limited_per_client_address(client: httpx.AsyncClient) -> None:
    crowd = {"X-Forwarded-For": "198.51.100.9"}
    for n in range(10):
        response = await client.post("/api/v1/subscribers", json=person(n), headers=crowd)
        assert response.status_code == 202, n

    refused = await client.post("/api/v1/subscribers", json=person(10), headers=crowd)
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["retry-after"]) <= 600
    form = await client.post(
        "/api/v1/subscribers?lang=fr", data=person(11), headers={**crowd, "Accept": "text/html"}
    )
    assert form.status_code == 429
    assert "text/html" in form.headers["content-type"]
    assert "Merci de patienter un instant" in form.text
    assert form.headers["retry-after"]

    # Another address is not held up; invalid sign-ups do not use up the allowance.
    other = {"X-Forwarded-For": "198.51.100.10"}
    for _ in range(12):
        bad = await client.post("/api/v1/subscribers", json={"country": "XX"}, headers=other)
        assert bad.status_code == 422
    assert (
        await client.post("/api/v1/subscribers", json=person(12), headers=other)
    ).status_code == 202


async def test_an_address_only_a_proxy_we_do_not_trust_claims_is_not_believed(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    # The test client connects from 127.0.0.1, a trusted proxy: the nearest untrusted hop counts,
    # whatever the client put further left.
    headers = {"X-Forwarded-For": "10.9.9.9, 203.0.113.5"}
    assert (
        await client.post("/api/v1/subscribers", json=person(1), headers=headers)
    ).status_code == 202
    async with sessionmaker() as session:
        consent = (await session.execute(select(Consent))).scalar_one()
    assert (consent.channel, consent.event, consent.source) == ("email", "given", "api")
    assert consent.client_address == "203.0.113.5"
    assert consent.at is not None


def test_the_limiter_forgets_after_its_window() -> None:
    now = [1000.0]
    limiter = SignupLimiter(limit=2, window=60, max_tracked=2, clock=lambda: now[0])
    assert limiter.take("a") is None and limiter.take("a") is None
    assert limiter.take("a") == 60
    now[0] += 30
    assert limiter.take("a") == 30
    now[0] += 30
    assert limiter.take("a") is None
    # Bounded memory: the least recently seen address is forgotten first.
    limiter.take("b")
    limiter.take("c")
    assert set(limiter._seen) == {"b", "c"}


async def test_recipients_carry_the_subscribers_frequency(
    sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    event = action_published(urgency="standard")
    async with sessionmaker() as session, session.begin():
        await session.execute(
            insert(Subscriber),
            [subscriber_row(1), subscriber_row(2, frequency="daily_digest")],
        )
        session.add(known_action(event))

    await resolve_audience(
        sessionmaker=sessionmaker, links=links, action_id=event.action_id, notify=lambda: None
    )

    [batch] = await outbox(sessionmaker, "dispatch.batch")
    frequencies = {(r["name"], r["channel"], r["frequency"]) for r in batch["recipients"]}
    assert frequencies == {
        ("Person 1", "email", "immediate"),
        ("Person 1", "sms", "immediate"),
        ("Person 2", "email", "daily_digest"),
        ("Person 2", "sms", "daily_digest"),
    }
