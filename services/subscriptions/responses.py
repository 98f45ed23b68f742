"""Reports of what subscribers did for an urgent action, counted once each."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions import store
from services.subscriptions.models import ActionRecipient, Outbox, Response, Subscriber
from shared.db import outbox_row, utcnow
from shared.events import ResponseKind, ResponseRecorded

# SMS reports take their id from Twilio's MessageSid, so a retried webhook counts once.
SMS_REPORT_NAMESPACE = uuid.UUID("5b0e8f52-6c1e-4d57-9a51-1f6f1c3a7e0d")


def sms_report_id(message_sid: str) -> uuid.UUID:
    return uuid.uuid5(SMS_REPORT_NAMESPACE, f"twilio:{message_sid}")


async def record_response(
    *,
    session: AsyncSession,
    recipient: ActionRecipient,
    subscriber: Subscriber,
    report_id: uuid.UUID,
    kind: ResponseKind,
    count: int,
    source: str,
) -> bool:
    """Store the report and tell the publisher, in the caller's transaction.

    Returns False for a report already recorded (same report id): nothing changes.
    """
    inserted = await store.insert_or_ignore(
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
