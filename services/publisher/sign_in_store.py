"""The sign-in throttle of sign_in_throttle.py counted in the publisher's database, so that every
publisher process sees every process's failures (contract §10): the 11th wrong password is
refused whichever process gets it. The policy is the same, read from the same constants; only
where the counts live differs. Times are Unix seconds from the processes' clocks (kept in step
by NTP, as the session expiries already assume); rows older than the window are pruned as
failures come. On PostgreSQL; SQLite is one publisher process (MemorySignInThrottle).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.publisher.models import SignInFailure, SignInPair
from services.publisher.sign_in_throttle import (
    ADDRESS_FAILURES,
    PAIR_FAILURES,
    WINDOW_SECONDS,
    pressure_delay,
    sign_in_key,
)


@dataclass
class DatabaseSignInThrottle:
    """:class:`~services.publisher.sign_in_throttle.SignInThrottle` in PostgreSQL."""

    sessionmaker: async_sessionmaker[AsyncSession]
    clock: Callable[[], float] = time.time

    async def wait(self, *, email: str, address: str) -> float | None:
        now = self.clock()
        key = sign_in_key(email)
        since = now - WINDOW_SECONDS
        async with self.sessionmaker() as session, session.begin():
            by_address, oldest = (
                await session.execute(
                    select(func.count(), func.min(SignInFailure.at)).where(
                        SignInFailure.address == address, SignInFailure.at > since
                    )
                )
            ).one()
            if by_address >= ADDRESS_FAILURES:
                return float(oldest) + WINDOW_SECONDS - now
            pair = await session.get(SignInPair, (key, address))
            if pair is not None and pair.locked_until is not None and now < pair.locked_until:
                return pair.locked_until - now
            if pair is not None and pair.turn_at is not None and now < pair.turn_at:
                return pair.turn_at - now
            delay = pressure_delay(await self._email_failures(session, key, since))
            if delay is not None and (pair is None or pair.turn_at is None):
                # A first try under pressure waits its turn, like any other address.
                await self._set_pair(session, key, address, turn_at=now + delay)
                return delay
        return None

    async def failed(self, *, email: str, address: str) -> None:
        now = self.clock()
        key = sign_in_key(email)
        since = now - WINDOW_SECONDS
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                delete(SignInFailure).where(
                    (SignInFailure.email_key == key) | (SignInFailure.address == address),
                    SignInFailure.at <= since,
                )
            )
            session.add(SignInFailure(email_key=key, address=address, at=now))
            await session.flush()
            pair = await session.get(SignInPair, (key, address), with_for_update=True)
            counted_from = max(since, pair.counted_from if pair is not None else 0.0)
            pair_failures = await session.scalar(
                select(func.count()).where(
                    SignInFailure.email_key == key,
                    SignInFailure.address == address,
                    SignInFailure.at > counted_from,
                )
            )
            changes: dict[str, float | None] = {}
            if (pair_failures or 0) >= PAIR_FAILURES:
                # Locked out for the window; the count starts again after it.
                changes.update(locked_until=now + WINDOW_SECONDS, counted_from=now)
            delay = pressure_delay(await self._email_failures(session, key, since))
            if delay is not None:
                changes["turn_at"] = now + delay
            if changes:
                await self._set_pair(session, key, address, **changes)

    async def succeeded(self, *, email: str, address: str) -> None:
        """That address's failures for that email are forgiven (its lock-out, if any, stays)."""
        key = sign_in_key(email)
        async with self.sessionmaker() as session, session.begin():
            await self._set_pair(session, key, address, counted_from=self.clock(), turn_at=None)

    async def _email_failures(self, session: AsyncSession, key: str, since: float) -> int:
        count = await session.scalar(
            select(func.count()).where(SignInFailure.email_key == key, SignInFailure.at > since)
        )
        return int(count or 0)

    async def _set_pair(
        self, session: AsyncSession, key: str, address: str, **changes: float | None
    ) -> None:
        await session.execute(
            insert(SignInPair)
            .values({"email_key": key, "address": address, "counted_from": 0.0, **changes})
            .on_conflict_do_update(index_elements=["email_key", "address"], set_=changes)
        )
