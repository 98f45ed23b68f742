"""Outcomes committed together (``group_commit``), on SQLite in one trip to aiosqlite's thread
(``ledger_writes.commit_outcomes``), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher import ledger
from services.dispatcher.group_commit import OutcomeCommits
from services.dispatcher.ledger_writes import commit_outcomes
from services.dispatcher.models import Delivery, Outbox
from shared.db import sqlite_in_one_trip
from shared.events import DeliveriesReported

from .conftest import outcome, recipient

Maker = async_sessionmaker[AsyncSession]


async def claimed(
    sessionmaker: Maker, count: int, now: datetime | None = None
) -> tuple[str, list[int]]:
    action_id = str(uuid.uuid4())
    async with sessionmaker() as session, session.begin():
        claim = await ledger.claim(
            session,
            action_id=action_id,
            message_kind="alert",
            recipients=[recipient() for _ in range(count)],
            now=now,
        )
    return action_id, sorted(claim.mine.values())


def report(action_id: str, sent: int) -> DeliveriesReported:
    return DeliveriesReported(
        action_id=action_id, message_kind="alert", channel="email", sent=sent, failed=0
    )


async def ledger_rows(sessionmaker: Maker, ids: list[int]) -> list[tuple[Any, ...]]:
    async with sessionmaker() as session:
        found = await session.scalars(select(Delivery).where(Delivery.id.in_(ids)))
        return sorted(
            (
                d.id,
                d.status,
                d.claim_token,
                d.updated_at,
                d.error_code,
                d.segments,
                d.provider_message_id,
                d.sent_at,
                d.not_before,
                d.held,
            )
            for d in found
        )


async def test_a_commit_writes_each_column_as_the_ledger_reads_it(sessionmaker: Maker) -> None:
    """Stamps, numbers, codes and a held recipient's JSON come back through the ORM as they
    went in (on SQLite the values are bound by hand, for one trip), with the reports."""
    now = datetime.now(UTC).replace(microsecond=123456)
    later = now + timedelta(minutes=5)
    held = recipient("sms").model_dump(mode="json")
    action_id, (sent, failed, retry, scheduled) = await claimed(sessionmaker, 4, now)
    rows = [
        outcome(sent, "sent", now, provider_message_id="SM1", segments=2),
        outcome(failed, "failed", now, error_code="smtp:550"),
        outcome(retry, "retry", now, not_before=now),
        outcome(scheduled, "scheduled", now, not_before=later, held=held),
    ]

    await commit_outcomes(sessionmaker, rows, [report(action_id, 1)])

    expected = sorted(
        (
            row["row_id"],
            row["status"],
            None,
            now,
            row["error_code"],
            row["segments"],
            row["provider_message_id"],
            row["sent_at"],
            row["not_before"],
            row["held"],
        )
        for row in rows
    )
    assert await ledger_rows(sessionmaker, [sent, failed, retry, scheduled]) == expected
    async with sessionmaker() as session:
        bodies = [json.loads(b) for b in await session.scalars(select(Outbox.body))]
        # As stored, not only as read: SQLite compares stamps as text (a lease's age, a retry's
        # due time), so a stamp bound by hand must be the very text SQLAlchemy writes (the
        # claim wrote created_at with the same ``now``).
        stored = (
            await session.execute(
                text("SELECT created_at, updated_at FROM dispatch_deliveries WHERE id = :id"),
                {"id": sent},
            )
        ).one()
        report_stamp = await session.scalar(text("SELECT created_at FROM dispatcher_outbox"))
    assert [(b["action_id"], b["sent"]) for b in bodies] == [(action_id, 1)]
    assert stored[0] == stored[1]
    if isinstance(stored[0], str):
        assert isinstance(report_stamp, str) and len(report_stamp) == len(stored[0])


async def test_outcomes_handed_in_during_a_commit_go_together_in_the_next(
    sessionmaker: Maker,
) -> None:
    commits: list[int] = []
    outcomes = OutcomeCommits(sessionmaker, lambda: commits.append(1))
    action_id, ids = await claimed(sessionmaker, 30)
    now = datetime.now(UTC)
    # Ten handlings hand in three outcomes each, at once: one commit takes them all.
    await asyncio.gather(
        *(
            outcomes.commit(
                [outcome(i, "sent", now) for i in ids[n : n + 3]], [report(action_id, 3)]
            )
            for n in range(0, 30, 3)
        )
    )
    assert len(commits) == 1
    # One more while a commit runs waits for it, then goes in the next.
    first = asyncio.create_task(outcomes.commit([], [report(action_id, 0)]))
    await asyncio.sleep(0)
    await asyncio.gather(first, outcomes.commit([], [report(action_id, 0)]))
    assert len(commits) == 3
    async with sessionmaker() as session:
        states = set(await session.scalars(select(Delivery.status)))
        reports = len(list(await session.scalars(select(Outbox.id))))
    assert states == {"sent"} and reports == 12


async def test_one_handlings_bad_outcome_fails_only_that_handling(sessionmaker: Maker) -> None:
    outcomes = OutcomeCommits(sessionmaker, lambda: None)
    action_id, ids = await claimed(sessionmaker, 3)
    now = datetime.now(UTC)
    broken = outcome(ids[1], "sent", now)
    del broken["status"]  # not an outcome: the commit cannot be built
    results = await asyncio.gather(
        outcomes.commit([outcome(ids[0], "sent", now)], []),
        outcomes.commit([broken], []),
        outcomes.commit([outcome(ids[2], "failed", now)], []),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], KeyError)
    async with sessionmaker() as session:
        states = dict((await session.execute(select(Delivery.id, Delivery.status))).all())
    assert states == {ids[0]: "sent", ids[1]: "sending", ids[2]: "failed"}


async def test_waiters_are_not_left_waiting_when_the_committer_is_cancelled(
    sessionmaker: Maker,
) -> None:
    outcomes = OutcomeCommits(sessionmaker, lambda: None)
    _, ids = await claimed(sessionmaker, 2)
    now = datetime.now(UTC)
    first = asyncio.create_task(outcomes.commit([outcome(ids[0], "sent", now)], []))
    second = asyncio.create_task(outcomes.commit([outcome(ids[1], "sent", now)], []))
    await asyncio.sleep(0)
    assert outcomes._writer is not None
    outcomes._writer.cancel()
    done, pending = await asyncio.wait({first, second}, timeout=5)
    assert not pending and all(t.cancelled() or t.exception() is None for t in done)


async def test_one_trip_runs_on_the_connections_thread_and_leaves_nothing_open(
    sessionmaker: Maker,
) -> None:
    engine = sessionmaker.kw["bind"]
    if engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL's record is one statement already")
    threads: list[int] = []

    def begin_and_forget(connection: sqlite3.Connection) -> None:
        threads.append(threading.get_ident())
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("UPDATE dispatch_deliveries SET attempts = attempts")

    await sqlite_in_one_trip(engine, begin_and_forget)
    assert threads and threads[0] != threading.get_ident()
    # Returned with a transaction open (a bug in ``work``): the pool rolled it back, and the
    # next transaction can take the write lock.
    async with sessionmaker() as session, session.begin():
        await session.execute(text("UPDATE dispatch_deliveries SET attempts = attempts"))
