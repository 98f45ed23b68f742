"""Audience resolution: who gets an urgent action, page by page, resumable, never twice."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions import audience as audience_module
from services.subscriptions.audience import SMS_BATCH, in_audience, resolve_audience
from services.subscriptions.handlers import SubscriptionHandlers
from services.subscriptions.links import Links
from services.subscriptions.models import (
    ActionRecipient,
    AudienceProgress,
    Base,
    Consent,
    KnownAction,
    ProcessedMessage,
    Subscriber,
    Suppression,
)
from shared import events
from shared.db import make_engine, make_sessionmaker
from shared.messaging import Delivery, Retry
from shared.tokens import LinkSigner
from tests.conftest import SECRET
from tests.subscriptions.conftest import (
    PUBLIC_URL,
    action_published,
    known_action,
    migrated,
    outbox,
)


def nothing() -> None:
    """Stands in for waking the outbox relay (no broker in these tests)."""


def subscriber_row(n: int, **fields: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "public_id": uuid.uuid4(),
        "email": f"person{n}@example.org",
        "phone": f"+4477009{n:05d}",
        "name": f"Person {n}",
        "country": "GB",
        "language": "en",
        "timezone": "Europe/London",
        "themes": [],
        "frequency": "immediate",
        "email_status": "confirmed",
        "sms_status": "confirmed",
        "confirmations_in_window": 0,
        "created_at": datetime.now(UTC),
        "updated_at": datetime.now(UTC),
    }
    row.update(fields)
    return row


async def store_action(
    sessionmaker: async_sessionmaker[AsyncSession], event: events.ActionPublished
) -> None:
    async with sessionmaker() as session, session.begin():
        session.add(known_action(event))


async def batches(
    sessionmaker: async_sessionmaker[AsyncSession], kind: str = "alert"
) -> list[dict[str, Any]]:
    return [b for b in await outbox(sessionmaker, "dispatch.batch") if b["message_kind"] == kind]


# ---- the rule ---------------------------------------------------------------------------------


def test_in_audience_rule() -> None:
    everyone = events.Audience()
    assert in_audience(country="GB", language="en", themes=[], audience=everyone)
    only = events.Audience(countries=["IE"], themes=["torture"], languages=["fr"])
    assert in_audience(country="IE", language="fr", themes=[], audience=only)
    assert in_audience(country="IE", language="fr", themes=["torture", "x"], audience=only)
    assert not in_audience(country="IE", language="fr", themes=["refugees"], audience=only)
    assert not in_audience(country="GB", language="fr", themes=[], audience=only)
    assert not in_audience(country="IE", language="en", themes=[], audience=only)


# ---- a property: SQL + Python together choose exactly what the plain rule says ----------------

COUNTRIES = ["GB", "IE", "FR"]
THEMES = ["torture", "refugees", "death-penalty"]
LANGUAGES = ["en", "fr"]
STATUSES = [None, "pending", "confirmed", "unsubscribed"]

people = st.lists(
    st.fixed_dictionaries(
        {
            "country": st.sampled_from(COUNTRIES),
            "language": st.sampled_from(LANGUAGES),
            "themes": st.lists(st.sampled_from(THEMES), unique=True, max_size=2),
            "email_status": st.sampled_from(STATUSES),
            "sms_status": st.sampled_from(STATUSES),
            "has_email": st.booleans(),
            "has_phone": st.booleans(),
            "email_suppressed": st.booleans(),
            "phone_suppressed": st.booleans(),
        }
    ),
    max_size=25,
)
audiences = st.fixed_dictionaries(
    {
        "countries": st.lists(st.sampled_from(COUNTRIES), unique=True, max_size=2),
        "themes": st.lists(st.sampled_from(THEMES), unique=True, max_size=2),
        "languages": st.lists(st.sampled_from(LANGUAGES), unique=True, max_size=1),
    }
)
channel_sets = st.lists(st.sampled_from(["email", "sms"]), unique=True, min_size=1)


def expected_audience(
    population: list[dict[str, Any]], audience: dict[str, list[str]], channels: list[str]
) -> dict[int, set[str]]:
    """The contract's rule, written as plainly as possible."""
    chosen: dict[int, set[str]] = {}
    for n, p in enumerate(population):
        if audience["countries"] and p["country"] not in audience["countries"]:
            continue
        if audience["languages"] and p["language"] not in audience["languages"]:
            continue
        if audience["themes"] and p["themes"]:
            if not set(p["themes"]) & set(audience["themes"]):
                continue
        got = set()
        if (
            "email" in channels
            and p["has_email"]
            and p["email_status"] == "confirmed"
            and not p["email_suppressed"]
        ):
            got.add("email")
        if (
            "sms" in channels
            and p["has_phone"]
            and p["sms_status"] == "confirmed"
            and not p["phone_suppressed"]
        ):
            got.add("sms")
        if got:
            chosen[n] = got
    return chosen


