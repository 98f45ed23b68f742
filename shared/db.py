"""Database helpers every service uses: engine, sessions, the outbox and the processed-message log.

Each service has its own declarative base and its own database (``UANET_<SERVICE>_DATABASE_URL``).
Tables that every service has (outbox, processed messages) take the service name as a prefix so the
three can also share one PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import DateTime, Index, String, Text, event, select, text
from sqlalchemy.engine import make_url
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


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware datetimes on SQLite too (which keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: an error message must never carry an address or number into a log.
        engine = create_async_engine(
            url, connect_args={"timeout": 30}, hide_parameters=True, **kwargs
        )

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
    return create_async_engine(
        url, pool_pre_ping=True, pool_size=10, max_overflow=10, hide_parameters=True, **kwargs
    )


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


def outbox_row(model: type[OutboxMixin], message: events.Message) -> OutboxMixin:
    row: OutboxMixin = model(  # type: ignore[call-arg]  # a mapped subclass takes these
        id=str(message.message_id),
        routing_key=message.ROUTING_KEY,
        body=message.model_dump_json(),
        created_at=_outbox_stamp(),
    )
    return row


async def already_processed(
    session: AsyncSession, model: type[ProcessedMessageMixin], message_id: uuid.UUID | str
) -> bool:
    """True if handled before; otherwise records it (in the caller's transaction) and says False."""
    key = str(message_id)
    if await session.get(model, key) is not None:
        return True
    session.add(model(message_id=key, processed_at=utcnow()))  # type: ignore[call-arg]
    return False


class OutboxRelay:
    """Publishes committed outbox rows, oldest first, and marks them published once confirmed.

    ``notify()`` wakes it right after a commit; it also polls, so rows written by another process
    (the CLI, a crashed predecessor) go out too.
    """

    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        model: type[OutboxMixin],
        broker: Broker,
        *,
        poll_interval: float = 0.5,
        batch_size: int = 200,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.model = model
        self.broker = broker
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

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
        while True:
            try:
                published = await self.relay_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - broker or database away: try again shortly
                log.warning("outbox relay failed; retrying", exc_info=True)
                published = 0
                await asyncio.sleep(1.0)
            if published >= self.batch_size:
                continue
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            except TimeoutError:
                pass

    async def relay_once(self) -> int:
        model = self.model
        async with self.sessionmaker() as session, session.begin():
            query = (
                select(model)
                .where(model.published_at.is_(None))
                .order_by(model.created_at, model.id)
                .limit(self.batch_size)
            )
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                # Two processes of one service never publish the same row at once.
                query = query.with_for_update(skip_locked=True)
            rows = (await session.execute(query)).scalars().all()
            if not rows:
                return 0
            # Publish concurrently, await every confirm, then mark: a crash before the commit
            # republishes, and consumers drop the duplicate by message id.
            await asyncio.gather(
                *(
                    self.broker.publish(row.routing_key, row.body.encode(), message_id=row.id)
                    for row in rows
                )
            )
            now = utcnow()
            for row in rows:
                row.published_at = now
        return len(rows)


@asynccontextmanager
async def transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> AsyncIterator[AsyncSession]:
    async with sessionmaker() as session, session.begin():
        yield session
