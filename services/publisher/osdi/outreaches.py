"""Letters subscribers wrote, kept as OSDI outreaches (queue ``publisher.outreaches``).

Subscriptions reports each letter it takes (``LetterWritten``: the subscriber's id, the language,
the officials written to; never the text, the name or the address). An erasure
(``SubscriberErased``) takes the person off their outreaches, which stay, anonymous, and counted.
Both come through one queue, so an erasure follows the letters written before it; a letter that
arrives after its writer's erasure (a retried message) is kept without them.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.database import Database
from services.publisher.erasures import is_erased, mark_erased
from services.publisher.models import (
    Outreach,
    OutreachTotal,
    ProcessedMessage,
    UrgentAction,
)
from shared import events
from shared.db import already_processed, insert_or_ignore, utcnow
from shared.messaging import Delivery, Reject

log = logging.getLogger(__name__)

OUTREACH_QUEUE = "publisher.outreaches"
# An erasure reaches the audit log and the webhooks too, and the publisher keeps one table of
# handled message ids: this consumer records its own id for each message, derived from it.
_HANDLED_HERE = uuid.UUID("0b5f6c1e-2f0a-4c55-9a51-6f7c0de0a7e1")
OUTREACH_EVENTS: tuple[type[events.Message], ...] = (events.LetterWritten, events.SubscriberErased)


async def record_outreach(*, session: AsyncSession, event: events.LetterWritten) -> None:
    if await session.get(UrgentAction, event.action_id) is None:
        raise Reject(f"unknown urgent action {event.action_id}")
    erased = await is_erased(session, event.subscriber_id)
    now = utcnow()
    inserted = await insert_or_ignore(
        session,
        Outreach,
        {
            "letter_id": event.letter_id,
            "action_id": event.action_id,
            "subscriber_id": None if erased else event.subscriber_id,
            "language": event.language[:8],
            "targets": [
                {"name": t.name[:300], "title": (t.title or "")[:300] or None}
                for t in event.targets
            ],
            "created_at": event.occurred_at,
            "updated_at": now,
        },
    )
    if not inserted:
        return  # the same letter reported twice
    await insert_or_ignore(
        session, OutreachTotal, {"action_id": event.action_id, "outreaches": 0, "last_at": now}
    )
    # The campaign's modified_date moves now, when a sync can first see the new total.
    await session.execute(
        update(OutreachTotal)
        .where(OutreachTotal.action_id == event.action_id)
        .values(outreaches=OutreachTotal.outreaches + 1, last_at=now)
    )


async def forget_writer(*, session: AsyncSession, subscriber_id: uuid.UUID) -> int:
    """Take an erased person off their outreaches; returns how many."""
    now = utcnow()
    await mark_erased(session, subscriber_id)
    result = await session.execute(
        update(Outreach)
        .where(Outreach.subscriber_id == subscriber_id)
        .values(subscriber_id=None, updated_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


class OutreachConsumer:
    """The handler of ``publisher.outreaches``: one transaction per message, each applied once."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def __call__(self, event: events.Message, delivery: Delivery | None = None) -> None:
        if not isinstance(event, OUTREACH_EVENTS):
            raise Reject(f"{OUTREACH_QUEUE} does not take {type(event).__name__}")
        async with self.database.write() as session:
            handled_id = uuid.uuid5(_HANDLED_HERE, str(event.message_id))
            if await already_processed(session, ProcessedMessage, handled_id):
                return
            if isinstance(event, events.LetterWritten):
                await record_outreach(session=session, event=event)
            else:
                assert isinstance(event, events.SubscriberErased)
                await forget_writer(session=session, subscriber_id=event.subscriber_id)
        log.info("outreach event", extra={"kind": type(event).__name__})


async def outreach_totals(
    session: AsyncSession, action_ids: list[uuid.UUID]
) -> dict[uuid.UUID, OutreachTotal]:
    if not action_ids:
        return {}
    rows = await session.execute(
        select(OutreachTotal).where(OutreachTotal.action_id.in_(action_ids))
    )
    return {row.action_id: row for row in rows.scalars()}