async def resolve_once(
    url: str,
    links: Links,
    population: list[dict[str, Any]],
    audience: dict[str, list[str]],
    channels: list[str],
    page_size: int,
) -> tuple[dict[int, set[str]], list[dict[str, Any]]]:
    engine = make_engine(url)
    try:
        sessionmaker = make_sessionmaker(engine)
        async with sessionmaker() as session, session.begin():
            for table in reversed(Base.metadata.sorted_tables):
                await session.execute(delete(table))
            rows = []
            suppressed = []
            for n, p in enumerate(population):
                row = subscriber_row(
                    n,
                    country=p["country"],
                    language=p["language"],
                    themes=p["themes"],
                    email_status=p["email_status"],
                    sms_status=p["sms_status"],
                    name=str(n),
                )
                if not p["has_email"]:
                    row["email"] = None
                if not p["has_phone"]:
                    row["phone"] = None
                if p["email_suppressed"] and row["email"]:
                    suppressed.append({"channel": "email", "address": row["email"]})
                if p["phone_suppressed"] and row["phone"]:
                    suppressed.append({"channel": "sms", "address": row["phone"]})
                rows.append(row)
            if rows:
                await session.execute(insert(Subscriber), rows)
            for s in suppressed:
                session.add(Suppression(**s, reason="opted_out", at=datetime.now(UTC)))
        event = action_published(audience=audience, channels=channels)
        await store_action(sessionmaker, event)
        await resolve_audience(
            sessionmaker=sessionmaker,
            links=links,
            action_id=event.action_id,
            notify=nothing,
            page_size=page_size,
        )
        got: dict[int, set[str]] = {}
        written = await outbox(sessionmaker, "dispatch.batch")
        for batch in written:
            for recipient in batch["recipients"]:
                got.setdefault(int(recipient["name"]), set()).add(recipient["channel"])
        counted = await outbox(sessionmaker, "audience.counted")
        return got, counted
    finally:
        await engine.dispose()


