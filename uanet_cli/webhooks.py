"""``uanet webhooks add|list|remove|replay`` (contract §8): endpoints that hear of every event,
signed. Run against the publisher's database, like ``uanet token``; a running publisher picks
up a change within seconds."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError

T = TypeVar("T")


def _with_publisher_db(work: Callable[[Any], Awaitable[T]]) -> T:
    from services.publisher.webhooks.registry import EndpointNotFound
    from uanet_cli.common import on_publisher_database

    return on_publisher_database(
        work,
        refusals={
            EndpointNotFound: lambda exc: f"no webhook endpoint {exc} (see `uanet webhooks list`)"
        },
    )


def _when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


def _endpoint_id(raw: str) -> uuid.UUID:
    from uanet_cli.common import fail

    try:
        return uuid.UUID(raw)
    except ValueError:
        fail(f"ID: {raw!r} is not an endpoint id (see `uanet webhooks list`)")


def register(app: typer.Typer) -> None:
    webhooks = typer.Typer(no_args_is_help=True, help="Signed webhooks to a CRM or warehouse")
    app.add_typer(webhooks, name="webhooks")

    @webhooks.command("add")
    def add(
        url: Annotated[str, typer.Argument(help="https://…, or http:// to a loopback address")],
        events: Annotated[str, typer.Option(help="event types, comma-separated, or all")] = "all",
        description: Annotated[str, typer.Option(help="what or who it is for")] = "",
    ) -> None:
        """Register an endpoint; prints its id, then its signing secret alone on the last line."""
        from services.publisher.audit import Actor
        from services.publisher.webhooks.registry import WebhookEndpointCreate, add_endpoint
        from services.publisher.webhooks.standard import EVENT_TYPES
        from uanet_cli.common import fail, settings_or_exit

        settings = settings_or_exit()
        secret_key = settings.require_secret()
        types = (
            list(EVENT_TYPES)
            if events.strip() == "all"
            else [t.strip() for t in events.split(",") if t.strip()]
        )
        try:
            endpoint_in = WebhookEndpointCreate.model_validate(
                {"url": url, "events": types, "description": description}
            )
        except ValidationError as exc:
            error = exc.errors()[0]
            field = {"url": "URL", "events": "--events", "description": "--description"}.get(
                str(error["loc"][0]), str(error["loc"][0])
            )
            known = ", ".join(EVENT_TYPES)
            hint = f" (known: {known}, or all)" if field == "--events" else ""
            fail(f"{field}: {error['msg']}{hint}")

        async def work(database: Any) -> tuple[Any, str]:
            async with database.write() as session:
                return await add_endpoint(
                    session,
                    endpoint_in=endpoint_in,
                    secret_key=secret_key,
                    actor=Actor.command_line(),
                )

        endpoint, secret = _with_publisher_db(work)
        typer.echo(f"added webhook endpoint {endpoint.id} for {', '.join(endpoint.events)}")
        typer.echo("its signing secret, shown only now:")
        typer.echo(secret)

    @webhooks.command("list")
    def list_() -> None:
        """Every endpoint: id, URL, events, state, last success, failed tries in a row."""
        from services.publisher.webhooks.registry import list_endpoints

        async def work(database: Any) -> list[Any]:
            async with database.read() as session:
                return await list_endpoints(session)

        endpoints = _with_publisher_db(work)
        if not endpoints:
            typer.echo("no webhook endpoints")
            return
        for e in endpoints:
            state = e.state if e.state == "active" else f"disabled ({e.disabled_reason})"
            typer.echo(
                f"{e.id}  {e.url}\n  events: {', '.join(e.events)}\n  state: {state}\n"
                f"  last success: {_when(e.last_success_at)}; "
                f"failed tries in a row: {e.failures_in_a_row}"
            )

    @webhooks.command("remove")
    def remove(endpoint_id: Annotated[str, typer.Argument(metavar="ID")]) -> None:
        """Nothing more is sent to it."""
        from services.publisher.audit import Actor
        from services.publisher.webhooks.registry import remove_endpoint

        target = _endpoint_id(endpoint_id)

        async def work(database: Any) -> None:
            async with database.write() as session:
                await remove_endpoint(session, endpoint_id=target, actor=Actor.command_line())

        _with_publisher_db(work)
        typer.echo(f"removed webhook endpoint {target}")

    @webhooks.command("replay")
    def replay_(
        endpoint_id: Annotated[str, typer.Argument(metavar="ID")],
        since: Annotated[str, typer.Option(help="ISO 8601 time: every event since then")],
    ) -> None:
        """Send the endpoint every event since TIME again, each with its first webhook-id."""
        from services.publisher.audit import Actor
        from services.publisher.webhooks.registry import replay
        from uanet_cli.common import fail

        target = _endpoint_id(endpoint_id)
        try:
            moment = datetime.fromisoformat(since.strip().replace("Z", "+00:00"))
        except ValueError:
            fail(f"--since: {since!r} is not an ISO 8601 time such as 2026-12-01T00:00:00Z")
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)

        async def work(database: Any) -> Any:
            async with database.write() as session:
                return await replay(
                    session, endpoint_id=target, since=moment, actor=Actor.command_line()
                )

        replayed = _with_publisher_db(work)
        typer.echo(f"{replayed.requeued} event(s) queued again for {target}")
        if replayed.not_kept:
            typer.echo(
                f"{replayed.not_kept} personal event(s) were delivered before and are no longer "
                "kept (a person's data is held only until it is delivered)"
            )
