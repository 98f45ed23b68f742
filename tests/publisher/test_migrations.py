"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Connection

from services.publisher.models import Base
from shared.db import make_engine


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
