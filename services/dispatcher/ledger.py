"""The delivery ledger: claim before sending, record after, so nothing goes out twice.

A row is unique on (action, message kind, subscriber, channel). ``claim`` turns the recipients of a
batch into rows this handling owns: new ones, ones left ``retry`` by a temporary failure, and
``sending`` ones whose lease ran out (the process handling them died). Rows another handling
holds right now are reported as busy, so the caller retries the batch later instead of sending.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.base import Executable

from services.dispatcher.ledger_writes import CLAIM_PG, CLAIM_SQLITE, KEY, deliveries, is_postgres
from services.dispatcher.ledger_writes import commit_outcomes as commit_outcomes
from services.dispatcher.models import (
    CANCELLED,
    HELD_STATES,
    RETRY,
    SCHEDULED,
    SENDING,
    Delivery,
    Outbox,
)
from shared.db import forget_published, utcnow
from shared.events import Recipient

# How long a ``sending`` claim is honoured without renewal. The handling that holds it renews it
# every ``LEASE_RENEWAL`` while it sends, so a dead process's rows are taken back within seconds
# of a restart, while a live one (even on a slow SMTP server) keeps them.
CLAIM_LEASE = timedelta(seconds=6)
LEASE_RENEWAL = 1.0
# A transactional message is one send with no renewal: its lease covers the SMTP timeout.
TRANSACTIONAL_LEASE = timedelta(minutes=2)
# A batch or letter handed back on a graceful stop comes back after this many seconds (its
# queue's shortest delay), to whichever dispatcher takes it.
STOPPING_DELAY = 1
# Bound the IN (...) lists (SQLite's parameter limit; smaller plans on PostgreSQL).
_IN_CHUNK = 500

Key = tuple[str, str]  # (subscriber_id, channel)


def key_of(recipient: Recipient) -> Key:
    return (str(recipient.subscriber_id), recipient.channel)


def unique_recipients(recipients: Iterable[Recipient]) -> list[Recipient]:
    """One recipient per (subscriber, channel), first one wins."""
    seen: dict[Key, Recipient] = {}
    for recipient in recipients:
        seen.setdefault(key_of(recipient), recipient)
    return list(seen.values())


@dataclass
class Claim:
    token: str
    # Rows this handling now owns: key -> ledger id.
    mine: dict[Key, int] = field(default_factory=dict)
    # Rows another handling holds (lease not expired): retry the batch later for them.
    busy: int = 0
    # Rows already final (sent, delivered, failed, cancelled): nothing to do.
    done: int = 0


def _insert(session: AsyncSession) -> Any:
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(Delivery)


def _insert_new(session: AsyncSession) -> Any:
    """INSERT of one ledger row that leaves an existing one alone (Core, for executemany)."""
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    return module.insert(deliveries).on_conflict_do_nothing(index_elements=KEY)


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


async def claim(
    session: AsyncSession,
    *,
    action_id: str,
    message_kind: str,
    recipients: Sequence[Recipient],
    now: datetime | None = None,
) -> Claim:
    """Take ownership of the rows to send now. The caller commits before sending anything."""
    now = now or utcnow()
    token = str(uuid.uuid4())
    result = Claim(token)
    if not recipients:
        return result  # everyone held (quiet hours, digest): nothing to claim
    wanted = {key_of(r) for r in recipients}
    keys = sorted(wanted)  # key order, like every other writer: no lock-order deadlock
    common: dict[str, Any] = {
        "action_id": action_id,
        "message_kind": message_kind,
        "token": token,
        "now": now,
        "stale": now - CLAIM_LEASE,
    }
    statement: Executable = CLAIM_PG
    if is_postgres(session):
        common["subscriber_ids"] = [sid for sid, _ in keys]
        common["channels"] = [channel for _, channel in keys]
    else:
        statement = CLAIM_SQLITE
        common["keys"] = json.dumps(keys)
    # New rows are inserted, a ``retry`` or abandoned ``sending`` one taken back, in one
    # statement that names the rows this handling now owns.
    taken = await session.execute(statement, common)
    result.mine = {(sid, channel): row_id for row_id, sid, channel in taken.all()}
    if len(result.mine) < len(wanted):
        # A redelivered batch or one handled twice at once: what is the rest doing?
        await _count_others(session, action_id, message_kind, wanted, result)
    return result


async def _count_others(
    session: AsyncSession, action_id: str, message_kind: str, wanted: set[Key], claim: Claim
) -> None:
    """Sort the ``wanted`` rows into the claim's own, those held elsewhere and those done."""
    for ids in _chunks(sorted({k[0] for k in wanted})):
        found = await session.execute(
            select(
                Delivery.id,
                Delivery.subscriber_id,
                Delivery.channel,
                Delivery.status,
                Delivery.claim_token,
            ).where(
                Delivery.action_id == action_id,
                Delivery.message_kind == message_kind,
                Delivery.subscriber_id.in_(ids),
            )
        )
        for row_id, sid, channel, status, row_token in found.all():
            key = (sid, channel)
            if key not in wanted:
                continue
            if row_token == claim.token and status == SENDING:
                claim.mine[key] = row_id
            elif status == SENDING:
                claim.busy += 1
            else:
                claim.done += 1


