"""What every command shares: one-line failures (exit 2) and settings read once."""

from __future__ import annotations

from typing import Any, NoReturn

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
