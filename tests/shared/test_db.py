"""shared.db on SQLite and PostgreSQL: the outbox relay against the real broker, the
processed-message log, and timezone-aware datetimes."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import Integer, select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import shared.db
from shared import events
from shared.db import (
    OUTBOX_RETENTION as DEFAULT_RETENTION,
)
from shared.db import (
    OutboxMixin,
    OutboxRelay,
    ProcessedMessageMixin,
    UTCDateTime,
    already_processed,
    make_engine,
    make_sessionmaker,
    outbox_row,
    transaction,
)
from shared.messaging import Broker
from tests.shared.conftest import (
    OTHER,
    TEST_QUEUES,
    WORK,
    Recorder,
    TcpProxy,
    erased,
    eventually,
)


class Base(DeclarativeBase):
    pass


class Outbox(OutboxMixin, Base):
    __service__ = "shtest"


class Processed(ProcessedMessageMixin, Base):
    __service__ = "shtest"


class Stamp(Base):
    __tablename__ = "shtest_stamp"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)


@pytest.fixture
async def db(
    database_url: Callable[[str], str],
) -> AsyncIterator[tuple[AsyncEngine, async_sessionmaker[AsyncSession]]]:
    engine = make_engine(database_url("shtest"))
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    try:
        yield engine, make_sessionmaker(engine)
    finally:
        await engine.dispose()


async def _published(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, bool]:
    async with sessionmaker() as session:
        rows = (await session.execute(select(Outbox))).scalars().all()
        return {row.id: row.published_at is not None for row in rows}


async def test_relay_publishes_committed_rows_in_order_and_marks_them(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], broker: Broker
) -> None:
    _, sessionmaker = db
    recorder = Recorder()
    await broker.consume(WORK.name, recorder, [events.SubscriberErased], prefetch=50)

    first = [erased() for _ in range(30)]
    async with transaction(sessionmaker) as session:
        session.add_all([outbox_row(Outbox, e) for e in first])
    # A transaction that rolls back: its rows never exist, so never go out.
    doomed = [erased() for _ in range(3)]
    with pytest.raises(RuntimeError):
        async with transaction(sessionmaker) as session:
            session.add_all([outbox_row(Outbox, e) for e in doomed])
            await session.flush()
            raise RuntimeError("the state change failed")
    second = [erased() for _ in range(5)]
    async with transaction(sessionmaker) as session:
        session.add_all([outbox_row(Outbox, e) for e in second])

    relay = OutboxRelay(sessionmaker, Outbox, broker, batch_size=8)
    relay.start()
    relay.notify()
    try:
        expected = [str(e.message_id) for e in first + second]
        await eventually(lambda: len(recorder.got) >= len(expected))
        assert recorder.ids() == expected
        assert [m for m, _ in recorder.got] == first + second
        published = await _published(sessionmaker)
        assert set(published) == set(expected)
        assert all(published.values())
        # Nothing more goes out: published rows are not published again.
        assert await relay.relay_once() == 0
    finally:
        await relay.stop()
    assert not set(recorder.ids()) & {str(e.message_id) for e in doomed}


async def test_relay_loads_a_bounded_number_of_bytes_per_pass_and_goes_on_at_once(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], broker: Broker
) -> None:
    _, sessionmaker = db
    recorder = Recorder()
    await broker.consume(WORK.name, recorder, [events.SubscriberErased], prefetch=50)
    sent = [erased() for _ in range(7)]
    async with transaction(sessionmaker) as session:
        session.add_all([outbox_row(Outbox, e) for e in sent])
    size = len(sent[0].model_dump_json())
    # Two bodies fit a pass: a fan-out's big batches waiting in the outbox are never all in memory.
    relay = OutboxRelay(sessionmaker, Outbox, broker, max_bytes=2 * size + 1)
    assert [await relay.relay_once() for _ in range(5)] == [2, 2, 2, 1, 0]
    await eventually(lambda: len(recorder.got) == len(sent))
    assert recorder.ids() == [str(e.message_id) for e in sent]
    assert all((await _published(sessionmaker)).values())


class _AudienceCompactor:
    """Folds AudienceCounted of one action (their counts add up), like the dispatcher's
    DeliveryReportCompactor does with delivery counts."""

    routing_keys = (events.AudienceCounted.ROUTING_KEY,)

    def merge(self, bodies: Sequence[tuple[str, str]]) -> list[tuple[list[str], events.Message]]:
        groups: dict[uuid.UUID, list[tuple[str, events.AudienceCounted]]] = {}
        for row_id, body in bodies:
            counted = events.AudienceCounted.model_validate_json(body)
            groups.setdefault(counted.action_id, []).append((row_id, counted))
        return [
            (
                [row_id for row_id, _ in members],
                events.AudienceCounted(
                    action_id=action_id,
                    recipients={"email": sum(c.recipients["email"] for _, c in members)},
                    by_country={},
                ),
            )
            for action_id, members in groups.items()
            if len(members) > 1
        ]


async def test_relay_compacts_pending_rows_into_one_message_each_and_drops_the_parts(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], broker: Broker
) -> None:
    _, sessionmaker = db
    counts, others = Recorder(), Recorder()
    await broker.consume(OTHER.name, counts, [events.AudienceCounted], prefetch=50)
    await broker.consume(WORK.name, others, [events.SubscriberErased], prefetch=50)
    busy, quiet = uuid.uuid4(), uuid.uuid4()
    parts = [
        events.AudienceCounted(action_id=action, recipients={"email": n}, by_country={})
        for action, n in [(busy, 1), (busy, 2), (quiet, 7), (busy, 3), (busy, 4)]
    ]
    gone = erased()
    async with transaction(sessionmaker) as session:
        session.add_all([outbox_row(Outbox, m) for m in [*parts, gone]])
    relay = OutboxRelay(sessionmaker, Outbox, broker, compactor=_AudienceCompactor())
    assert await relay.relay_once() == 3  # busy's four parts as one, quiet's, the erasure
    await eventually(lambda: len(counts.got) == 2 and len(others.got) == 1)
    got = {m.action_id: m for m, _ in counts.got if isinstance(m, events.AudienceCounted)}
    assert {a: m.recipients["email"] for a, m in got.items()} == {busy: 10, quiet: 7}
    # quiet's lone row went out as itself; busy's parts never go out, and are not kept.
    assert got[quiet].message_id == parts[2].message_id
    published = await _published(sessionmaker)
    assert not {str(p.message_id) for p in parts if p.action_id == busy} & set(published)
    assert len(published) == 3 and all(published.values())
    assert await relay.relay_once() == 0


async def test_a_row_handed_to_the_broker_is_never_folded_into_a_merged_message(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
    broker: Broker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A publish that went out but whose mark was lost (a crash right after the confirm, the
    database away) leaves the row pending: the next pass must send it again as itself (the
    consumer drops it by its id), never inside a merged message under a new id."""
    _, sessionmaker = db
    counts = Recorder()
    await broker.consume(OTHER.name, counts, [events.AudienceCounted], prefetch=50)
    action = uuid.uuid4()

    def counted(n: int) -> events.AudienceCounted:
        return events.AudienceCounted(action_id=action, recipients={"email": n}, by_country={})

    first = counted(1)
    async with transaction(sessionmaker) as session:
        session.add(outbox_row(Outbox, first))
    relay = OutboxRelay(sessionmaker, Outbox, broker, compactor=_AudienceCompactor())

    async def lost_mark(*_: object) -> None:
        raise ConnectionError("the database went away after the confirm")

    with monkeypatch.context() as patched:
        patched.setattr(relay, "_mark", lost_mark)
        with pytest.raises(ConnectionError):
            await relay.relay_once()
    await eventually(lambda: len(counts.got) == 1)
    assert not any((await _published(sessionmaker)).values())

    async with transaction(sessionmaker) as session:
        session.add_all([outbox_row(Outbox, counted(2)), outbox_row(Outbox, counted(3))])
    assert await relay.relay_once() == 2  # the first again, as itself; the two new ones merged
    await eventually(lambda: len(counts.got) == 3)
    # What a consumer counts, dropping duplicates by message id as every consumer does.
    by_id = {m.message_id: m for m, _ in counts.got if isinstance(m, events.AudienceCounted)}
    assert first.message_id in by_id
    assert sum(m.recipients["email"] for m in by_id.values()) == 6
    assert all((await _published(sessionmaker)).values())


