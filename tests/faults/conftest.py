"""Fault tests: the services as real processes, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.settings import SERVICES


@pytest.fixture(params=["sqlite", "postgres"])
def database_urls(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: Callable[[], str]
) -> dict[str, str]:
    if request.param == "sqlite":
        return {s: f"sqlite+aiosqlite:///{tmp_path / f'{s}.db'}" for s in SERVICES}
    return {s: pg_database() for s in SERVICES}
