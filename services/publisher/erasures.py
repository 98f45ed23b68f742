"""Who was erased in subscriptions, by id only: the tombstone the publisher's consumers check, so
that a message about a person handled after their erasure (two queues at their own pace, a delayed
retry, ``uanet dead-letters replay``) brings none of their data back.

Each queue that hears of an erasure (``publisher.outreaches``, ``publisher.webhooks``) marks it: any
of them may be first.
"""

from __future__ import annotations

import uuid

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.models import ErasedSubscriber
from shared.db import insert_or_ignore, utcnow


async def _person_turn(session: AsyncSession, subscriber_id: uuid.UUID) -> None:
    """On PostgreSQL, one person's messages take turns until the transaction ends: an erasure
    and a change handled at once would otherwise each miss the other. (SQLite's writes take
    turns already.)"""
    if session.get_bind().dialect.name == "postgresql":
        key = int.from_bytes(subscriber_id.bytes[:8], "big", signed=True)
        await session.execute(select(func.pg_advisory_xact_lock(key)))


async def mark_erased(session: AsyncSession, subscriber_id: uuid.UUID) -> None:
    await _person_turn(session, subscriber_id)
    await insert_or_ignore(
        session, ErasedSubscriber, {"subscriber_id": subscriber_id, "erased_at": utcnow()}
    )


async def is_erased(session: AsyncSession, subscriber_id: uuid.UUID) -> bool:
    """Whether the person is erased, waiting for an erasure of theirs under way to end."""
    await _person_turn(session, subscriber_id)
    return await session.get(ErasedSubscriber, subscriber_id) is not None
