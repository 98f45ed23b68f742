"""The tally: counts of each action that coordinators watch, fed by delivery and response events.

Handlers add to counters with ``UPDATE … SET n = n + :k`` so two consumers never lose an update, and
record each message id first so a redelivered message counts once. Deliveries are counted for the
alert itself (message kind ``alert``); follow-ups and closing messages are not part of the
coordinators' figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.actions import ActionNotFound
from services.publisher.database import Database
from services.publisher.federation.models import SectionCounts
from services.publisher.models import (
    CHANNELS,
    RESPONSE_KINDS,
    ActionTally,
    ActivityBucket,
    CountryTally,
    ProcessedMessage,
    Responder,
    UrgentAction,
)
from services.publisher.schemas import (
    ActionStats,
    ChannelDeliveries,
    CountryCounts,
    ResponseCounts,
)
from shared import events
from shared.db import already_processed, utcnow
from shared.messaging import Delivery, Reject

log = logging.getLogger(__name__)

TALLY_EVENTS: tuple[type[events.Message], ...] = (
    events.AudienceCounted,
    events.DeliveriesReported,
    events.DeliveryStatusChanged,
    events.ResponseRecorded,
    events.EmailFeedback,
)


class StatsNotifier:
    """Wakes the live streams of an action in this process when its counts changed."""

    def __init__(self) -> None:
        self._listeners: dict[uuid.UUID, set[asyncio.Event]] = defaultdict(set)

    def changed(self, action_id: uuid.UUID) -> None:
        for woken in self._listeners.get(action_id, ()):
            woken.set()

    def listening(self, action_id: uuid.UUID) -> int:
        return len(self._listeners.get(action_id, ()))

    @contextlib.contextmanager
    def listen(self, action_id: uuid.UUID) -> Iterator[asyncio.Event]:
        woken = asyncio.Event()
        self._listeners[action_id].add(woken)
        try:
            yield woken
        finally:
            listeners = self._listeners.get(action_id)
            if listeners is not None:
                listeners.discard(woken)
                if not listeners:
                    del self._listeners[action_id]


# ---- counting ---------------------------------------------------------------------------------


def _country_code(raw: str | None) -> str | None:
    """Counts by country need a two-letter code; anything else counts only in the totals."""
    if raw is None:
        return None
    code = raw.strip().upper()
    return code if len(code) == 2 and code.isalpha() else None


def _insert_ignoring_duplicates(session: AsyncSession, model: type[Any]) -> Any:
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(model)


async def _add_to_tally(
    session: AsyncSession, action_id: uuid.UUID, increments: dict[str, int]
) -> None:
    """Add to an action's counters; an action this service never had is dead-lettered."""
    values: dict[str, Any] = {
        name: getattr(ActionTally, name) + amount for name, amount in increments.items()
    }
    values["updated_at"] = utcnow()
    result = await session.execute(
        update(ActionTally).where(ActionTally.action_id == action_id).values(**values)
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise Reject(f"unknown urgent action {action_id}")


async def _add_to_country(
    session: AsyncSession, action_id: uuid.UUID, country: str, increments: dict[str, int]
) -> None:
    insert = _insert_ignoring_duplicates(session, CountryTally)
    await session.execute(
        insert.values(
            action_id=action_id, country=country, recipients=0, people=0, actions=0
        ).on_conflict_do_nothing(index_elements=["action_id", "country"])
    )
    await session.execute(
        update(CountryTally)
        .where(CountryTally.action_id == action_id, CountryTally.country == country)
        .values({name: getattr(CountryTally, name) + n for name, n in increments.items()})
    )


def minute_of(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


async def _add_to_activity(
    session: AsyncSession, action_id: uuid.UUID, increments: dict[str, int]
) -> None:
    """Add to this minute's bucket of the action's time series (the dashboard's chart)."""
    increments = {name: n for name, n in increments.items() if n}
    if not increments:
        return
    minute = minute_of(utcnow())
    insert = _insert_ignoring_duplicates(session, ActivityBucket)
    await session.execute(
        insert.values(
            action_id=action_id, minute=minute, sent=0, delivered=0, actions=0
        ).on_conflict_do_nothing(index_elements=["action_id", "minute"])
    )
    await session.execute(
        update(ActivityBucket)
        .where(ActivityBucket.action_id == action_id, ActivityBucket.minute == minute)
        .values({name: getattr(ActivityBucket, name) + n for name, n in increments.items()})
    )


async def _first_response_of(
    session: AsyncSession, action_id: uuid.UUID, subscriber_id: uuid.UUID
) -> bool:
    """Records the responder; True only the first time this subscriber reports on this action."""
    insert = _insert_ignoring_duplicates(session, Responder)
    inserted = await session.execute(
        insert.values(action_id=action_id, subscriber_id=subscriber_id, first_reported_at=utcnow())
        .on_conflict_do_nothing(index_elements=["action_id", "subscriber_id"])
        .returning(Responder.subscriber_id)
    )
    return inserted.first() is not None


def _no_negative(counts: dict[str, int], what: str) -> None:
    if any(n < 0 for n in counts.values()):
        raise Reject(f"negative count in {what}")


async def count_audience(*, session: AsyncSession, event: events.AudienceCounted) -> bool:
    _no_negative({str(k): n for k, n in event.recipients.items()}, "recipients")
    _no_negative(event.by_country, "by_country")
    await _add_to_tally(
        session,
        event.action_id,
        {f"recipients_{channel}": n for channel, n in event.recipients.items() if n},
    )
    for raw, people in event.by_country.items():
        country = _country_code(raw)
        if country is not None and people:
            await _add_to_country(session, event.action_id, country, {"recipients": people})
    return True


async def count_deliveries(*, session: AsyncSession, event: events.DeliveriesReported) -> bool:
    if event.message_kind != "alert":
        return False
    _no_negative({"sent": event.sent, "failed": event.failed}, "deliveries")
    await _add_to_tally(
        session,
        event.action_id,
        {f"{event.channel}_sent": event.sent, f"{event.channel}_failed": event.failed},
    )
    await _add_to_activity(session, event.action_id, {"sent": event.sent})
    return True


async def count_delivery_status(
    *, session: AsyncSession, event: events.DeliveryStatusChanged
) -> bool:
    # A receipt the dispatcher could not tie to an action has nothing to add to.
    if event.action_id is None or event.message_kind != "alert":
        return False
    await _add_to_tally(session, event.action_id, {f"{event.channel}_{event.status}": 1})
    if event.status == "delivered":
        await _add_to_activity(session, event.action_id, {"delivered": 1})
    return True


async def count_email_feedback(*, session: AsyncSession, event: events.EmailFeedback) -> bool:
    """A late bounce, complaint or ESP delivery of an alert email: a hard bounce moves it from
    sent (and delivered) to failed; the bounce and complaint counts feed the staff's rates."""
    if event.message_kind != "alert":
        return False
    increments: dict[str, int] = {}
    if event.kind == "hard_bounce":
        increments["email_hard_bounces"] = 1
        if event.previous is not None:
            increments |= {"email_sent": -1, "email_failed": 1}
        if event.previous == "delivered":
            increments["email_delivered"] = -1
    elif event.kind == "soft_bounce":
        increments["email_soft_bounces"] = 1
    elif event.kind == "complaint":
        increments["email_complaints"] = 1
    elif event.previous == "sent":  # delivered
        increments["email_delivered"] = 1
    if not increments:
        return False
    await _add_to_tally(session, event.action_id, increments)
    if increments.get("email_delivered", 0) > 0:
        await _add_to_activity(session, event.action_id, {"delivered": 1})
    return True


async def count_response(*, session: AsyncSession, event: events.ResponseRecorded) -> bool:
    # The tally row first: an unknown action is refused before anything else is written.
    await _add_to_tally(
        session, event.action_id, {"actions": event.count, f"kind_{event.kind}": event.count}
    )
    first = await _first_response_of(session, event.action_id, event.subscriber_id)
    if first:
        await _add_to_tally(session, event.action_id, {"people": 1})
    country = _country_code(event.country)
    if country is not None:
        await _add_to_country(
            session,
            event.action_id,
            country,
            {"actions": event.count, "people": 1 if first else 0},
        )
    await _add_to_activity(session, event.action_id, {"actions": event.count})
    return True


class TallyConsumer:
    """The handler of the ``publisher.tally`` queue: one transaction per message."""

    def __init__(self, database: Database, notifier: StatsNotifier) -> None:
        self.database = database
        self.notifier = notifier

    async def __call__(self, event: events.Message, delivery: Delivery | None = None) -> None:
        action_id: uuid.UUID | None = getattr(event, "action_id", None)
        async with self.database.write() as session:
            if await already_processed(session, ProcessedMessage, event.message_id):
                return
            if isinstance(event, events.AudienceCounted):
                changed = await count_audience(session=session, event=event)
            elif isinstance(event, events.DeliveriesReported):
                changed = await count_deliveries(session=session, event=event)
            elif isinstance(event, events.DeliveryStatusChanged):
                changed = await count_delivery_status(session=session, event=event)
            elif isinstance(event, events.ResponseRecorded):
                changed = await count_response(session=session, event=event)
            elif isinstance(event, events.EmailFeedback):
                changed = await count_email_feedback(session=session, event=event)
            else:
                raise Reject(f"the tally does not count {type(event).__name__}")
        # After the commit: a stream woken now reads the new counts.
        if changed and action_id is not None:
            self.notifier.changed(action_id)


# ---- reading ----------------------------------------------------------------------------------


async def read_stats(*, session: AsyncSession, action_id: uuid.UUID) -> ActionStats:
    row = (
        await session.execute(
            select(UrgentAction.number, UrgentAction.year, ActionTally)
            .join(ActionTally, ActionTally.action_id == UrgentAction.id)
            .where(UrgentAction.id == action_id)
        )
    ).first()
    if row is None:
        raise ActionNotFound(str(action_id))
    number, year, tally = row
    countries = (
        await session.execute(
            select(CountryTally)
            .where(CountryTally.action_id == action_id)
            .order_by(CountryTally.country)
        )
    ).scalars()
    return ActionStats(
        action_id=action_id,
        reference=f"UA {number}/{year % 100:02d}",
        recipients={channel: getattr(tally, f"recipients_{channel}") for channel in CHANNELS},
        deliveries={
            channel: ChannelDeliveries(
                sent=getattr(tally, f"{channel}_sent"),
                delivered=getattr(tally, f"{channel}_delivered"),
                failed=getattr(tally, f"{channel}_failed"),
            )
            for channel in CHANNELS
        },
        responses=ResponseCounts(
            people=tally.people,
            actions=tally.actions,
            by_kind={kind: getattr(tally, f"kind_{kind}") for kind in RESPONSE_KINDS},
        ),
        by_country={
            c.country: CountryCounts(recipients=c.recipients, people=c.people, actions=c.actions)
            for c in countries
        },
        updated_at=tally.updated_at,
    )


async def read_activity(*, session: AsyncSession, action_id: uuid.UUID) -> list[ActivityBucket]:
    """The action's per-minute buckets, oldest first."""
    rows = (
        await session.execute(
            select(ActivityBucket)
            .where(ActivityBucket.action_id == action_id)
            .order_by(ActivityBucket.minute)
        )
    ).scalars()
    return list(rows)


async def stats_changed_at(*, session: AsyncSession, action_id: uuid.UUID) -> datetime | None:
    """When the counts last changed, the action's own or (on a hub) a section's report: one
    cheap query for the live stream's poll, which so sees what another process took."""
    newest_report = (
        select(func.max(SectionCounts.updated_at))
        .where(SectionCounts.action_id == action_id)
        .scalar_subquery()
    )
    row = (
        await session.execute(
            select(ActionTally.updated_at, newest_report).where(ActionTally.action_id == action_id)
        )
    ).first()
    if row is None:
        return None
    return max((at for at in row if at is not None), default=None)