@pytest.fixture(scope="module")
def property_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("audience") / "subscriptions.db"
    return asyncio.run(migrated(f"sqlite+aiosqlite:///{path}"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    population=people,
    audience=audiences,
    channels=channel_sets,
    page_size=st.integers(1, 7),
)
def test_resolution_matches_the_plain_rule(
    property_db: str,
    population: list[dict[str, Any]],
    audience: dict[str, list[str]],
    channels: list[str],
    page_size: int,
) -> None:
    links = Links(LinkSigner(SECRET), PUBLIC_URL)
    got, counted = asyncio.run(
        resolve_once(property_db, links, population, audience, channels, page_size)
    )
    expected = expected_audience(population, audience, channels)
    assert got == expected
    totals: Counter[str] = Counter()
    by_country: Counter[str] = Counter()
    for message in counted:
        totals.update(message["recipients"])
        by_country.update(message["by_country"])
    assert {"email": totals["email"], "sms": totals["sms"]} == {
        "email": sum("email" in c for c in expected.values()),
        "sms": sum("sms" in c for c in expected.values()),
    }
    assert +by_country == Counter(population[n]["country"] for n in expected)


# ---- paging, on SQLite and PostgreSQL -----------------------------------------------------------


@pytest.fixture
async def database(subscriptions_db: str) -> Any:
    engine = make_engine(subscriptions_db)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def seed_people(sessionmaker: async_sessionmaker[AsyncSession], count: int) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(insert(Subscriber), [subscriber_row(n) for n in range(count)])


async def test_a_large_audience_goes_out_in_pages_once(
    database: async_sessionmaker[AsyncSession], links: Links
) -> None:
    await seed_people(database, 1234)
    event = action_published(channels=["email"])
    await store_action(database, event)

    written = await resolve_audience(
        sessionmaker=database, links=links, action_id=event.action_id, notify=nothing
    )
    again = await resolve_audience(
        sessionmaker=database, links=links, action_id=event.action_id, notify=nothing
    )

    assert (written, again) == (3, 0)
    sent = await batches(database)
    assert [len(b["recipients"]) for b in sent] == [500, 500, 234]
    addresses = [r["address"] for b in sent for r in b["recipients"]]
    assert len(set(addresses)) == 1234
    counted = await outbox(database, "audience.counted")
    assert sum(c["recipients"]["email"] for c in counted) == 1234
    assert sum(c["recipients"]["sms"] for c in counted) == 0
    assert sum(c["by_country"]["GB"] for c in counted) == 1234
    async with database() as session:
        assert await session.scalar(select(func.count()).select_from(ActionRecipient)) == 1234
        progress = await session.get(AudienceProgress, (event.action_id, "alert"))
        assert progress is not None and progress.finished
    recipient = sent[0]["recipients"][0]
    assert recipient["act_url"].startswith("http://subscriptions.test/act/")
    assert recipient["unsubscribe_url"].startswith("http://subscriptions.test/unsubscribe/")
    assert recipient["preferences_url"].startswith("http://subscriptions.test/preferences/")
    assert recipient["timezone"] is None  # urgent: no waiting for daytime


async def test_resolution_resumes_after_a_crash_without_duplicates(
    database: async_sessionmaker[AsyncSession], links: Links, monkeypatch: pytest.MonkeyPatch
) -> None:
    await seed_people(database, 1234)
    event = action_published(channels=["email", "sms"], urgency="standard")
    await store_action(database, event)
    real = audience_module.recipients_for
    calls = 0

    def crash_in_second_page(**kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 600:
            raise RuntimeError("process killed")
        return real(**kwargs)

    monkeypatch.setattr(audience_module, "recipients_for", crash_in_second_page)
    with pytest.raises(RuntimeError):
        await resolve_audience(
            sessionmaker=database, links=links, action_id=event.action_id, notify=nothing
        )
    # The second page was rolled back whole: the first page's batches only (its 500 SMS in
    # parts of SMS_BATCH, the emails with the first part).
    assert len(await batches(database)) == 500 // SMS_BATCH

    monkeypatch.setattr(audience_module, "recipients_for", real)
    await resolve_audience(
        sessionmaker=database, links=links, action_id=event.action_id, notify=nothing
    )

    sent = await batches(database)
    assert len(sent) == 2 * (500 // SMS_BATCH) + -(-234 // SMS_BATCH)  # three pages
    pairs = [(r["subscriber_id"], r["channel"]) for b in sent for r in b["recipients"]]
    assert len(pairs) == len(set(pairs)) == 2 * 1234
    assert {r["timezone"] for b in sent for r in b["recipients"]} == {"Europe/London"}
    async with database() as session:
        assert await session.scalar(select(func.count()).select_from(ActionRecipient)) == 1234


# ---- the handlers: published, updated, closed, suppressed ---------------------------------------


async def test_handlers_publish_update_close(
    database: async_sessionmaker[AsyncSession], links: Links
) -> None:
    async with database() as session, session.begin():
        await session.execute(
            insert(Subscriber),
            [
                subscriber_row(1, country="GB"),
                subscriber_row(2, country="IE", language="fr"),
                subscriber_row(3, country="FR"),  # outside the audience
                subscriber_row(4, country="IE", email_status="pending"),
            ],
        )
    handlers = SubscriptionHandlers(database, links, nothing, page_size=2)
    event = action_published(
        audience={"countries": ["GB", "IE"], "themes": [], "languages": []},
        content={
            "en": {"subject": "Act"},
            "fr": {"subject": "Agir"},
        },
    )
    update = events.ActionUpdated(
        action_id=event.action_id,
        update_id=uuid.uuid4(),
        reference=event.reference,
        kind="further_information",
        content={"en": events.UpdateContent(subject="More")},
        default_language="en",
    )
    with pytest.raises(Retry):  # an update before its action: try again later
        await handlers.action_updated(update)

    await handlers.action_published(event)
    await handlers.action_published(event)  # redelivered: nothing twice

    alert = await batches(database)
    recipients = [(r["name"], r["channel"], r["language"]) for b in alert for r in b["recipients"]]
    assert sorted(recipients) == [
        ("Person 1", "email", "en"),
        ("Person 1", "sms", "en"),
        ("Person 2", "email", "fr"),
        ("Person 2", "sms", "fr"),
        ("Person 4", "sms", "en"),
    ]
    async with database() as session:
        assert await session.get(ProcessedMessage, str(event.message_id)) is not None
        # Person 1 leaves SMS after the alert; Person 2's address bounces.
        await session.execute(
            update_statement(Subscriber.email == "person1@example.org", sms_status="unsubscribed")
        )
        await session.commit()
    await handlers.on_recipient_suppressed(
        events.RecipientSuppressed(
            subscriber_id=None, channel="email", address="person2@example.org", reason="hard_bounce"
        ),
        delivery(),
    )

    await handlers.action_updated(update)
    await handlers.action_updated(update)

    follow_up = await batches(database, f"update:{update.update_id}")
    assert sorted((r["name"], r["channel"]) for b in follow_up for r in b["recipients"]) == [
        ("Person 1", "email"),
        ("Person 2", "sms"),
        ("Person 4", "sms"),
    ]
    assert {r["language"] for b in follow_up for r in b["recipients"]} == {"en"}

    closed = events.ActionClosed(
        action_id=event.action_id,
        update_id=uuid.uuid4(),
        reference=event.reference,
        outcome="released",
        content={"en": events.UpdateContent(subject="Released!")},
        default_language="en",
    )
    await handlers.action_closed(closed)
    async with database() as session:
        action = await session.get(KnownAction, event.action_id)
        assert action is not None and (action.status, action.outcome) == ("closed", "released")
    assert len([r for b in await batches(database, "closed") for r in b["recipients"]]) == 3
    # The audience was counted once, for the alert only.
    counted = await outbox(database, "audience.counted")
    assert sum(c["recipients"]["email"] for c in counted) == 2
    assert sum(c["recipients"]["sms"] for c in counted) == 3
    assert sum(sum(c["by_country"].values()) for c in counted) == 3


async def test_opt_out_from_the_carrier_turns_sms_off(
    database: async_sessionmaker[AsyncSession], links: Links
) -> None:
    async with database() as session, session.begin():
        await session.execute(insert(Subscriber), [subscriber_row(1)])
    handlers = SubscriptionHandlers(database, links, nothing)
    async with database() as session:
        person = (await session.execute(select(Subscriber))).scalar_one()
    event = events.RecipientSuppressed(
        subscriber_id=person.public_id,
        channel="sms",
        address=person.phone or "",
        reason="opted_out",
    )

    await handlers.on_recipient_suppressed(event, delivery())
    await handlers.on_recipient_suppressed(event, delivery())

    async with database() as session:
        person = (await session.execute(select(Subscriber))).scalar_one()
        suppressions = (await session.execute(select(Suppression))).scalars().all()
    assert (person.email_status, person.sms_status) == ("confirmed", "unsubscribed")
    assert [(s.address, s.reason) for s in suppressions] == [(person.phone, "opted_out")]


def update_statement(where: Any, **values: Any) -> Any:
    return update(Subscriber).where(where).values(**values)


def delivery() -> Delivery:
    return Delivery(queue="test", routing_key="test", attempt=0)


async def test_a_late_complaint_unsubscribes_email_and_says_why(
    database: async_sessionmaker[AsyncSession], links: Links
) -> None:
    """The dispatcher names the subscriber, not the address (a report's could be forged)."""
    async with database() as session, session.begin():
        await session.execute(insert(Subscriber), [subscriber_row(1), subscriber_row(2)])
    handlers = SubscriptionHandlers(database, links, nothing)
    async with database() as session:
        first, second = (
            await session.execute(select(Subscriber).order_by(Subscriber.id))
        ).scalars()
    complaint = events.RecipientSuppressed(
        subscriber_id=first.public_id, channel="email", address="", reason="complaint"
    )
    bounce = events.RecipientSuppressed(
        subscriber_id=second.public_id, channel="email", address="", reason="hard_bounce"
    )
    for event in (complaint, complaint, bounce):
        await handlers.on_recipient_suppressed(event, delivery())

    async with database() as session:
        people = (await session.execute(select(Subscriber).order_by(Subscriber.id))).scalars().all()
        suppressions = (
            await session.execute(select(Suppression).order_by(Suppression.id))
        ).scalars()
        consents = (
            await session.execute(select(Consent).where(Consent.event == "withdrawn"))
        ).scalars()
        assert [(s.address, s.reason) for s in suppressions] == [
            (first.email, "complaint"),
            (second.email, "hard_bounce"),
        ]
        assert [(c.subscriber_id, c.channel, c.source, c.reason) for c in consents] == [
            (first.id, "email", "feedback", "complaint")
        ]
    # The complainer's email is off; a bounce leaves consent as it was; SMS untouched.
    assert [(p.email_status, p.sms_status) for p in people] == [
        ("unsubscribed", "confirmed"),
        ("confirmed", "confirmed"),
    ]
