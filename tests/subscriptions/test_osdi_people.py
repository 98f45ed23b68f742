"""OSDI people (contract §8) on SQLite and PostgreSQL: the shapes of tests/osdi_shapes.py, paging
that walks 1,000 people exactly once, the modified_date filter (moved by the real flows: a change
of preferences, an unsubscribe, a hard bounce, a confirmation), statuses, and who may call."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.handlers import SubscriptionHandlers
from services.subscriptions.links import Links
from services.subscriptions.models import Subscriber
from services.subscriptions.tokens import token_issued
from shared import events
from shared.messaging import Delivery
from tests.osdi_shapes import PeoplePage, Person, checked
from tests.subscriptions.conftest import PUBLIC_URL, add_subscriber, path_of

ADMIN = "uat_osdi-admin-token"
STAFF = "uat_osdi-staff-token"
PEOPLE = "/osdi/v1/people"


async def _tokens(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    async with sessionmaker() as session, session.begin():
        for token, role in ((ADMIN, "admin"), (STAFF, "staff")):
            await token_issued(
                session,
                events.ApiTokenIssued(
                    token_id=uuid.uuid4(),
                    name=role,
                    role=role,  # type: ignore[arg-type]
                    token_hash=hashlib.sha256(token.encode()).hexdigest(),
                ),
            )


def osdi(token: str = ADMIN) -> dict[str, str]:
    return {"OSDI-API-Token": token}


async def _people(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    return checked(PeoplePage, await client.get(PEOPLE, params=params, headers=osdi()))


def _ids(page: dict[str, Any]) -> list[str]:
    return [p["identifiers"][0] for p in page["_embedded"]["osdi:people"]]


async def test_paging_walks_a_thousand_people_exactly_once(
    app: FastAPI, client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _tokens(sessionmaker)
    expected: set[str] = set()
    async with sessionmaker() as session, session.begin():
        for n in range(1000):
            person = await add_subscriber(
                session, email=f"p{n}@example.net", email_status="confirmed"
            )
            expected.add(f"uanet:{person.public_id}")
        # Not listed: one who never confirmed, one erased.
        await add_subscriber(session, email="pending@example.net", email_status="pending")
        await add_subscriber(session, email=None, erased_at=datetime.now(UTC))

    seen: list[str] = []
    url: str | None = f"{PUBLIC_URL}{PEOPLE}?per_page=100"
    pages = 0
    while url is not None:
        page = checked(PeoplePage, await client.get(path_of(url), headers=osdi()))
        assert page["total_records"] == 1000 and page["total_pages"] == 10
        seen += _ids(page)
        pages += 1
        url = page["_links"].get("next", {}).get("href")
    assert pages == 10
    assert len(seen) == 1000 and set(seen) == expected

    # A walk during which people change (the first pages' people edit their preferences) and a
    # newcomer confirms still meets everyone once: the order does not follow modified_date.
    seen = []
    url = f"{PUBLIC_URL}{PEOPLE}?per_page=100"
    while url is not None:
        page = checked(PeoplePage, await client.get(path_of(url), headers=osdi()))
        seen += _ids(page)
        if page["page"] == 3:
            async with sessionmaker() as session, session.begin():
                await session.execute(
                    update(Subscriber)
                    .where(Subscriber.email.in_([f"p{n}@example.net" for n in range(250)]))
                    .values(frequency="daily_digest")
                )
                newcomer = await add_subscriber(
                    session, email="late@example.net", email_status="confirmed"
                )
        url = page["_links"].get("next", {}).get("href")
    assert len(seen) == len(set(seen)) == 1001
    assert set(seen) == expected | {f"uanet:{newcomer.public_id}"}

    # Past the end: an empty page, not an error; "prev" leads back to the last full one.
    beyond = await _people(client, page=12, per_page=100)
    assert beyond["_embedded"]["osdi:people"] == [] and "next" not in beyond["_links"]
    assert "page=11" in beyond["_links"]["prev"]["href"]
    # per_page=1000 is answered with 100 (documented: README, OpenAPI); the default is 25.
    clamped = await _people(client, per_page=1000)
    assert clamped["per_page"] == 100 and len(_ids(clamped)) == 100
    assert clamped["total_pages"] == 11
    default = await _people(client)
    assert default["per_page"] == 25 and len(_ids(default)) == 25
    assert "prev" not in default["_links"]
    for bad in ({"per_page": "0"}, {"page": "0"}, {"page": "x"}):
        refused = await client.get(PEOPLE, params=bad, headers=osdi())
        assert refused.status_code == 422, bad
        assert refused.json()["errors"][0]["field"] == next(iter(bad))


async def _set_modified(
    sessionmaker: async_sessionmaker[AsyncSession], subscriber_id: int, at: datetime
) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Subscriber).where(Subscriber.id == subscriber_id).values(updated_at=at)
        )


async def test_the_filter_returns_only_what_changed(
    app: FastAPI,
    client: httpx.AsyncClient,
    sessionmaker: async_sessionmaker[AsyncSession],
    links: Links,
) -> None:
    await _tokens(sessionmaker)
    old = datetime(2026, 11, 1, tzinfo=UTC)
    people: dict[str, Subscriber] = {}
    async with sessionmaker() as session, session.begin():
        for name in ("quiet", "prefs", "leaver", "bouncer", "confirmer", "window"):
            people[name] = await add_subscriber(
                session,
                name=name,
                email=f"{name}@example.net",
                phone="+447911123456" if name == "confirmer" else None,
                email_status="confirmed",
                sms_status="pending" if name == "confirmer" else None,
            )
    for person in people.values():
        await _set_modified(sessionmaker, person.id, old)
    await _set_modified(sessionmaker, people["window"].id, datetime(2026, 11, 15, tzinfo=UTC))
    since = datetime.now(UTC) - timedelta(seconds=1)

    def stamp(at: datetime) -> str:
        return at.isoformat().replace("+00:00", "Z")

    nothing_yet = await _people(client, filter=f"modified_date gt '{stamp(since)}'")
    assert nothing_yet["total_records"] == 0 and _ids(nothing_yet) == []

    # The real flows, each of which changes what a person's resource shows.
    prefs = await client.post(
        path_of(links.preferences(people["prefs"].public_id)),
        json={"themes": ["torture"], "frequency": "daily_digest"},
    )
    assert prefs.status_code < 400, prefs.text
    left = await client.post(path_of(links.unsubscribe(people["leaver"].public_id, "email")))
    assert left.status_code == 200, left.text
    handlers = SubscriptionHandlers(sessionmaker, links, lambda: None)
    await handlers.on_recipient_suppressed(
        events.RecipientSuppressed(
            subscriber_id=people["bouncer"].public_id,
            channel="email",
            address="bouncer@example.net",
            reason="hard_bounce",
        ),
        Delivery(queue="subscriptions.suppressions", routing_key="recipient.suppressed", attempt=1),
    )
    confirmed = await client.post(path_of(links.confirm(people["confirmer"].public_id, "sms")))
    assert confirmed.status_code == 200, confirmed.text

    changed = await _people(client, filter=f"modified_date gt '{stamp(since)}'")
    by_name = {p["given_name"]: p for p in changed["_embedded"]["osdi:people"]}
    assert set(by_name) == {"prefs", "leaver", "bouncer", "confirmer"}
    assert changed["total_records"] == 4
    assert by_name["prefs"]["custom_fields"] == {
        "uanet_themes": "torture",
        "uanet_frequency": "daily_digest",
    }
    assert by_name["leaver"]["email_addresses"][0]["status"] == "unsubscribed"
    assert by_name["bouncer"]["email_addresses"][0]["status"] == "bouncing"
    assert by_name["confirmer"]["phone_numbers"] == [
        {"number": "+447911123456", "primary": True, "sms_capable": True, "status": "subscribed"}
    ]
    for person in by_name.values():
        assert datetime.fromisoformat(person["modified_date"]) > since

    # lt, and a window with both ends.
    before = await _people(client, filter="modified_date lt '2026-11-10T00:00:00Z'")
    assert {p["given_name"] for p in before["_embedded"]["osdi:people"]} == {"quiet"}
    window = await _people(
        client,
        filter="modified_date gt '2026-11-10T00:00:00Z' and modified_date lt '2026-11-20'",
    )
    assert [p["given_name"] for p in window["_embedded"]["osdi:people"]] == ["window"]
    # The next link keeps the filter.
    paged = await _people(client, filter="modified_date lt '2026-12-31'", per_page=2)
    assert "filter=modified_date" in paged["_links"]["next"]["href"]

    for bad in (
        "modified_date gt 2026-12-01",
        "modified_date eq '2026-12-01T00:00:00Z'",
        "created_date gt '2026-12-01T00:00:00Z'",
        "modified_date gt 'yesterday'",
        "modified_date gt '2026-12-01' or modified_date lt '2026-12-02'",
        "modified_date gt '2026-12-01' and modified_date gt '2026-12-02'",
    ):
        refused = await client.get(PEOPLE, params={"filter": bad}, headers=osdi())
        assert refused.status_code == 422, bad
        assert refused.json()["errors"] == [
            {"field": "filter", "message": refused.json()["errors"][0]["message"]}
        ]


async def test_one_person_and_who_may_read_them(
    app: FastAPI, client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await _tokens(sessionmaker)
    async with sessionmaker() as session, session.begin():
        ana = await add_subscriber(
            session,
            name="Ana",
            email="ana@example.net",
            phone="+447911123456",
            email_status="confirmed",
            sms_status="unsubscribed",
            country="GB",
            language="en",
            themes=["torture", "death-penalty"],
        )
        pending = await add_subscriber(session, email="p@example.net", email_status="pending")
    url = f"{PEOPLE}/{ana.public_id}"

    for headers in (osdi(), {"Authorization": f"Bearer {ADMIN}"}):
        body = checked(Person, await client.get(url, headers=headers))
        assert body["identifiers"] == [f"uanet:{ana.public_id}"]
        assert body["given_name"] == "Ana"
        assert body["email_addresses"] == [
            {"address": "ana@example.net", "primary": True, "status": "subscribed"}
        ]
        assert body["phone_numbers"][0]["status"] == "unsubscribed"
        assert body["postal_addresses"] == [{"country": "GB"}]
        assert body["languages_spoken"] == ["en"]
        assert body["custom_fields"]["uanet_themes"] == "torture;death-penalty"
        assert body["_links"]["self"]["href"] == PUBLIC_URL + url

    assert (await client.get(url)).status_code == 401
    assert (await client.get(url, headers=osdi("uat_never-issued"))).status_code == 401
    assert (await client.get(url, headers=osdi(STAFF))).status_code == 403
    assert (await client.get(PEOPLE, headers=osdi(STAFF))).status_code == 403
    # Unknown paths under /osdi/v1/ ask for a token first too.
    assert (await client.get("/osdi/v1/nothing")).status_code == 401
    assert (await client.get("/osdi/v1/nothing", headers=osdi())).status_code == 404
    for unknown in (uuid.uuid4(), "not-an-id", pending.public_id):
        missing = await client.get(f"{PEOPLE}/{unknown}", headers=osdi())
        assert missing.status_code == 404, unknown
    # The OSDI header opens OSDI only: the rest of the admin API wants the bearer token.
    export = f"/api/v1/subscribers/{ana.public_id}/export"
    assert (await client.get(export, headers=osdi())).status_code == 401

    erased = await client.delete(
        f"/api/v1/subscribers/{ana.public_id}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    assert erased.status_code == 204
    assert (await client.get(url, headers=osdi())).status_code == 404
    assert (await _people(client))["total_records"] == 0
