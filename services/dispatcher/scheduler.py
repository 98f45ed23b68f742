"""The loop that sends what was held: standard SMS whose subscriber's day has begun, and daily
digests whose 09:00 has come (``schedule`` decides when; this module only releases).

Every dispatcher process runs one. Each ``RELEASE_INTERVAL`` (or when woken) it takes a bounded
page of due ``scheduled`` rows, claims them with a conditional UPDATE (``scheduled`` ->
``sending`` with a token of its own), commits, and sends them through the same path as a batch
(rate limits, lease renewal, outcome recording). Of two dispatchers reading the same page, each
row goes to one; a crash after the claim leaves the row ``sending`` under a lease, and
``ledger.take_back_held`` returns it to ``scheduled`` once the lease has run out.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.dispatcher import digests, ledger
from services.dispatcher.models import CANCELLED, HELD_STATES, SCHEDULED, SENDING, Delivery
from services.dispatcher.schedule import (
    FOLLOW_UP_GAP,
    HELD_ATTEMPTS,
    Clock,
    recipient_of,
    sms_not_before,
    zone_of,
)
from shared.db import utcnow
from shared.events import Recipient

if TYPE_CHECKING:
    from services.dispatcher.handlers import Dispatcher

log = logging.getLogger(__name__)

# How often each dispatcher looks for due rows: a held SMS goes at most this late after 08:00.
RELEASE_INTERVAL = 15.0
# Rows (or digest subscribers) per transaction.
RELEASE_PAGE = 200
# On a graceful stop, how long a round under way may take to finish (its sends stop early).
STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Released:
    """What one round handed to the senders: held SMS, and digests accepted by SMTP."""

    sms: int = 0
    digests: int = 0


@dataclass
class Scheduler:
    """Releases held SMS and daily digests when they are due, in every dispatcher process."""

    dispatcher: Dispatcher
    interval: float = RELEASE_INTERVAL
    page_size: int = RELEASE_PAGE
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    _stopping: bool = False

    @property
    def clock(self) -> Clock:
        return self.dispatcher.clock

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="uanet-dispatcher-scheduler")

    async def stop(self, *, timeout: float = STOP_TIMEOUT) -> None:
        """Let a round under way finish (its sends stop early: ``Dispatcher.stopping``), then
        end; cancelled only if it overruns, since a send cut short would go out twice."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping anyway
                pass
            if not self._task.done():
                try:
                    await self._task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001
                    pass
            self._task = None

    def wake(self) -> None:
        """Look now rather than at the next interval (a test that moved its clock, say)."""
        self._wake.set()

    async def _run(self) -> None:
        while not self._stopping:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next round tries again; nothing is lost
                log.exception("releasing held messages failed")
            try:
                await asyncio.wait_for(self._wake.wait(), self.interval)
            except TimeoutError:
                pass
            self._wake.clear()

    async def run_once(self) -> Released:
        """Release everything due now, page by page; returns what was released."""
        async with self.dispatcher.sessionmaker() as session, session.begin():
            await ledger.take_back_held(session)
        sms = 0
        while not self.dispatcher.stopping:
            handled, sent = await self.release_sms_page()
            sms += sent
            if not handled:
                break
        if self.dispatcher.stopping:
            return Released(sms=sms, digests=0)
        count = await digests.release_digests(self.dispatcher, page_size=self.page_size)
        return Released(sms=sms, digests=count)

    async def release_sms_page(self) -> tuple[int, int]:
        """One page of due ``scheduled`` rows: (rows looked at, rows claimed and handed to the
        senders, whatever their outcome).

        Every row looked at leaves the due set (claimed, pushed to the next morning, or dropped),
        so the caller's loop always ends.
        """
        now = self.clock()
        groups: dict[tuple[str, str], list[tuple[int, Recipient]]] = defaultdict(list)
        claimed: dict[tuple[str, str], str] = {}
        async with self.dispatcher.sessionmaker() as session, session.begin():
            rows = (
                await session.execute(
                    select(
                        Delivery.id,
                        Delivery.action_id,
                        Delivery.message_kind,
                        Delivery.held,
                        Delivery.attempts,
                    )
                    .where(Delivery.status == SCHEDULED, Delivery.not_before <= now)
                    .order_by(Delivery.not_before, Delivery.id)
                    .limit(self.page_size)
                )
            ).all()
            if not rows:
                return 0, 0
            alert_pending = await _alerts_still_held(session, rows)
            due: dict[tuple[str, str], dict[int, Recipient]] = defaultdict(dict)
            last_try = frozenset(row[0] for row in rows if row[4] + 1 >= HELD_ATTEMPTS)
            for row_id, action_id, kind, held, _ in rows:
                recipient = recipient_of(held)
                if recipient is None:
                    await _drop_unreadable(session, row_id)
                    continue
                if (action_id, ledger.key_of(recipient)) in alert_pending:
                    # A follow-up never overtakes its alert (a digest not sent yet, say).
                    await session.execute(
                        update(Delivery)
                        .where(Delivery.id == row_id, Delivery.status == SCHEDULED)
                        .values(not_before=now + FOLLOW_UP_GAP)
                    )
                    continue
                later = sms_not_before(now, zone_of(recipient.timezone))
                if later is not None:
                    # Due while no dispatcher ran (a restart overnight): wait for the next day.
                    await session.execute(
                        update(Delivery)
                        .where(Delivery.id == row_id, Delivery.status == SCHEDULED)
                        .values(not_before=later)
                    )
                    continue
                due[(action_id, kind)][row_id] = recipient
            for group, recipients in due.items():
                token = str(uuid.uuid4())
                # Conditional: of two dispatchers reading the same page, each row goes to one.
                taken = await session.execute(
                    update(Delivery)
                    .where(Delivery.id.in_(sorted(recipients)), Delivery.status == SCHEDULED)
                    .values(
                        status=SENDING,
                        claim_token=token,
                        attempts=Delivery.attempts + 1,
                        updated_at=utcnow(),
                    )
                    .returning(Delivery.id)
                    .execution_options(synchronize_session=False)
                )
                for row_id in taken.scalars():
                    groups[group].append((row_id, recipients[row_id]))
                claimed[group] = token
        # Committed: the claims hold; now send, outside the claiming transaction.
        sent = 0
        for (action_id, kind), items in groups.items():
            if items:
                await self.dispatcher.send_held(
                    action_id=action_id,
                    message_kind=kind,
                    token=claimed[(action_id, kind)],
                    rows=items,
                    last_try=last_try,
                )
                sent += len(items)
        return len(rows), sent


async def _alerts_still_held(
    session: AsyncSession, rows: Sequence[Any]
) -> set[tuple[str, ledger.Key]]:
    """Of this page's follow-up rows, the (action, recipient key) whose alert is still held."""
    wanted: dict[str, list[ledger.Key]] = defaultdict(list)
    for _, action_id, kind, held, _ in rows:
        recipient = recipient_of(held) if kind != "alert" else None
        if recipient is not None:
            wanted[action_id].append(ledger.key_of(recipient))
    pending: set[tuple[str, ledger.Key]] = set()
    for action_id, keys in wanted.items():
        states = await ledger.alert_states(session, action_id=action_id, keys=keys)
        pending.update(
            (action_id, key) for key, (status, _) in states.items() if status in HELD_STATES
        )
    return pending


async def _drop_unreadable(session: AsyncSession, row_id: int) -> None:
    log.error("held delivery unreadable; cancelled", extra={"delivery_id": row_id})
    await session.execute(
        update(Delivery)
        .where(Delivery.id == row_id)
        .values(
            status=CANCELLED,
            held=None,
            not_before=None,
            error_code="unreadable",
            updated_at=utcnow(),
        )
    )