@dataclass(frozen=True)
class Hold:
    """A recipient whose message waits: ``SCHEDULED`` (quiet hours) or ``DIGEST``, until ``due``."""

    recipient: Recipient
    state: str
    due: datetime


async def hold(
    session: AsyncSession,
    *,
    action_id: str,
    message_kind: str,
    holds: Sequence[Hold],
    now: datetime | None = None,
) -> int:
    """Record these recipients as held (the scheduler sends them when due). Like ``claim``: a row
    that is final or already held stays as it is, one left ``retry`` or abandoned ``sending`` is
    held instead. Returns how many another handling holds right now (retry the batch for them)."""
    now = now or utcnow()
    busy = 0
    wanted = {key_of(h.recipient): h for h in holds}

    def values(item: Hold) -> dict[str, Any]:
        return {
            "status": item.state,
            "not_before": item.due,
            "held": item.recipient.model_dump(mode="json"),
            "claim_token": None,
            "updated_at": now,
        }

    new_rows = [
        {
            "action_id": action_id,
            "message_kind": message_kind,
            "subscriber_id": sid,
            "channel": channel,
            "attempts": 0,
            "created_at": now,
            **values(item),
        }
        for (sid, channel), item in sorted(wanted.items())
    ]
    await session.execute(_insert_new(session), new_rows)
    for ids in _chunks(sorted({k[0] for k in wanted})):
        found = await session.execute(
            select(
                Delivery.id,
                Delivery.subscriber_id,
                Delivery.channel,
                Delivery.status,
                Delivery.updated_at,
            ).where(
                Delivery.action_id == action_id,
                Delivery.message_kind == message_kind,
                Delivery.subscriber_id.in_(ids),
            )
        )
        for row_id, sid, channel, status, updated_at in found.all():
            item = wanted.get((sid, channel))
            if item is None:
                continue
            abandoned = status == SENDING and updated_at < now - CLAIM_LEASE
            if status == RETRY or abandoned:
                # Rare (a batch first handled in the day, retried after 21:00): one row at a time.
                await session.execute(
                    update(Delivery)
                    .where(Delivery.id == row_id, Delivery.status == status)
                    .values(values(item))
                    .execution_options(synchronize_session=False)
                )
            elif status == SENDING:
                busy += 1
    return busy


async def alert_states(
    session: AsyncSession, *, action_id: str, keys: Iterable[Key]
) -> dict[Key, tuple[str, datetime | None]]:
    """The state of the alert row behind each (subscriber, channel) of a follow-up: its status
    and, if held, when it is due. Keys with no alert row are left out."""
    wanted = set(keys)
    states: dict[Key, tuple[str, datetime | None]] = {}
    for ids in _chunks(sorted({k[0] for k in wanted})):
        found = await session.execute(
            select(
                Delivery.subscriber_id, Delivery.channel, Delivery.status, Delivery.not_before
            ).where(
                Delivery.action_id == action_id,
                Delivery.message_kind == "alert",
                Delivery.subscriber_id.in_(ids),
            )
        )
        for sid, channel, status, not_before in found.all():
            if (sid, channel) in wanted:
                states[(sid, channel)] = (status, not_before)
    return states


