"""Queries the service functions share. None of them commits: the caller's unit of work does."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions.models import Subscriber, Suppression
from shared.db import insert_or_ignore, utcnow


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def subscriber_by_public_id(
    session: AsyncSession, public_id: uuid.UUID, *, for_update: bool = False
) -> Subscriber | None:
    query = select(Subscriber).where(Subscriber.public_id == public_id)
    if for_update and is_postgres(session):
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def subscriber_by_phone(session: AsyncSession, phone: str) -> Subscriber | None:
    query = select(Subscriber).where(Subscriber.phone == phone)
    return (await session.execute(query)).scalar_one_or_none()


async def subscribers_by_address(
    session: AsyncSession, *, email: str | None, phone: str | None, for_update: bool = False
) -> list[Subscriber]:
    conditions = []
    if email is not None:
        conditions.append(Subscriber.email == email)
    if phone is not None:
        conditions.append(Subscriber.phone == phone)
    if not conditions:
        return []
    query = select(Subscriber).where(or_(*conditions)).order_by(Subscriber.id)
    if for_update and is_postgres(session):
        query = query.with_for_update()  # in id order: two sign-ups never deadlock
    return list((await session.execute(query)).scalars())


async def suppression_of(session: AsyncSession, address: str) -> Suppression | None:
    query = select(Suppression).where(Suppression.address == address)
    return (await session.execute(query)).scalar_one_or_none()


async def suppressed_among(session: AsyncSession, addresses: Iterable[str]) -> set[str]:
    wanted = sorted(set(addresses))
    if not wanted:
        return set()
    query = select(Suppression.address).where(Suppression.address.in_(wanted))
    return set((await session.execute(query)).scalars())


async def suppress(session: AsyncSession, *, channel: str, address: str, reason: str) -> None:
    """Record that an address must not be contacted; the first reason recorded stays."""
    await insert_or_ignore(
        session,
        Suppression,
        {"channel": channel, "address": address, "reason": reason, "at": utcnow()},
    )


async def lift_suppression(
    session: AsyncSession, address: str, *, reasons: Iterable[str] | None = None
) -> None:
    statement = delete(Suppression).where(Suppression.address == address)
    if reasons is not None:
        statement = statement.where(Suppression.reason.in_(list(reasons)))
    await session.execute(statement)


async def touch_subscribers_with(session: AsyncSession, addresses: Sequence[str]) -> None:
    """Mark the people holding these addresses as changed (``updated_at``, OSDI's
    ``modified_date``): a suppression changes what their address's status reads as."""
    if not addresses:
        return
    await session.execute(
        update(Subscriber)
        .where(or_(Subscriber.email.in_(addresses), Subscriber.phone.in_(addresses)))
        .values(updated_at=utcnow())
    )
