"""Target addresses that bounce subscribers' letters (queue ``publisher.targets``).

The dispatcher reports each letter a target refused for good (``TargetBounced``); the action's
page shows staff one warning per address, with how many letters it lost, so they can fix it.
Once the address is replaced (``settle_bounces``, from ``actions.replace_targets``) the warning
becomes a note saying where letters go now.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

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


def _email(target: Mapping[str, Any]) -> str:
    return str(target.get("email") or "").strip().lower()


async def record_bounce(*, session: AsyncSession, event: events.TargetBounced) -> None:
    action = await session.get(UrgentAction, event.action_id)
    if action is None:
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
    # Whether it still needs fixing depends on the targets now, not when the letter left: an
    # address that is a target again warns again; a late bounce of one replaced since does not.
    where = (TargetBounce.action_id == event.action_id, TargetBounce.address == address)
    if address in {_email(t) for t in action.targets}:
        await session.execute(
            update(TargetBounce).where(*where).values(fixed_at=None, fixed_to=None)
        )
    else:
        await session.execute(
            update(TargetBounce).where(*where, TargetBounce.fixed_at.is_(None)).values(fixed_at=now)
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


async def settle_bounces(
    *,
    session: AsyncSession,
    action_id: uuid.UUID,
    before: Sequence[Mapping[str, Any]],
    after: Sequence[Mapping[str, Any]],
    now: datetime,
) -> int:
    """After the targets change: a bounced address no longer among them is fixed (noting where
    that target's letters go now); one that is back among them warns again. Returns how many
    were newly fixed."""
    current = {_email(t) for t in after}
    rows = await session.execute(select(TargetBounce).where(TargetBounce.action_id == action_id))
    fixed = 0
    for bounce in rows.scalars():
        if bounce.address in current:
            bounce.fixed_at = bounce.fixed_to = None
        elif bounce.fixed_at is None:
            bounce.fixed_at = now
            bounce.fixed_to = _replacement(bounce.address, before, after)
            fixed += 1
        elif bounce.fixed_to and bounce.fixed_to.lower() not in current:
            # Fixed once, then changed again: the note follows where letters go now.
            bounce.fixed_to = _replacement(bounce.fixed_to.lower(), before, after)
    return fixed


def _replacement(
    address: str, before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]
) -> str | None:
    """The email now of the target that had ``address``: the target of the same name, else the
    one in the same place if the list kept its length. None: that target has no email now."""
    for place, old in enumerate(before):
        if _email(old) != address:
            continue
        for new in after:
            if new.get("name") == old.get("name") and _email(new):
                return str(new["email"])[:320]
        if len(after) == len(before) and _email(after[place]):
            return str(after[place]["email"])[:320]
    return None
