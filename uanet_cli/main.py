"""The ``uanet`` command (contract §1)."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, TypeVar

import typer
from aiormq.exceptions import AMQPError

# Typer carries its own copy of click; its usage errors are these classes.
from typer._click.exceptions import NoArgsIsHelpError, UsageError

from shared.settings import SERVICES, Settings, SettingsError
from uanet_cli.common import fail, migrate_all, settings_or_exit

app = typer.Typer(add_completion=False, no_args_is_help=True, help="uanet: urgent-action alerts")
token_app = typer.Typer(no_args_is_help=True, help="API tokens")
dead_app = typer.Typer(no_args_is_help=True, help="Messages that could not be handled")
app.add_typer(token_app, name="token")
app.add_typer(dead_app, name="dead-letters")


class ServiceName(StrEnum):
    publisher = "publisher"
    subscriptions = "subscriptions"
    dispatcher = "dispatcher"


class Role(StrEnum):
    admin = "admin"
    staff = "staff"
    coordinator = "coordinator"


@app.command()
def serve(service: ServiceName) -> None:
    """Run one service in the foreground (what a container runs)."""
    import uvicorn

    from shared.logs import configure_logging

    settings = settings_or_exit()
    try:
        settings.require_secret()
    except SettingsError as exc:
        fail(str(exc))
    configure_logging(service.value)
    module = importlib.import_module(f"services.{service.value}.app")
    application = module.create_app(settings)
    uvicorn.run(
        application,
        host="0.0.0.0",
        port=settings.port(service.value),
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_graceful_shutdown=5,
    )


@app.command()
def migrate() -> None:
    """Bring every service's database schema to the newest revision."""
    settings = settings_or_exit()
    try:
        migrate_all(settings)
    except Exception as exc:  # noqa: BLE001 - one line, not a traceback, for an operator
        fail(f"migration failed: {type(exc).__name__}: {exc}")
    typer.echo("migrated: " + ", ".join(SERVICES))


T = TypeVar("T")

# --expires-in: a number and a unit (minutes, hours, days, weeks).
DURATION = re.compile(r"^([1-9][0-9]{0,5})([mhdw])$")
DURATION_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
LONGEST_EXPIRY = timedelta(days=3660)


def parse_duration(raw: str) -> timedelta:
    match = DURATION.match(raw.strip().lower())
    if match is None:
        raise ValueError("a number and a unit: 30m, 12h, 90d or 8w")
    amount, unit = match.groups()
    duration = timedelta(**{DURATION_UNITS[unit]: int(amount)})
    if duration > LONGEST_EXPIRY:
        raise ValueError("at most 10 years")
    return duration


