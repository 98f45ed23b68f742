"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select
from sqlalchemy.engine import Connection

from services.publisher.bounces import BounceConsumer
from services.publisher.models import Base, TargetBounce
from shared import events
from shared.db import make_engine
from shared.migrations import alembic_config
from tests.publisher.conftest import Api


async def test_upgraded_schema_matches_the_models(publisher_url: str) -> None:
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "version_table": "alembic_version_publisher"},
        )
        return list(compare_metadata(context, Base.metadata))

    engine = make_engine(publisher_url)
    try:
        async with engine.connect() as connection:
            diff = await connection.run_sync(differences)
    finally:
        await engine.dispose()
    assert diff == []


async def test_bounces_replaced_before_0004_stay_fixed(api: Api, publisher_url: str) -> None:
    """Before 0004 an address no longer among the targets was fixed: the backfill keeps it so."""
    action_id = (await api.publish((await api.create())["id"]))["id"]
    consumer = BounceConsumer(api.app.state.database)
    for address in ("judiciary@example.org", "replaced@example.org"):
        await consumer(
            events.TargetBounced(
                action_id=uuid.UUID(action_id),
                letter_id=uuid.uuid4(),
                target_name="Head of the Judiciary",
                address=address,
            )
        )
    await api.app.state.runtime.engine.dispose()  # SQLite's table rebuild wants no reader
    config = alembic_config("publisher", publisher_url)
    await asyncio.to_thread(command.downgrade, config, "0003_target_bounces")
    await asyncio.to_thread(command.upgrade, config, "heads")

    async with api.app.state.runtime.sessionmaker() as session:
        rows = await session.execute(select(TargetBounce))
        fixed = {row.address: (row.fixed_at, row.last_at, row.fixed_to) for row in rows.scalars()}
    assert fixed["judiciary@example.org"][0] is None
    fixed_at, last_at, fixed_to = fixed["replaced@example.org"]
    assert fixed_at == last_at and fixed_to is None
