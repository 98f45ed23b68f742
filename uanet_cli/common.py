"""What every command shares: one-line failures (exit 2) and settings read once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NoReturn, TypeVar

import typer

from shared.settings import SERVICES, Settings, SettingsError, load_settings


def fail(message: str) -> NoReturn:
    """One clear line on stderr, exit status 2 (contract §1)."""
    typer.echo(f"uanet: {message}", err=True)
    raise typer.Exit(2)


def settings_or_exit(**overrides: Any) -> Settings:
    try:
        return load_settings(**overrides)
    except SettingsError as exc:
        fail(str(exc))


def migrate_all(settings: Settings) -> None:
    from shared.migrations import upgrade

    for service in SERVICES:
        upgrade(service, settings.database_url(service))


T = TypeVar("T")


def on_publisher_database(
    work: Callable[[Any], Awaitable[T]],
    *,
    refusals: Mapping[type[Exception], Callable[[Exception], str]] | None = None,
) -> T:
    """``work(database)`` (the publisher's ``Database``) on its own event loop; an error listed
    in ``refusals`` is its one line, any other says the database is not usable; exit 2."""
    from services.publisher.database import Database
    from shared.db import make_engine, make_sessionmaker

    settings = settings_or_exit()

    async def run() -> T:
        engine = make_engine(settings.publisher_database_url)
        try:
            return await work(Database(engine, make_sessionmaker(engine)))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - one line for an operator, not a traceback
        for kind, say in (refusals or {}).items():
            if isinstance(exc, kind):
                fail(say(exc))
        fail(f"the publisher database is not usable ({type(exc).__name__}); `uanet migrate`?")
