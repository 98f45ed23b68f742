"""Fixtures that give each test real, isolated infrastructure: a fresh RabbitMQ vhost, a fresh
PostgreSQL database or SQLite file, and the settings that point at them."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from shared.settings import SERVICES, Settings
from tests import broker_admin

if TYPE_CHECKING:
    from tests.e2e.stack import Stack

AMQP_BASE = os.environ.get("UANET_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
PG_ADMIN_DSN = os.environ.get("UANET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SECRET = "test-secret-key-not-for-production"


@pytest.fixture
def amqp_url() -> Iterator[str]:
    """A fresh vhost, deleted afterwards: no queue or message leaks between tests."""
    vhost = f"uanet-test-{uuid.uuid4().hex[:10]}"
    broker_admin.add_vhost(vhost)
    try:
        yield f"{AMQP_BASE}/{vhost}"
    finally:
        broker_admin.delete_vhost(vhost)


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", PG_ADMIN_DSN, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def pg_database() -> Iterator[Callable[[], str]]:
    """Makes fresh PostgreSQL databases on demand (``postgresql+asyncpg://…``), dropped after."""
    made: list[str] = []

    def make() -> str:
        name = f"uanet_test_{uuid.uuid4().hex[:12]}"
        _psql(f'CREATE DATABASE "{name}"')
        made.append(name)
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
        return f"{base}/{name}"

    yield make
    for name in made:
        _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, pg_database: Callable[[], str]
) -> Callable[[str], str]:
    """One database URL per service name, on SQLite or PostgreSQL (the test runs on both)."""

    def make(service: str) -> str:
        if request.param == "sqlite":
            return f"sqlite+aiosqlite:///{tmp_path / f'{service}.db'}"
        return pg_database()

    return make


@pytest.fixture
def make_settings(amqp_url: str) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {"amqp_url": amqp_url, "secret_key": SECRET}
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg,arg-type]

    return make


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
async def stack(amqp_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    """The three services as processes on SQLite files and a fresh vhost (a test module that
    needs another shape defines its own ``stack``)."""
    from tests.e2e.stack import close_stack, open_stack

    urls = {s: f"sqlite+aiosqlite:///{tmp_path / f'{s}.db'}" for s in SERVICES}
    running = await open_stack(
        amqp_url=amqp_url, database_urls=urls, log_dir=tmp_path, secret=SECRET
    )
    try:
        yield running
    finally:
        await close_stack(running)
