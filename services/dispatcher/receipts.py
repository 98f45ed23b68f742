"""Twilio status callbacks: a sent SMS becomes delivered or failed, once."""

from __future__ import annotations

import logging

from sqlalchemy import update

from rendering.renderer import header_safe
from services.dispatcher import metrics
from services.dispatcher.adapters import Adapters
from services.dispatcher.models import (
    DELIVERED,
    FAILED,
    SENT,
    Delivery,
    Outbox,
    TransactionalDelivery,
)
from shared.db import outbox_row, utcnow
from shared.events import DeliveryStatusChanged

log = logging.getLogger(__name__)


# Twilio's final statuses and what they mean for the ledger.
RECEIPT_STATUS = {"delivered": DELIVERED, "undelivered": FAILED, "failed": FAILED}


async def record_receipt(
    dispatcher: Adapters, message_sid: str, status: str, error_code: str | None
) -> bool:
    """A delivery receipt: True if it moved a sent SMS to delivered or failed."""
    new_status = RECEIPT_STATUS.get(status)
    if new_status is None or not message_sid:
        return False  # an intermediate status (queued, sent...) changes nothing
    code = f"twilio:{header_safe(error_code, 20)}" if error_code else None
    now = utcnow()
    async with dispatcher.sessionmaker() as session, session.begin():
        # Conditional update: of two copies of one callback, only one finds the row ``sent``.
        moved = await session.execute(
            update(Delivery)
            .where(Delivery.provider_message_id == message_sid, Delivery.status == SENT)
            .values(status=new_status, receipt_at=now, updated_at=now, error_code=code)
            .returning(Delivery.action_id, Delivery.message_kind, Delivery.channel)
        )
        row = moved.first()
        if row is None:
            await session.execute(
                update(TransactionalDelivery)
                .where(
                    TransactionalDelivery.provider_message_id == message_sid,
                    TransactionalDelivery.status == SENT,
                )
                .values(status=new_status, receipt_at=now, updated_at=now, error_code=code)
            )
            return False
        action_id, message_kind, channel = row
        session.add(
            outbox_row(
                Outbox,
                DeliveryStatusChanged(
                    action_id=action_id,
                    message_kind=message_kind,
                    channel=channel,
                    status="delivered" if new_status == DELIVERED else "failed",
                ),
            )
        )
    metrics.RECEIPTS.labels(new_status).inc()
    dispatcher.notify()
    return True
