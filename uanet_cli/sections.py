"""``uanet sections add|list|remove`` on a hub (contract §9): the national sections its actions
go to and whose counts it takes. Run against the publisher's database, like ``uanet token``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC
from typing import Annotated, Any, TypeVar

import typer

T = TypeVar("T")


def _on_publisher_db(work: Callable[[Any], Awaitable[T]]) -> T:
    from services.publisher.federation.hub import SectionError
    from uanet_cli.common import on_publisher_database

    return on_publisher_database(work, refusals={SectionError: str})


def register(app: typer.Typer) -> None:
    sections = typer.Typer(no_args_is_help=True, help="A hub's national sections (federation)")
    app.add_typer(sections, name="sections")

    @sections.command("add")
    def add(
        code: Annotated[str, typer.Argument(help="letters and digits, e.g. UK")],
        name: Annotated[str, typer.Option(help="the section's name")],
        url: Annotated[str, typer.Option(help="the base URL of the section's publisher")],
    ) -> None:
        """Register a section; prints its key (whsec_…) alone on the last line."""
        from services.publisher.audit import Actor
        from services.publisher.federation.hub import add_section
        from uanet_cli.common import settings_or_exit

        secret_key = settings_or_exit().require_secret()

        async def work(database: Any) -> tuple[Any, str]:
            async with database.write() as session:
                return await add_section(
                    session,
                    code=code,
                    name=name,
                    url=url,
                    secret_key=secret_key,
                    actor=Actor.command_line(),
                )

        section, key = _on_publisher_db(work)
        typer.echo(f"added section {section.code} ({section.name}) at {section.url}")
        typer.echo("set UANET_HUB_KEY on that section to this key, shown only now:")
        typer.echo(key)

    @sections.command("list")
    def list_() -> None:
        """Code, name, URL, last heard from, deliveries waiting for it."""
        from services.publisher.federation.hub import list_sections

        async def work(database: Any) -> list[Any]:
            async with database.read() as session:
                return await list_sections(session)

        rows = _on_publisher_db(work)
        if not rows:
            typer.echo("no sections")
            return
        for r in rows:
            heard = (
                r.last_heard_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
                if r.last_heard_at
                else "never"
            )
            typer.echo(
                f"{r.code}  {r.name}  {r.url}  last heard from: {heard}  waiting: {r.waiting}"
            )

    @sections.command("remove")
    def remove(code: Annotated[str, typer.Argument(help="the section's code")]) -> None:
        """Nothing more goes to it or is taken from it."""
        from services.publisher.audit import Actor
        from services.publisher.federation.hub import remove_section

        async def work(database: Any) -> None:
            async with database.write() as session:
                await remove_section(session, code=code, actor=Actor.command_line())

        _on_publisher_db(work)
        typer.echo(f"removed section {code.upper()}")