def _publisher_db(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``work(sessionmaker)`` against the publisher's database; a database that cannot be
    used is one line and exit 2."""
    from shared.db import make_engine, make_sessionmaker

    async def run() -> T:
        engine = make_engine(settings.publisher_database_url)
        try:
            return await work(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except Exception as exc:  # noqa: BLE001 - one line for an operator, not a traceback
        reason = type(exc).__name__
        fail(f"the publisher database is not usable ({reason}); did you run `uanet migrate`?")


@token_app.command("create")
def token_create(
    role: Annotated[Role, typer.Option(help="admin, staff or coordinator")],
    name: Annotated[str, typer.Option(help="who or what the token is for")],
    expires_in: Annotated[
        str | None, typer.Option(help="refused after this long: 30m, 12h, 90d, 8w")
    ] = None,
) -> None:
    """Create an API token; it is printed alone on the last line (and never shown again)."""
    from services.publisher.auth import create_api_token
    from shared.db import utcnow

    if not name.strip():
        fail("--name must not be empty")
    expires_at = None
    if expires_in is not None:
        try:
            expires_at = utcnow() + parse_duration(expires_in)
        except ValueError as exc:
            fail(f"--expires-in: {exc}")
    settings = settings_or_exit()
    token = _publisher_db(
        settings,
        lambda sessions: create_api_token(
            sessions, role=role.value, name=name, expires_at=expires_at
        ),
    )
    until = f", expires {_when(expires_at)}" if expires_at is not None else ""
    typer.echo(
        f"created {role.value} token for {name}{until}; store it now, it is not shown again:"
    )
    typer.echo(token)


def _when(moment: datetime | None, empty: str = "never") -> str:
    if moment is None:
        return empty
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


@token_app.command("list")
def token_list() -> None:
    """Every token: name, role, created, last used, expiry and state (never the secret)."""
    from services.publisher.auth import list_api_tokens
    from shared.db import utcnow

    settings = settings_or_exit()
    tokens = _publisher_db(settings, list_api_tokens)
    if not tokens:
        typer.echo("no tokens")
        return
    now = utcnow()
    rows = [("NAME", "ROLE", "CREATED", "LAST USED", "EXPIRES", "STATE")]
    for token in tokens:
        rows.append(
            (
                token.name,
                token.role,
                _when(token.created_at),
                _when(token.last_used_at),
                _when(token.expires_at),
                token.state(now),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="the token's name")]) -> None:
    """Revoke every live token of that name: refused at once by the publisher, within seconds
    by the other services."""
    from services.publisher.auth import revoke_api_token

    settings = settings_or_exit()
    revoked = _publisher_db(settings, lambda sessions: revoke_api_token(sessions, name=name))
    if revoked == 0:
        fail(f"no live token named {name!r} (see `uanet token list`)")
    typer.echo(f"revoked {revoked} token(s) named {name}")


def run_against_broker(work: Coroutine[Any, Any, T]) -> T:
    """Run a broker operation; an unreachable broker is one line and exit 2, not a traceback."""
    try:
        return asyncio.run(work)
    except (TimeoutError, OSError, AMQPError) as exc:
        fail(f"RabbitMQ at UANET_AMQP_URL is not reachable ({type(exc).__name__})")


@dead_app.command("list")
def dead_letters_list(
    limit: Annotated[int, typer.Option(min=1, help="at most this many")] = 100,
) -> None:
    """Show dead-lettered messages with their reasons (they stay in the queue)."""
    from shared.messaging import list_dead_letters

    settings = settings_or_exit()
    letters = run_against_broker(list_dead_letters(settings.amqp_url, limit))
    if not letters:
        typer.echo("no dead letters")
        return
    for letter in letters:
        typer.echo(
            f"{letter.message_id}\t{letter.queue}\t{letter.routing_key}\t"
            f"{letter.failed_at}\t{letter.reason}"
        )
    typer.echo(f"{len(letters)} dead letter(s)")


@dead_app.command("replay")
def dead_letters_replay(
    message_id: Annotated[
        str | None, typer.Option("--id", help="replay only this message id")
    ] = None,
) -> None:
    """Send dead-lettered messages back to the queue they came from."""
    from shared.messaging import replay_dead_letters

    settings = settings_or_exit()
    count = run_against_broker(replay_dead_letters(settings.amqp_url, message_id))
    typer.echo(f"replayed {count} message(s)")


def _register_optional() -> None:
    """Commands that live with the code they drive (``uanet up``, users, subscribers)."""
    for module in (
        "devtools.up",
        "uanet_cli.users",
        "uanet_cli.subscribers",
        "uanet_cli.webhooks",
        "uanet_cli.broker",
        "uanet_cli.sections",
    ):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and module.startswith(exc.name):
                continue
            raise
        mod.register(app)


def main() -> None:
    _register_optional()
    try:
        # Not standalone: a usage error becomes one line here instead of click's boxed report.
        status = app(standalone_mode=False)
    except UsageError as exc:
        if isinstance(exc, NoArgsIsHelpError):
            typer.echo(exc.format_message(), err=True)
        else:
            typer.echo(f"uanet: {exc.format_message()}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("uanet: aborted", err=True)
        sys.exit(1)
    except SettingsError as exc:
        typer.echo(f"uanet: {exc}", err=True)
        sys.exit(2)
    sys.exit(status if isinstance(status, int) else 0)


if __name__ == "__main__":
    main()