async def take_back_held(session: AsyncSession, *, now: datetime | None = None) -> int:
    """Released held SMS whose sender died (lease run out): ``scheduled`` again, due at once
    (the scheduler checks the quiet hours again before sending)."""
    now = now or utcnow()
    outcome = await session.execute(
        update(Delivery)
        .where(
            Delivery.not_before.is_not(None),  # held rows keep their due time while sent
            Delivery.status == SENDING,
            Delivery.held.is_not(None),
            Delivery.digest_id.is_(None),
            Delivery.updated_at < now - CLAIM_LEASE,
        )
        .values(status=SCHEDULED, claim_token=None, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return _rowcount(outcome)


async def renew(
    session: AsyncSession, *, token: str, ids: Sequence[int], now: datetime | None = None
) -> int:
    """Extend the lease of the rows this handling still holds (``sending`` with its token)."""
    now = now or utcnow()
    renewed = 0
    for chunk in _chunks(ids):
        outcome = await session.execute(
            update(Delivery)
            .where(
                Delivery.id.in_(chunk), Delivery.status == SENDING, Delivery.claim_token == token
            )
            .values(updated_at=now)
            .execution_options(synchronize_session=False)
        )
        renewed += _rowcount(outcome)
    return renewed


async def release_claimed(session: AsyncSession, *, token: str) -> int:
    """A graceful stop: rows this handling claimed but never sent go back as they were
    claimed from (held rows to the scheduler, the others to ``retry``), for the next process
    to take at once rather than after the lease. Not an attempt: the count is given back."""
    released = 0
    now = utcnow()
    for is_held, status in ((True, SCHEDULED), (False, RETRY)):
        # A held row keeps its due time; a retry row waits from now (see models.Delivery).
        waiting = {} if is_held else {"not_before": func.coalesce(Delivery.not_before, now)}
        outcome = await session.execute(
            update(Delivery)
            .where(
                Delivery.claim_token == token,
                Delivery.status == SENDING,
                Delivery.held.is_not(None) if is_held else Delivery.held.is_(None),
            )
            .values(
                status=status,
                claim_token=None,
                attempts=Delivery.attempts - 1,
                updated_at=now,
                **waiting,
            )
            .execution_options(synchronize_session=False)
        )
        released += _rowcount(outcome)
    return released


async def cancel_claimed(session: AsyncSession, *, token: str) -> list[str]:
    """The action closed mid-batch: rows this handling claimed but did not send are cancelled.
    Returns the channel of each."""
    outcome = await session.execute(
        update(Delivery)
        .where(Delivery.claim_token == token, Delivery.status == SENDING)
        .values(status=CANCELLED, claim_token=None, held=None, not_before=None, updated_at=utcnow())
        .returning(Delivery.channel)
        .execution_options(synchronize_session=False)
    )
    return list(outcome.scalars())


async def cancel(
    session: AsyncSession,
    *,
    action_id: str,
    message_kind: str,
    recipients: Sequence[Recipient],
    now: datetime | None = None,
) -> int:
    """The action closed: record these recipients as cancelled unless already final or in flight."""
    now = now or utcnow()
    wanted = sorted({key_of(r) for r in recipients})
    for rows in _chunks(wanted, 200):
        await session.execute(
            _insert(session)
            .values(
                [
                    {
                        "action_id": action_id,
                        "message_kind": message_kind,
                        "subscriber_id": sid,
                        "channel": channel,
                        "status": CANCELLED,
                        "attempts": 0,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for sid, channel in rows
                ]
            )
            .on_conflict_do_nothing(index_elements=KEY)
        )
    cancelled = 0
    for ids in _chunks(sorted({k[0] for k in wanted})):
        outcome = await session.execute(
            update(Delivery)
            .where(
                Delivery.action_id == action_id,
                Delivery.message_kind == message_kind,
                Delivery.subscriber_id.in_(ids),
                Delivery.status.in_((RETRY, *HELD_STATES)),
            )
            .values(status=CANCELLED, claim_token=None, held=None, not_before=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        cancelled += _rowcount(outcome)
    return cancelled


async def cancel_pending_for_action(session: AsyncSession, action_id: str) -> int:
    """On close: alerts and follow-ups waiting for a retry, held for the subscriber's morning or
    kept for a digest not yet sent will not go out."""
    outcome = await session.execute(
        update(Delivery)
        .where(
            # Every row that waits has a due time: the index of waiting rows, not the action's
            # whole fan-out.
            Delivery.not_before.is_not(None),
            Delivery.action_id == action_id,
            Delivery.message_kind != "closed",
            Delivery.status.in_((RETRY, *HELD_STATES)),
        )
        .values(status=CANCELLED, claim_token=None, held=None, not_before=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(outcome)


async def forget_subscriber(
    session: AsyncSession, subscriber_id: str, addresses: Sequence[str] = ()
) -> None:
    """Erasure: nothing more goes to them, and no address of theirs stays in the outbox or on
    a held row."""
    await session.execute(
        update(Delivery)
        .where(
            Delivery.subscriber_id == subscriber_id,
            Delivery.status.in_((RETRY, *HELD_STATES)),
        )
        .values(status=CANCELLED, claim_token=None, held=None, not_before=None, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Delivery)
        .where(Delivery.subscriber_id == subscriber_id, Delivery.held.is_not(None))
        .values(held=None)
        .execution_options(synchronize_session=False)
    )
    # Suppression events are the only rows that ever held an address: by subscriber id, and by
    # address for those sent without one (a confirmation that bounced), published or not.
    await forget_published(session, Outbox, [subscriber_id, *addresses], pending=True)


def _rowcount(result: Any) -> int:
    count = getattr(result, "rowcount", 0)
    return int(count) if count and count > 0 else 0