async def test_relay_keeps_rows_while_the_broker_is_away_and_publishes_them_later(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], broker: Broker, amqp_url: str
) -> None:
    _, sessionmaker = db
    recorder = Recorder()
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])

    proxy = TcpProxy()
    await proxy.start()
    away = Broker(
        proxy.url(amqp_url, reconnect_interval="0.2"), name="uanet-test-relay", queues=TEST_QUEUES
    )
    await away.connect()
    relay = OutboxRelay(sessionmaker, Outbox, away, poll_interval=0.1)
    try:
        await proxy.stop()  # the broker is unreachable from here on
        await eventually(lambda: not away.connected, timeout=10)
        pending = [erased() for _ in range(4)]
        async with transaction(sessionmaker) as session:
            session.add_all([outbox_row(Outbox, e) for e in pending])
        # A relay pass while the broker is away fails and leaves every row pending.
        with pytest.raises(Exception):  # noqa: B017 - whatever aio-pika raises
            await asyncio.wait_for(relay.relay_once(), timeout=15)
        assert not any((await _published(sessionmaker)).values())

        relay.start()
        await proxy.start()  # the broker is back (same port)
        await eventually(lambda: len(recorder.got) >= len(pending), timeout=30)
        assert recorder.ids() == [str(e.message_id) for e in pending]
        await eventually(lambda: _all_published(sessionmaker), timeout=10)
    finally:
        await relay.stop()
        await away.close()
        await proxy.stop()


