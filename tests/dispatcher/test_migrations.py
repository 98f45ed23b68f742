"""The dispatcher's migrations (every head) build exactly the schema its models describe."""

from __future__ import annotations

from collections.abc import Callable

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

import services.dispatcher.feedback.models  # noqa: F401 - its tables are on the same metadata
import services.dispatcher.letters  # noqa: F401 - its tables are on the same metadata
from services.dispatcher.models import Base

from .conftest import migrated


async def test_migrated_schema_matches_the_models(database_url: Callable[[str], str]) -> None:
    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection, opts={"compare_type": True, "version_table": "alembic_version_dispatcher"}
        )
        return list(compare_metadata(context, Base.metadata))

    maker = await migrated(database_url("dispatcher"))
    engine = maker.kw["bind"]
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()
