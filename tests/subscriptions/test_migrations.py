"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Connection

from services.subscriptions.app import create_app
from services.subscriptions.models import Base
from shared.db import make_engine
from shared.settings import SettingsError
from tests.subscriptions.conftest import service_settings


async def test_migrated_schema_matches_the_models(subscriptions_db: str) -> None:
    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(
            connection,
            opts={"compare_type": True, "version_table": "alembic_version_subscriptions"},
        )
        return list(compare_metadata(context, Base.metadata))

    engine = make_engine(subscriptions_db)
    try:
        async with engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await engine.dispose()


def test_the_service_does_not_start_without_a_secret_key() -> None:
    with pytest.raises(SettingsError, match="UANET_SECRET_KEY"):
        create_app(service_settings("sqlite+aiosqlite:///unused.db", secret_key=None))