async def _all_published(sessionmaker: async_sessionmaker[AsyncSession]) -> bool:
    return all((await _published(sessionmaker)).values())


async def test_already_processed_says_true_the_second_time(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]],
) -> None:
    _, sessionmaker = db
    event = erased()
    async with transaction(sessionmaker) as session:
        assert await already_processed(session, Processed, event.message_id) is False
    async with transaction(sessionmaker) as session:
        assert await already_processed(session, Processed, event.message_id) is True
        assert await already_processed(session, Processed, str(event.message_id)) is True
    # A handler that failed (rolled back) did not mark the message as processed.
    other = erased()
    with pytest.raises(RuntimeError):
        async with transaction(sessionmaker) as session:
            assert await already_processed(session, Processed, other.message_id) is False
            raise RuntimeError("handler failed")
    async with transaction(sessionmaker) as session:
        assert await already_processed(session, Processed, other.message_id) is False


async def test_utc_datetime_round_trips_aware_datetimes_on_sqlite(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite+aiosqlite:///{tmp_path / 'stamp.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    sessionmaker = make_sessionmaker(engine)
    try:
        utc = datetime(2024, 3, 31, 0, 30, 15, 123456, tzinfo=UTC)
        kolkata = datetime(2024, 3, 31, 6, 0, 15, 123456, tzinfo=timezone(timedelta(hours=5.5)))
        async with transaction(sessionmaker) as session:
            session.add_all([Stamp(id=1, at=utc), Stamp(id=2, at=kolkata)])
        async with sessionmaker() as session:
            one, two = (await session.execute(select(Stamp).order_by(Stamp.id))).scalars().all()
        assert one.at == utc and one.at.tzinfo is not None
        assert one.at.utcoffset() == timedelta(0)
        assert two.at == kolkata == utc  # the same instant, given back in UTC
        assert two.at.utcoffset() == timedelta(0)
        # Ordering and comparison in SQL work across offsets (all stored as UTC).
        async with sessionmaker() as session:
            later = utc + timedelta(microseconds=1)
            found = (await session.execute(select(Stamp.id).where(Stamp.at < later))).all()
        assert sorted(r[0] for r in found) == [1, 2]
        with pytest.raises(StatementError, match="naive"):
            async with transaction(sessionmaker) as session:
                session.add(Stamp(id=3, at=datetime(2024, 1, 1)))
    finally:
        await engine.dispose()


async def test_a_pooled_postgres_connection_dropped_while_idle_is_replaced(
    pg_database: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ping for a connection just returned to the pool; one idle longer is pinged, and
    replaced when the server dropped it meanwhile."""
    url = pg_database()
    engine, admin = make_engine(url), make_engine(url)
    try:
        async with engine.connect() as conn:
            first = await conn.scalar(text("SELECT pg_backend_pid()"))
        async with engine.connect() as conn:  # just back: taken as it is
            assert await conn.scalar(text("SELECT pg_backend_pid()")) == first
        async with admin.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
        monkeypatch.setattr(shared.db, "IDLE_BEFORE_PING", 0.0)
        async with engine.connect() as conn:
            again = await conn.scalar(text("SELECT pg_backend_pid()"))
        assert again is not None and again != first
    finally:
        await engine.dispose()
        await admin.dispose()


async def test_a_process_opens_at_most_its_share_of_postgres_connections(
    pg_database: Callable[[], str],
) -> None:
    """UANET_DATABASE_CONNECTIONS bounds a process's pool: a burst past it waits for a
    connection instead of opening more (the server's max_connections is shared by every
    process of every service)."""
    url = pg_database()
    engine = make_engine(url, connections=3)
    try:
        backends: set[int] = set()

        async def hold() -> None:
            async with engine.connect() as conn:
                backends.add(await conn.scalar(text("SELECT pg_backend_pid()")))
                await asyncio.sleep(0.2)

        await asyncio.gather(*(hold() for _ in range(8)))
        assert len(backends) == 3
    finally:
        await engine.dispose()


async def test_published_rows_are_deleted_after_the_retention(
    db: tuple[AsyncEngine, async_sessionmaker[AsyncSession]], broker: Broker
) -> None:
    _, sessionmaker = db
    recorder = Recorder()
    await broker.consume(WORK.name, recorder, [events.SubscriberErased], prefetch=50)
    sent = [erased() for _ in range(3)]
    async with transaction(sessionmaker) as session:
        session.add_all([outbox_row(Outbox, e) for e in sent])
    keeping = OutboxRelay(sessionmaker, Outbox, broker, purge_every=0)
    assert await keeping.relay_once() == 3
    assert await keeping.relay_once() == 0
    # Within the retention the rows stay (published), to look at what just went out.
    assert set(await _published(sessionmaker)) == {str(e.message_id) for e in sent}
    pending = erased()
    async with transaction(sessionmaker) as session:
        session.add(outbox_row(Outbox, pending))

    # Past it they go, on the relay's next purge; a row not yet published stays.
    purging = OutboxRelay(sessionmaker, Outbox, broker, retention=timedelta(0), purge_every=0)
    assert await purging.purge_published() == 3
    assert await _published(sessionmaker) == {str(pending.message_id): False}
    assert await purging.relay_once() == 1
    assert await purging.relay_once() == 0
    assert await _published(sessionmaker) == {}
    assert DEFAULT_RETENTION <= timedelta(hours=1)


async def test_postgres_plans_every_execution_of_a_statement(
    pg_database: Callable[[], str],
) -> None:
    """asyncpg prepares every statement, and PostgreSQL may keep a generic plan made while a
    table was small (a sequential scan) until the next ANALYZE: the ledger grows by a million
    rows in minutes. Measured (bench/fanout.py -n 300000 --postgres): with generic plans, 9,403
    scans of the ledger read 1.3 billion rows and the last 100,000 went at half the first's
    rate; planned every time, 140 scans, and the last 100,000 as fast as the first."""
    engine = make_engine(pg_database())
    try:
        async with engine.connect() as conn:
            assert await conn.scalar(text("SHOW plan_cache_mode")) == "force_custom_plan"
    finally:
        await engine.dispose()
