"""Reports of what subscribers did for an urgent action, counted once each, and bounded.

Counts cannot be forged by reporting again and again: for one person and one action, reports
(page and SMS together) add up to at most ``MAX_ACTIONS_PER_PERSON`` actions; a report beyond
that adds only what is left of it (nothing once it is reached). At most ``REPORTS_PER_HOUR``
reports are taken an hour for one person and action; more are refused (429) and count nothing.
A report repeated with its id (a resubmitted form, a retried webhook) counts once. Letters sent
through the page count apart, bounded by the letter cap (``letters.MAX_LETTERS_PER_ACTION``).
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions import store
from services.subscriptions.models import ActionRecipient, Outbox, Response, Subscriber
from shared.db import insert_or_ignore, outbox_row, utcnow
from shared.events import ResponseKind, ResponseRecorded, ResponseSource

# SMS reports take their id from Twilio's MessageSid, so a retried webhook counts once.
SMS_REPORT_NAMESPACE = uuid.UUID("5b0e8f52-6c1e-4d57-9a51-1f6f1c3a7e0d")


# One person, one action: what their reports may add up to (a report's own maximum, so one
# honest "I sent 50" still counts whole), and how often they may report.
MAX_ACTIONS_PER_PERSON = 50
REPORTS_PER_HOUR = 10
# Letters are bounded by their own cap; the page's reports and SMS replies by the one above.
UNCAPPED_SOURCES = ("letter",)

Recorded = Literal["recorded", "duplicate", "capped", "too_many"]


def sms_report_id(message_sid: str) -> uuid.UUID:
    return uuid.uuid5(SMS_REPORT_NAMESPACE, f"twilio:{message_sid}")


async def lock_subscriber(session: AsyncSession, subscriber: Subscriber) -> None:
    """Hold this subscriber's row until the transaction ends, so caps counted in it hold when
    requests race (PostgreSQL; on SQLite every transaction already takes the write lock)."""
    if store.is_postgres(session):
        await session.execute(
            select(Subscriber.id).where(Subscriber.id == subscriber.id).with_for_update()
        )


async def allowance(
    session: AsyncSession, *, recipient: ActionRecipient, subscriber: Subscriber, count: int
) -> int | None:
    """How much of a report of ``count`` actions may count now: ``count`` or less (0 once the
    cap is reached); None when this person reported too often this hour."""
    await lock_subscriber(session, subscriber)
    mine = (
        Response.action_id == recipient.action_id,
        Response.subscriber_id == subscriber.id,
        Response.source.not_in(UNCAPPED_SOURCES),
    )
    recent = await session.scalar(
        select(func.count())
        .select_from(Response)
        .where(*mine, Response.created_at > utcnow() - timedelta(hours=1))
    )
    if (recent or 0) >= REPORTS_PER_HOUR:
        return None
    counted = await session.scalar(select(func.coalesce(func.sum(Response.count), 0)).where(*mine))
    return max(0, min(count, MAX_ACTIONS_PER_PERSON - int(counted or 0)))


async def report(
    *,
    session: AsyncSession,
    recipient: ActionRecipient,
    subscriber: Subscriber,
    report_id: uuid.UUID,
    kind: ResponseKind,
    count: int,
    source: ResponseSource,
) -> Recorded:
    """A subscriber's own report (page or SMS), within the cap and rate, in the caller's
    transaction."""
    if await session.get(Response, report_id) is not None:
        return "duplicate"
    allowed = await allowance(session, recipient=recipient, subscriber=subscriber, count=count)
    if allowed is None:
        return "too_many"
    if allowed == 0:
        return "capped"
    recorded = await record_response(
        session=session,
        recipient=recipient,
        subscriber=subscriber,
        report_id=report_id,
        kind=kind,
        count=allowed,
        source=source,
    )
    return "recorded" if recorded else "duplicate"


async def record_response(
    *,
    session: AsyncSession,
    recipient: ActionRecipient,
    subscriber: Subscriber,
    report_id: uuid.UUID,
    kind: ResponseKind,
    count: int,
    source: ResponseSource,
) -> bool:
    """Store the report and tell the publisher, in the caller's transaction.

    Returns False for a report already recorded (same report id): nothing changes.
    """
    inserted = await insert_or_ignore(
        session,
        Response,
        {
            "id": report_id,
            "action_id": recipient.action_id,
            "subscriber_id": subscriber.id,
            "kind": kind,
            "count": count,
            "source": source,
            "created_at": utcnow(),
        },
    )
    if not inserted:
        return False
    session.add(
        outbox_row(
            Outbox,
            ResponseRecorded(
                message_id=report_id,
                action_id=recipient.action_id,
                subscriber_id=subscriber.public_id,
                country=subscriber.country,
                kind=kind,
                count=count,
                source=source,
            ),
        )
    )
    return True


async def latest_sms_recipient(
    session: AsyncSession, subscriber: Subscriber
) -> ActionRecipient | None:
    """The most recent urgent action this subscriber was sent by SMS."""
    query = (
        select(ActionRecipient)
        .where(ActionRecipient.subscriber_id == subscriber.id, ActionRecipient.via_sms.is_(True))
        .order_by(ActionRecipient.id.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()
