"""shared.runtime.ServiceRuntime: database, broker, outbox relay and consumers together."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

from shared import events
from shared.db import outbox_row, transaction
from shared.runtime import ServiceRuntime, Subscription
from shared.settings import Settings
from tests.shared.conftest import Recorder, eventually
from tests.shared.test_db import Base, Outbox


async def test_runtime_relays_the_outbox_to_its_consumers_and_reports_ready(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(publisher_database_url=f"sqlite+aiosqlite:///{tmp_path / 'p.db'}")
    runtime = ServiceRuntime("publisher", settings, Outbox)
    async with runtime.engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    recorder = Recorder()
    assert (await runtime.ready())["broker"] is False  # not started yet
    await runtime.start(
        [Subscription("publisher.tally", recorder, [events.DeliveriesReported], prefetch=5)]
    )
    try:
        await runtime.wait_started(timeout=30)
        assert await runtime.ready() == {"database": True, "broker": True}

        event = events.DeliveriesReported(
            action_id=uuid.uuid4(), message_kind="alert", channel="email", sent=3
        )
        async with transaction(runtime.sessionmaker) as session:
            session.add(outbox_row(Outbox, event))
        runtime.relay.notify()
        await eventually(lambda: recorder.got)
        assert recorder.got[0][0] == event
    finally:
        await runtime.stop()
    assert (await runtime.ready())["broker"] is False


def test_a_service_process_pools_as_many_postgres_connections_as_it_is_told(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        publisher_database_url="postgresql+asyncpg://postgres@127.0.0.1:5432/test",
        database_connections=6,
    )
    runtime = ServiceRuntime("publisher", settings, Outbox)
    pool = runtime.engine.pool
    assert pool.size() + pool._max_overflow == 6  # type: ignore[attr-defined]
