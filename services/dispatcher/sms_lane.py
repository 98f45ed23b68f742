"""The SMS lane (contract §11): alert SMS before confirmation SMS, and the hourly budget of
confirmation SMS for the whole deployment.

SMS go out at ``UANET_SMS_RATE``: a flood of sign-ups must never push an alert back. Alerts (and
follow-ups, and held SMS) ask the rate for their slot as soon as they are ready, as before; a
confirmation (or another answer to a number) asks only when no alert is waiting for one, nor has
been for ``GRACE`` seconds (the batches of one fan-out come back to back), and only one
confirmation at a time. So confirmations never queue on the rate ahead of alerts: an alert waits
at most for the one confirmation already on its way. With several dispatchers sharing the
deployment's rate (PostgreSQL), a dispatcher with alerts going also marks it in the database
(``SharedAlertMark``, a write a second at most), and confirmations in every dispatcher wait for
that mark too.

Confirmation SMS cost money and are what SMS pumping is after: at most
``UANET_CONFIRMATION_SMS_PER_HOUR`` go out a clock hour, counted in the database for all
dispatchers together (one row per hour, taken with an atomic upsert). The rest wait in the delay
queue for the next hour; none is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.models import ConfirmationSmsHour, SmsAlertMark
from services.dispatcher.throttle import SendRate

log = logging.getLogger(__name__)

# After the last alert SMS took its slot, confirmations keep waiting this long: the next batch of
# the same fan-out is usually already on its way.
GRACE = 2.0
# How often a waiting confirmation looks again.
POLL = 0.1
# Longest a confirmation waits in its handler for the lane; then back to the queue (not holding
# a broker message for the whole of a long SMS fan-out).
PATIENCE = 60.0
# The delay queues a waiting confirmation goes back through (one of dispatcher.messages' own).
LANE_BUSY_DELAY = 30
BUDGET_SPENT_DELAY = 600
# A confirmation SMS still without budget a day after its sign-up is not sent: by then the
# person has moved on (they may sign up again), and a flood's backlog must not spend the budgets
# of the days after it.
BUDGET_MAX_WAIT = timedelta(hours=24)


class SharedAlertMark:
    """The deployment's "alert SMS are going" (PostgreSQL): one row, until when in the
    database's clock, so the machines' clocks need not agree."""

    NAME = "sms"

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], *, hold: float = GRACE
    ) -> None:
        self._sessionmaker = sessionmaker
        self.hold = hold
        self._marked_at = float("-inf")
        self._checked_at = float("-inf")
        self._busy = False
        self._reading = asyncio.Lock()
        self._marking = asyncio.Lock()

    async def mark(self) -> None:
        """Alerts are going from here (written at most once per ``hold / 2`` seconds; the
        alerts that come while it is being written wait for it, so none goes unmarked)."""
        if time.monotonic() - self._marked_at < self.hold / 2:
            return
        async with self._marking:
            started = time.monotonic()
            if started - self._marked_at < self.hold / 2:
                return
            until = func.extract("epoch", func.clock_timestamp()) + self.hold
            statement = (
                pg_insert(SmsAlertMark)
                .values(name=self.NAME, until=until)
                .on_conflict_do_update(index_elements=[SmsAlertMark.name], set_={"until": until})
            )
            try:
                async with self._sessionmaker() as session, session.begin():
                    await session.execute(statement)
            except Exception:  # noqa: BLE001 - alerts never wait on this; the next try writes it
                log.warning("could not mark alert SMS going", exc_info=True)
                return
            self._marked_at = started

    async def busy(self) -> bool:
        """Whether some dispatcher has alerts going (read at most every ``POLL * 3`` s; the
        confirmations asking meanwhile share one read)."""
        async with self._reading:
            if time.monotonic() - self._checked_at < POLL * 3:
                return self._busy
            now = func.extract("epoch", func.clock_timestamp())
            query = select(SmsAlertMark.until > now).where(SmsAlertMark.name == self.NAME)
            try:
                async with self._sessionmaker() as session:
                    self._busy = bool(await session.scalar(query))
            except Exception:  # noqa: BLE001 - unknown: the process's own lane still holds
                log.warning("could not read the alert SMS mark", exc_info=True)
                self._busy = False
            self._checked_at = time.monotonic()
            return self._busy


class SmsLane:
    """One per dispatcher process, in front of its SMS rate (this process's or the
    deployment's)."""

    def __init__(
        self,
        rate: SendRate,
        *,
        grace: float = GRACE,
        patience: float = PATIENCE,
        clock: Callable[[], float] = time.monotonic,
        shared: SharedAlertMark | None = None,
    ) -> None:
        self.rate = rate
        self.shared = shared
        self.grace = grace
        self.patience = patience
        self._clock = clock
        self._alerts_waiting = 0
        self._last_alert = float("-inf")
        # A confirmation is taking its slot: the others wait their turn outside the rate.
        self._confirming = False

    async def alert(self, segments: int) -> None:
        """An alert SMS's slot: booked at once, ahead of every confirmation still waiting."""
        self._alerts_waiting += 1
        try:
            if self.shared is not None:
                await self.shared.mark()
            await self.rate.acquire(segments)
            if self.shared is not None:
                await self.shared.mark()  # still going: the ones behind it keep the mark up
        finally:
            self._alerts_waiting -= 1
            self._last_alert = self._clock()

    def _hold(self) -> float:
        """Seconds a confirmation should wait before trying for a slot; 0: now."""
        if self._alerts_waiting or self._confirming:
            return POLL
        return max(self._last_alert + self.grace - self._clock(), 0.0)

    async def confirmation(self, segments: int) -> bool:
        """Wait until no alert wants the rate, then take a slot; False if that did not happen
        within ``patience`` seconds (nothing is booked then). One confirmation at a time asks
        the rate for its slot, so an alert that comes meanwhile waits for that one at most."""
        deadline = self._clock() + self.patience
        while True:
            hold = self._hold()
            if hold <= 0 and self.shared is not None:
                # Another dispatcher's alerts; then this one's again (they may have come, or
                # another confirmation taken its turn, while the mark was read).
                hold = POLL if await self.shared.busy() else self._hold()
            if hold <= 0:
                self._confirming = True
                try:
                    await self.rate.acquire(segments)
                finally:
                    self._confirming = False
                return True
            left = deadline - self._clock()
            if left <= 0:
                return False
            await asyncio.sleep(min(hold, POLL, left))


def hour_of(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


async def take_confirmation_budget(session: AsyncSession, *, now: datetime, per_hour: int) -> bool:
    """Count one confirmation SMS in this hour's row; False (nothing counted) when the hour
    already had ``per_hour``. ``per_hour`` 0: no budget. In the caller's transaction."""
    if per_hour <= 0:
        return True
    table = ConfirmationSmsHour
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(table)
        .values(hour=hour_of(now), sent=1)
        .on_conflict_do_update(
            index_elements=[table.hour],
            set_={"sent": table.sent + 1},
            where=table.sent < per_hour,
        )
        .returning(table.sent)
    )
    return (await session.execute(statement)).first() is not None
