"""``uanet subscribers import|export`` and ``uanet suppressions import|export`` (contract §1)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import IO, Annotated, TypeVar

import typer
from sqlalchemy.exc import DBAPIError, OperationalError, ProgrammingError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions import bulk
from services.subscriptions.links import Links
from shared.db import make_engine, make_sessionmaker
from shared.settings import SettingsError
from shared.tokens import LinkSigner
from uanet_cli.common import fail, settings_or_exit

T = TypeVar("T")

subscribers_app = typer.Typer(no_args_is_help=True, help="The subscriber list, as CSV")
suppressions_app = typer.Typer(
    no_args_is_help=True, help="Addresses and numbers that must never be contacted, as CSV"
)

FileArgument = Annotated[Path, typer.Argument(help="a CSV file", dir_okay=False)]


def register(app: typer.Typer) -> None:
    app.add_typer(subscribers_app, name="subscribers")
    app.add_typer(suppressions_app, name="suppressions")


def _run(work: Callable[[async_sessionmaker[AsyncSession]], Awaitable[T]]) -> T:
    """Run against the subscriptions database; its failures are one line and exit 2."""
    settings = settings_or_exit()

    url = settings.subscriptions_database_url

    async def run() -> T:
        # On PostgreSQL every statement is planned for its own execution (shared.db): a plan
        # cached while the table was small would scan it whole later (measured: 100,000 rows
        # imported in 3 minutes instead of 30 seconds).
        engine = make_engine(url)
        try:
            return await work(make_sessionmaker(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except bulk.BadFile as exc:
        fail(str(exc))
    except UnicodeDecodeError:
        fail("the file is not UTF-8 text")
    except (OperationalError, ProgrammingError) as exc:
        fail(f"database error ({type(exc.orig).__name__}); did you run `uanet migrate`?")
    except (DBAPIError, OSError) as exc:
        fail(f"UANET_SUBSCRIPTIONS_DATABASE_URL is not usable ({type(exc).__name__})")


def _open_for_reading(path: Path) -> IO[str]:
    if not path.is_file():
        fail(f"{path}: no such file")
    # utf-8-sig: spreadsheets often start their CSV with a byte-order mark.
    return path.open(encoding="utf-8-sig", newline="")


def _open_for_writing(path: Path) -> IO[str]:
    if not path.parent.is_dir():
        fail(f"{path.parent}: no such directory")
    try:
        return path.open("w", encoding="utf-8", newline="")
    except OSError as exc:
        fail(f"{path}: cannot write ({exc.strerror})")


def _echo_refusal(line: str) -> None:
    typer.echo(line, err=True)


@subscribers_app.command("import")
def subscribers_import(
    file: FileArgument,
    confirmed: Annotated[
        bool,
        typer.Option(
            "--confirmed",
            help="they already consented elsewhere (a move from another platform): no "
            "confirmation is sent and consent is recorded as an import",
        ),
    ] = False,
) -> None:
    """Import subscribers (columns as in a sign-up; channels and themes separated by ';')."""
    links: Links | None = None
    if not confirmed:
        try:
            links = Links(LinkSigner(settings_or_exit().require_secret()), _public_url())
        except SettingsError as exc:
            fail(str(exc))
    printer = bulk.RefusalPrinter(_echo_refusal)
    # Rows are checked in worker processes while the database takes the previous chunk.
    # forkserver: workers never inherit the database driver's thread.
    workers = ProcessPoolExecutor(
        max_workers=max(1, min(4, os.cpu_count() or 1)),
        mp_context=multiprocessing.get_context("forkserver"),
    )
    with _open_for_reading(file) as handle, workers:
        rows = bulk.csv_rows(handle, required=("country",))
        report = _run(
            lambda sessionmaker: bulk.import_subscribers(
                sessionmaker=sessionmaker,
                rows=rows,
                confirmed=confirmed,
                links=links,
                on_refused=printer,
                executor=workers,
            )
        )
    typer.echo(f"taken: {report.taken}, refused: {report.refused}")
    if not confirmed:
        typer.echo(f"confirmations queued: {report.confirmations}")


def _public_url() -> str:
    return settings_or_exit().public_url


@subscribers_app.command("export")
def subscribers_export(file: FileArgument) -> None:
    """Write every subscriber (not erased) to a CSV file."""
    with _open_for_writing(file) as handle:
        written = _run(
            lambda sessionmaker: bulk.export_subscribers(sessionmaker=sessionmaker, handle=handle)
        )
    typer.echo(f"exported: {written}")


@suppressions_app.command("import")
def suppressions_import(file: FileArgument) -> None:
    """Add addresses that must never be contacted (columns channel,address,reason)."""
    printer = bulk.RefusalPrinter(_echo_refusal)
    with _open_for_reading(file) as handle:
        rows = bulk.csv_rows(handle, required=("channel", "address"))
        report = _run(
            lambda sessionmaker: bulk.import_suppressions(
                sessionmaker=sessionmaker, rows=rows, on_refused=printer
            )
        )
    typer.echo(
        f"taken: {report.taken} ({report.unchanged} already suppressed), refused: {report.refused}"
    )


@suppressions_app.command("export")
def suppressions_export(file: FileArgument) -> None:
    """Write every suppressed address to a CSV file."""
    with _open_for_writing(file) as handle:
        written = _run(
            lambda sessionmaker: bulk.export_suppressions(sessionmaker=sessionmaker, handle=handle)
        )
    typer.echo(f"exported: {written}")
