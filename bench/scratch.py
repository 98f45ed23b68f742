"""Throwaway infrastructure for one benchmark run: a fresh RabbitMQ vhost, the three services'
databases (SQLite files in a temporary folder, or fresh PostgreSQL databases), all removed
afterwards unless kept."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from shared.settings import SERVICES

AMQP_BASE = os.environ.get("UANET_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
PG_ADMIN_DSN = os.environ.get("UANET_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def psql(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN_DSN, "-q", "-c", sql], check=True, capture_output=True)


@dataclass
class Scratch:
    workdir: Path
    amqp_url: str
    database_urls: dict[str, str]
    # PostgreSQL databases made for the run (in SERVICES order), empty on SQLite.
    databases: list[str] = field(default_factory=list)


@contextmanager
def scratch(prefix: str, *, postgres: bool = False, keep: bool = False) -> Iterator[Scratch]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    databases: list[str] = []
    try:
        if postgres:
            base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            urls = {}
            for service in SERVICES:
                name = f"{prefix.replace('-', '_')}_{service}_{uuid.uuid4().hex[:6]}"
                psql(f'CREATE DATABASE "{name}"')
                databases.append(name)
                urls[service] = f"{base}/{name}"
        else:
            urls = {s: f"sqlite+aiosqlite:///{workdir / f'{s}.db'}" for s in SERVICES}
        yield Scratch(workdir, f"{AMQP_BASE}/{vhost}", urls, databases)
    finally:
        rabbitmqctl("delete_vhost", vhost)
        for name in databases:
            psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if keep:
            print(f"logs and databases kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
