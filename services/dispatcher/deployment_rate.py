"""One send rate for the whole deployment (contract §10): every dispatcher process together sends
at most ``UANET_EMAIL_RATE`` emails and ``UANET_SMS_RATE`` SMS segments a second.

The schedule lives in PostgreSQL, one row per channel (``dispatch_send_schedule.free_at``, in the
database's clock): a process books a small grant (a tenth of a second's worth of units, at least
what one send needs) with one UPDATE that moves ``free_at`` on, and learns where its slots begin.
It then hands those units out to its senders spaced ``1/rate`` apart, in its own clock (only the
distance from the database's "now" is used, so the machines' clocks need not agree). Grants never
overlap, so the processes together hold the rate as one would (GCRA with no burst): at most one
unit more than the rate in any second. Slots a process let pass unused (it ran out of work) are
dropped, never caught up, so the rate is never exceeded, only sometimes not reached.

SQLite is one dispatcher process (the process's own ``throttle.RateLimiter``).
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from sqlalchemy import func, literal, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.models import SendSchedule

# Seconds of sending one grant holds: one database round trip per this much sending.
GRANT_SECONDS = 0.1
# A slot used this late still goes (the sleep overshot); later ones are dropped.
LATE = 0.1


class DeploymentRateLimiter:
    """At most ``rate`` units a second over every dispatcher on this database (PostgreSQL)."""

    def __init__(
        self,
        rate: Decimal,
        channel: str,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        grant_seconds: float = GRANT_SECONDS,
    ) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        self.channel = channel
        self._sessionmaker = sessionmaker
        self._interval = float(1 / rate) if rate else 0.0
        self._grant = max(1, int(float(rate) * grant_seconds))
        # The units this process holds: ``_held`` of them, the next at ``_next_at`` (monotonic).
        self._held = 0
        self._next_at = 0.0
        self._lock = asyncio.Lock()

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    async def acquire(self, units: int = 1) -> None:
        if self.unlimited or units <= 0:
            return
        async with self._lock:
            now = time.monotonic()
            if self._held < units or self._next_at < now - LATE:
                # What is left of the last grant is too little, or its time is past: let it go.
                want = max(units, self._grant)
                wait = await self._book(want)
                # From after the booking came back: its slots may begin late, never early.
                self._next_at = time.monotonic() + wait
                self._held = want
            at = self._next_at
            self._next_at += units * self._interval
            self._held -= units
        wait = at - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _book(self, units: int) -> float:
        """Book ``units`` on the deployment's schedule; seconds from now until they begin."""
        span = units * self._interval
        now = func.extract("epoch", func.clock_timestamp())
        move = (
            update(SendSchedule)
            .where(SendSchedule.channel == self.channel)
            .values(free_at=func.greatest(SendSchedule.free_at, now) + span)
            .returning(SendSchedule.free_at - literal(span), now)
        )
        async with self._sessionmaker() as session, session.begin():
            booked = (await session.execute(move)).one_or_none()
            if booked is None:
                # The first booking of this channel ever: the row, then the same again.
                await session.execute(
                    insert(SendSchedule)
                    .values(channel=self.channel, free_at=0.0)
                    .on_conflict_do_nothing()
                )
                booked = (await session.execute(move)).one()
        begin, at = float(booked[0]), float(booked[1])
        return max(begin - at, 0.0)
