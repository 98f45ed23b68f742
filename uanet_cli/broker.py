"""``uanet broker users [--apply]``: one RabbitMQ user per service (contract §11).

Prints, for each service, its user, the configure / write / read permissions it gets on the
vhost of ``UANET_AMQP_URL`` (``shared.broker_users.permissions``) and the
``UANET_<SERVICE>_AMQP_URL`` to give it. ``--apply`` makes them with ``rabbitmqctl`` (run as
someone who may: on the broker's host), each with a new random password printed once (a user
that exists keeps its password and gets its permissions again), and declares the whole
topology as the ``UANET_AMQP_URL`` user, since each service then declares only its own queues.
"""

from __future__ import annotations

import secrets
import shlex
import shutil
import subprocess
from typing import Annotated
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import typer

from shared.broker_users import permissions
from shared.settings import SERVICES
from uanet_cli.common import fail, settings_or_exit

broker = typer.Typer(no_args_is_help=True, help="The RabbitMQ users of the services")


def register(app: typer.Typer) -> None:
    app.add_typer(broker, name="broker")


def _vhost(url: str) -> str:
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _service_url(admin_url: str, user: str, password: str) -> str:
    """``UANET_AMQP_URL`` (each node of a cluster) with the service's user instead."""
    nodes = []
    for node in admin_url.split(","):
        parts = urlsplit(node.strip())
        host = parts.hostname or "localhost"
        netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        nodes.append(urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")))
    return ",".join(nodes)


def _rabbitmqctl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(  # noqa: S603 - our own arguments, no shell
        ["rabbitmqctl", *args], input=stdin, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        fail(f"rabbitmqctl {args[0]} failed: {(done.stderr or done.stdout).strip()[:300]}")
    return done.stdout


def _existing_users() -> set[str]:
    listed = _rabbitmqctl("list_users", "--quiet", "--no-table-headers")
    return {line.split("\t")[0] for line in listed.splitlines() if line.strip()}


@broker.command("users")
def users(
    apply: Annotated[bool, typer.Option("--apply", help="create them with rabbitmqctl")] = False,
    prefix: Annotated[str, typer.Option(help="user names: <prefix>-<service>")] = "uanet",
) -> None:
    """Print (or create) one RabbitMQ user per service, allowed only its own queues."""
    settings = settings_or_exit()
    vhost = _vhost(settings.amqp_url.split(",")[0])
    if apply and shutil.which("rabbitmqctl") is None:
        fail("--apply needs rabbitmqctl on PATH (run it on the broker's host)")
    existing = _existing_users() if apply else set()
    for service in SERVICES:
        user = f"{prefix}-{service}"
        allowed = permissions(service)
        typer.echo(f"{service}: user {user} on vhost {vhost}")
        typer.echo(f"  configure {allowed.configure}")
        typer.echo(f"  write     {allowed.write}")
        typer.echo(f"  read      {allowed.read}")
        variable = f"UANET_{service.upper()}_AMQP_URL"
        if not apply:
            typer.echo(f"  rabbitmqctl add_user {user}   # the password on standard input")
            typer.echo(
                "  rabbitmqctl set_permissions -p "
                + " ".join(shlex.quote(a) for a in (vhost, user, *_triple(service)))
            )
            url = _service_url(settings.amqp_url, user, "PASSWORD")
            typer.echo(f"  {variable}=" + url.replace(":PASSWORD@", ":<password>@"))
            continue
        if user in existing:
            typer.echo(f"  {user} exists: its password is unchanged")
        else:
            password = secrets.token_urlsafe(24)
            _rabbitmqctl("add_user", user, stdin=password + "\n")
            typer.echo(f"  {variable}=" + _service_url(settings.amqp_url, user, password))
        _rabbitmqctl("set_permissions", "-p", vhost, user, *_triple(service))
    if apply:
        _declare_topology(settings.amqp_url)
        typer.echo("topology declared; give each service its URL above")


def _triple(service: str) -> tuple[str, str, str]:
    allowed = permissions(service)
    return allowed.configure, allowed.write, allowed.read


def _declare_topology(url: str) -> None:
    """Every exchange and queue, as the administrator: each service declares only its own, and
    an event published before its consumer first started must still be kept."""
    from shared.messaging import Broker
    from uanet_cli.main import run_against_broker

    async def declare() -> None:
        admin = Broker(url, name="uanet-cli")
        await admin.connect()
        await admin.close()

    run_against_broker(declare())
