"""Database helpers every service uses: engine, sessions, the outbox and the processed-message log.

Each service has its own declarative base and its own database (``UANET_<SERVICE>_DATABASE_URL``).
Tables that every service has (outbox, processed messages) take the service name as a prefix so the
three can also share one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

from sqlalchemy import DateTime, Index, String, Text, delete, event, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Mapped, declared_attr, mapped_column
from sqlalchemy.types import TypeDecorator

from shared import events
from shared.messaging import Broker

log = logging.getLogger(__name__)
_Result = TypeVar("_Result")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on SQLite too (which keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime")
        # Already UTC (utcnow(), nearly every value): no conversion, several per ledger row.
        return value if value.tzinfo is UTC else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# See make_engine: how long a pooled PostgreSQL connection may sit unused and still be taken
# without a ping.
IDLE_BEFORE_PING = 10.0
_IDLE_SINCE = "uanet_idle_since"


# PostgreSQL connections one process opens at most, unless told (UANET_DATABASE_CONNECTIONS).
DEFAULT_CONNECTIONS = 20
# Of those, kept open while idle; the rest are opened for a burst and closed after it.
KEPT_CONNECTIONS = 10


def make_engine(url: str, *, connections: int = DEFAULT_CONNECTIONS, **kwargs: Any) -> AsyncEngine:
    """An engine for ``url``; on PostgreSQL it opens at most ``connections`` at once (every
    process of every service counts against the server's max_connections)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: an error message must never carry an address or number into a log.
        # One connection per process: every transaction takes SQLite's write lock anyway
        # (BEGIN IMMEDIATE below), so more connections only made the process's own writers
        # wait in SQLite's busy handler, which sleeps (up to 100 ms a try) and is not fair: a
        # writer that commits and begins again, like a fan-out's page loop, starved the outbox
        # relay for seconds. Queued on the pool, they take turns in order. Other processes on
        # the same file still wait through the busy timeout.
        if parsed.database and parsed.database != ":memory:":
            kwargs = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 30, **kwargs}
        engine = create_async_engine(
            url,
            connect_args={"timeout": 30},
            hide_parameters=True,
            # See _rollback_if_open: no ROLLBACK when a connection comes back with nothing open.
            pool_reset_on_return=None,
            **kwargs,
        )

        @event.listens_for(engine.sync_engine.pool, "reset")
        def _rollback_if_open(dbapi_conn: Any, _record: Any, state: Any) -> None:
            # What the pool would do, but only where a transaction is open: each ROLLBACK is a
            # trip to aiosqlite's thread, and a connection used by sqlite_in_one_trip comes back
            # with its work committed.
            if state.asyncio_safe and dbapi_conn.driver_connection.in_transaction:
                dbapi_conn.rollback()

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers go on while one writer commits; NORMAL sync is safe with WAL.
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            # Let SQLAlchemy, not the driver, begin transactions (see _begin_immediate).
            dbapi_conn.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def _begin_immediate(conn: Any) -> None:
            # A deferred transaction that reads, then writes, fails at once (SQLITE_BUSY) when
            # another connection wrote in between, and the busy timeout cannot help. Taking the
            # write lock up front makes writers queue behind the busy timeout instead.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kept = min(KEPT_CONNECTIONS, connections)
    engine = create_async_engine(
        url,
        pool_size=kept,
        max_overflow=connections - kept,
        hide_parameters=True,
        # A plan for each execution, never PostgreSQL's generic one: asyncpg prepares every
        # statement, and after five runs the server may keep one plan made while a table was
        # small (a sequential scan of the deliveries, fine at a thousand rows) until the next
        # ANALYZE. A fan-out grows the ledger by a million rows in minutes, faster than
        # autovacuum analyzes (or never, where it is off): the scans made a million's last
        # tenth go at a third of its first tenth's rate (and an import of 100,000 subscribers
        # take 3 minutes instead of 30 seconds). Planning costs far less than that.
        connect_args={"server_settings": {"plan_cache_mode": "force_custom_plan"}},
        **kwargs,
    )

    # Pre-ping only a connection that sat in the pool a while: SQLAlchemy's pool_pre_ping costs
    # three round trips at every checkout on asyncpg (BEGIN, a query, ROLLBACK), as much as the
    # dispatcher's whole commit of outcomes. One back within IDLE_BEFORE_PING seconds was fine
    # then; if the server dropped it since, the statement fails as a disconnect, SQLAlchemy
    # drops the pool's connections, and the caller's retry gets a new one.
    @event.listens_for(engine.sync_engine, "connect")
    def _fresh(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is not None and time.monotonic() - since < IDLE_BEFORE_PING:
            return
        try:
            dbapi_conn.ping()
        except Exception as error:
            # The pool discards it and checks out another (or connects anew).
            raise DisconnectionError("connection lost while idle in the pool") from error

    return engine


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def is_postgres(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"


async def ping(engine: AsyncEngine) -> bool:
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - readiness answers no, whatever the cause
        return False


# ---- outbox -----------------------------------------------------------------------------------


class OutboxMixin:
    """A message to publish, written in the same transaction as the state change it reports."""

    __service__: str

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return f"{cls.__service__}_outbox"

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return (Index(f"ix_{cls.__service__}_outbox_pending", "published_at", "created_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    routing_key: Mapped[str] = mapped_column(String(100))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # First handed to the broker (by a relay with a compactor): from then on the row may be out
    # under its own id, so it is never folded into another message (that would count it twice).
    relayed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ProcessedMessageMixin:
    """Ids of messages already handled: a redelivered message changes nothing twice."""

    __service__: str

    @declared_attr.directive
    def __tablename__(cls) -> str:
        return f"{cls.__service__}_processed_messages"

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    processed_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


_last_outbox_stamp = datetime.min.replace(tzinfo=UTC)


def _outbox_stamp() -> datetime:
    """``utcnow()``, but strictly increasing within the process: rows written in one loop can
    share a microsecond, and the relay publishes in ``created_at`` order."""
    global _last_outbox_stamp
    now = utcnow()
    if now <= _last_outbox_stamp:
        now = _last_outbox_stamp + timedelta(microseconds=1)
    _last_outbox_stamp = now
    return now


def outbox_values(message: events.Message) -> dict[str, Any]:
    """The columns of the outbox row of ``message`` (for a Core insert of several at once)."""
    return {
        "id": str(message.message_id),
        "routing_key": message.ROUTING_KEY,
        "body": message.model_dump_json(),
        "created_at": _outbox_stamp(),
    }


def outbox_row(model: type[OutboxMixin], message: events.Message) -> OutboxMixin:
    row: OutboxMixin = model(**outbox_values(message))
    return row


async def insert_or_ignore(
    session: AsyncSession, model: type[Any], values: dict[str, Any] | Sequence[dict[str, Any]]
) -> int:
    """Insert unless a unique key already holds the row; returns how many rows were inserted.

    Used where two requests (or two processes, or two queues) may race to record one thing.
    """
    rows = [values] if isinstance(values, dict) else list(values)
    if not rows:
        return 0
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    result = await session.execute(dialect.insert(model).values(rows).on_conflict_do_nothing())
    return int(getattr(result, "rowcount", 0) or 0)


async def already_processed(
    session: AsyncSession, model: type[ProcessedMessageMixin], message_id: uuid.UUID | str
) -> bool:
    """True if handled before; otherwise records it (in the caller's transaction) and says False."""
    key = str(message_id)
    if await session.get(model, key) is not None:
        return True
    session.add(model(message_id=key, processed_at=utcnow()))  # type: ignore[call-arg]
    return False


class OutboxCompactor(Protocol):
    """Folds pending outbox rows of one kind into fewer messages (counts that add up)."""

    routing_keys: tuple[str, ...]

    def merge(
        self, bodies: Sequence[tuple[str, str]]
    ) -> Sequence[tuple[Sequence[str], events.Message]]:
        """Given (row id, body) pairs, return the groups to replace: (row ids, merged message)."""
        ...


# Published outbox rows are deleted this long after their publish: they hold recipients'
# addresses, names and letters, and nothing reads them once the broker has confirmed them (the
# time is only there to look at what just went out).
OUTBOX_RETENTION = timedelta(minutes=15)
PURGE_EVERY_SECONDS = 60.0


class OutboxRelay:
    """Publishes committed outbox rows, oldest first, and marks them published once confirmed.

    ``notify()`` wakes it right after a commit; it also polls, so rows written by another process
    (the CLI, a crashed predecessor) go out too.

    ``min_interval`` spaces the passes, so a ``compactor`` can fold what accumulated meanwhile
    (a fan-out's delivery counts) into one message instead of one per commit. A pass loads at
    most ``max_bytes`` of bodies, so memory stays bounded whatever waits in the outbox.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        model: type[OutboxMixin],
        broker: Broker,
        *,
        poll_interval: float = 0.5,
        batch_size: int = 200,
        max_bytes: int = 4_000_000,
        min_interval: float = 0.0,
        compactor: OutboxCompactor | None = None,
        retention: timedelta = OUTBOX_RETENTION,
        purge_every: float = PURGE_EVERY_SECONDS,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.model = model
        self.broker = broker
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self.min_interval = min_interval
        self.compactor = compactor
        self.retention = retention
        self.purge_every = purge_every
        self._last_purge: float | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # Set by a pass that left rows behind (its row or byte limit): go on at once.
        self._more = False

    def notify(self) -> None:
        self._wake.set()

    def start(self) -> None:
        if self._task is not None and not self._task.done():
            return  # already running: one relay loop per relay
        self._task = asyncio.create_task(self._run(), name=f"outbox-relay-{self.model.__name__}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            # Cleared before the pass: a commit notified during it (or during the spacing
            # below) gets a pass of its own right after, not only at the next poll.
            self._wake.clear()
            try:
                await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - broker or database away: try again shortly
                log.warning("outbox relay failed; retrying", exc_info=True)
                self._more = False
                await asyncio.sleep(1.0)
            if self.min_interval:
                await asyncio.sleep(max(0.0, started + self.min_interval - loop.time()))
            if self._more:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            except TimeoutError:
                pass

    async def relay_once(self) -> int:
        """One pass: compact, publish what is pending (bounded), mark it. Returns rows published.

        Every ``purge_every`` seconds it also deletes rows published more than ``retention``
        ago."""
        loop = asyncio.get_running_loop()
        if self._last_purge is None or loop.time() - self._last_purge >= self.purge_every:
            await self.purge_published()
            self._last_purge = loop.time()
        if self.compactor is not None:
            await self._compact()
        async with self.sessionmaker() as session, session.begin():
            postgres = _is_postgres(session)
            if self.compactor is not None:
                # A row is marked relayed, committed, before it is handed to the broker: a
                # publish whose confirm or mark is lost (a crash, a timeout) may have gone out
                # under the row's id, and folding the row later into a merged message would
                # count it twice. Marked relayed, it goes out again only as itself, and the
                # consumers drop the duplicate by its id.
                rows = await self._pending(session, lock=postgres)
                await self._mark_relayed(session, rows)
            elif postgres:
                # The rows stay locked until they are marked, publishing included: two
                # processes of one service never publish the same row at once (skip locked).
                rows = await self._pending(session, lock=True)
                await self._publish(rows)
                await self._mark(session, rows)
                return len(rows)
            else:
                rows = await self._pending(session, lock=False)
        # Publishing outside the transaction: on SQLite the write lock is not held while the
        # broker confirms (a fan-out's next pages used to queue behind every publish). A crash
        # before the mark, or a second process reading the same rows, publishes a row twice,
        # and consumers drop the duplicate by message id.
        await self._publish(rows)
        if rows:
            async with self.sessionmaker() as session, session.begin():
                await self._mark(session, rows)
        return len(rows)

    async def purge_published(self) -> int:
        """Delete the rows published more than ``retention`` ago; returns how many."""
        model = self.model
        async with self.sessionmaker() as session, session.begin():
            result = await session.execute(
                delete(model)
                .where(model.published_at.is_not(None))
                .where(model.published_at <= utcnow() - self.retention)
                .execution_options(synchronize_session=False)
            )
        count = getattr(result, "rowcount", 0)
        return int(count) if count and count > 0 else 0

    async def _pending(self, session: AsyncSession, *, lock: bool) -> list[tuple[str, str, str]]:
        """(id, routing key, body) of the oldest unpublished rows, within both limits."""
        model = self.model
        query = (
            select(model.id, model.routing_key, func.length(model.body))
            .where(model.published_at.is_(None))
            .order_by(model.created_at, model.id)
            .limit(self.batch_size)
        )
        if lock:
            query = query.with_for_update(skip_locked=True)
        found = (await session.execute(query)).all()
        taken: dict[str, str] = {}
        size = 0
        for row_id, routing_key, length in found:
            if taken and size + (length or 0) > self.max_bytes:
                break
            taken[row_id] = routing_key
            size += length or 0
        self._more = len(found) == self.batch_size or len(taken) < len(found)
        if not taken:
            return []
        bodies = dict(
            (await session.execute(select(model.id, model.body).where(model.id.in_(taken)))).all()
        )
        return [(row_id, key, bodies[row_id]) for row_id, key in taken.items()]

    async def _publish(self, rows: Sequence[tuple[str, str, str]]) -> None:
        # Concurrently, every confirm awaited: a publish that is not confirmed is not done.
        await asyncio.gather(
            *(
                self.broker.publish(routing_key, body.encode(), message_id=row_id)
                for row_id, routing_key, body in rows
            )
        )

    async def _mark_relayed(
        self, session: AsyncSession, rows: Sequence[tuple[str, str, str]]
    ) -> None:
        await self._stamp(session, rows, self.model.relayed_at)

    async def _mark(self, session: AsyncSession, rows: Sequence[tuple[str, str, str]]) -> None:
        await self._stamp(session, rows, self.model.published_at)

    async def _stamp(
        self, session: AsyncSession, rows: Sequence[tuple[str, str, str]], column: Any
    ) -> None:
        """Set ``column`` to now on these rows where it is not set yet (500 ids a statement)."""
        model = self.model
        ids = [row_id for row_id, _, _ in rows]
        now = utcnow()
        for start in range(0, len(ids), 500):
            await session.execute(
                update(model)
                .where(model.id.in_(ids[start : start + 500]), column.is_(None))
                .values({column.key: now})
                .execution_options(synchronize_session=False)
            )

    async def _compact(self) -> None:
        """Replace pending rows the compactor can fold by their merged messages, committed
        before anything is published: a merged message is published exactly like any other
        row, and its parts never are."""
        assert self.compactor is not None
        model = self.model
        async with self.sessionmaker() as session, session.begin():
            query = (
                select(model.id, model.body)
                .where(
                    model.published_at.is_(None),
                    model.relayed_at.is_(None),
                    model.routing_key.in_(self.compactor.routing_keys),
                )
                .order_by(model.created_at, model.id)
                .limit(self.batch_size)
            )
            if _is_postgres(session):
                query = query.with_for_update(skip_locked=True)
            pending = [(row_id, body) for row_id, body in (await session.execute(query)).all()]
            if len(pending) < 2:
                return
            for ids, merged in self.compactor.merge(pending):
                await session.execute(
                    delete(model)
                    .where(
                        model.id.in_(ids), model.published_at.is_(None), model.relayed_at.is_(None)
                    )
                    .execution_options(synchronize_session=False)
                )
                session.add(outbox_row(model, merged))


async def forget_published(
    session: AsyncSession,
    model: type[OutboxMixin],
    identifiers: Sequence[str],
    *,
    pending: bool = False,
) -> None:
    """Erasure: delete the outbox rows (published ones; ``pending`` too if asked) whose body holds
    one of ``identifiers`` (a subscriber id, an address) as a JSON string."""
    for identifier in identifiers:
        query = delete(model).where(model.body.contains(f'"{identifier}"', autoescape=True))
        if not pending:
            query = query.where(model.published_at.is_not(None))
        await session.execute(query.execution_options(synchronize_session=False))


async def refresh_statistics(session: AsyncSession, *tables: str) -> None:
    """Have PostgreSQL's planner look at ``tables`` again, after a bulk load changed them.

    A table loaded in one go (an import of a million subscribers) has no statistics until
    autovacuum analyzes it, a minute later at best and never where it is off, and a fan-out
    published meanwhile is planned blind: the audience's page (``id > after ORDER BY id LIMIT
    500``) estimated 169 rows of a million and became a sequential scan and a sort, 190 ms a
    page instead of 2, the whole million a page at a time. SQLite plans that page by rowid
    with or without statistics, so it is left alone there.
    """
    if not _is_postgres(session):
        return
    for table in tables:
        # Names of our own tables, never input; ANALYZE takes no bound parameters.
        await session.execute(text(f'ANALYZE "{table}"'))


async def sqlite_in_one_trip(
    engine: AsyncEngine, work: Callable[[sqlite3.Connection], _Result]
) -> _Result:
    """Run ``work`` with the SQLite connection itself, whole, on aiosqlite's thread.

    Through SQLAlchemy and aiosqlite every statement, and the BEGIN and COMMIT around them, is a
    trip to that thread and back, and each return waits for a turn of the event loop (about a
    millisecond in a busy fan-out): a transaction of four statements held the process's one
    connection four times as long as its work. ``work`` runs its own BEGIN and COMMIT (the
    connection is in autocommit mode, see make_engine).
    """
    async with engine.connect() as connection:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection  # aiosqlite.Connection
        result: _Result = await driver._execute(work, driver._conn)
        return result


def _is_postgres(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


@asynccontextmanager
async def transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session, session.begin():
        yield session
