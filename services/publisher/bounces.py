"""Target addresses that bounce subscribers' letters (queue ``publisher.targets``).

The dispatcher reports each letter a target refused for good (``TargetBounced``); the action's
page shows staff one warning per address, with how many letters it lost, so they can fix it.
"""

from __future__ import annotations

import logging
import uuid

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.database import Database
from services.publisher.models import ProcessedMessage, TargetBounce, UrgentAction
from shared import events
from shared.db import already_processed, utcnow
from shared.messaging import Delivery, Reject

log = logging.getLogger(__name__)

BOUNCE_QUEUE = "publisher.targets"


async def record_bounce(*, session: AsyncSession, event: events.TargetBounced) -> None:
    if await session.get(UrgentAction, event.action_id) is None:
        raise Reject(f"unknown urgent action {event.action_id}")
    now = utcnow()
    address = event.address.strip().lower()[:320]
    module = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    await session.execute(
        module.insert(TargetBounce)
        .values(
            action_id=event.action_id,
            address=address,
            target_name=event.target_name[:300],
            error_code=None,
            letters=0,
            first_at=now,
            last_at=now,
        )
        .on_conflict_do_nothing(index_elements=["action_id", "address"])
    )
    await session.execute(
        update(TargetBounce)
        .where(TargetBounce.action_id == event.action_id, TargetBounce.address == address)
        .values(
            letters=TargetBounce.letters + 1,
            error_code=(event.error_code or "")[:32] or None,
            last_at=now,
        )
    )


class BounceConsumer:
    """The handler of ``publisher.targets``: one transaction per message, each counted once."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def __call__(self, event: events.Message, delivery: Delivery | None = None) -> None:
        if not isinstance(event, events.TargetBounced):
            raise Reject(f"{BOUNCE_QUEUE} does not take {type(event).__name__}")
        async with self.database.write() as session:
            if await already_processed(session, ProcessedMessage, event.message_id):
                return
            await record_bounce(session=session, event=event)
        log.warning("a target address bounced a letter", extra={"action_id": str(event.action_id)})


async def bounces_of(*, session: AsyncSession, action_id: uuid.UUID) -> list[TargetBounce]:
    rows = await session.execute(
        select(TargetBounce)
        .where(TargetBounce.action_id == action_id)
        .order_by(TargetBounce.first_at, TargetBounce.address)
    )
    return list(rows.scalars())
