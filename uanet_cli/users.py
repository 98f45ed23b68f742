"""``uanet users create`` and ``uanet users disable``: staff accounts for the console
(contract §1)."""

from __future__ import annotations

import asyncio
import sys
from enum import StrEnum
from typing import Annotated

import typer


class Role(StrEnum):
    admin = "admin"
    staff = "staff"
    coordinator = "coordinator"


def _read_password() -> str:
    """Prompted without echo on a terminal; otherwise the first line of standard input."""
    if sys.stdin.isatty():
        password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        return password
    return sys.stdin.readline().rstrip("\r\n")


def register(app: typer.Typer) -> None:
    users = typer.Typer(no_args_is_help=True, help="Staff accounts for the console")
    app.add_typer(users, name="users")

    @users.command("create")
    def create(
        email: Annotated[str, typer.Option(help="the address they sign in with")],
        role: Annotated[Role, typer.Option(help="admin, staff or coordinator")],
    ) -> None:
        """Create a console account; the password is read from standard input."""
        from services.publisher.staff import StaffUserError, create_staff_user, normalize_email
        from shared.db import make_engine, make_sessionmaker
        from uanet_cli.common import fail, settings_or_exit

        settings = settings_or_exit()
        try:
            normalize_email(email)
        except StaffUserError as exc:
            fail(f"--email: {exc}")
        password = _read_password()

        async def run() -> None:
            engine = make_engine(settings.publisher_database_url)
            try:
                await create_staff_user(
                    make_sessionmaker(engine), email=email, role=role.value, password=password
                )
            finally:
                await engine.dispose()

        try:
            asyncio.run(run())
        except StaffUserError as exc:
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - one line for an operator, not a traceback
            reason = type(exc).__name__
            fail(f"could not create the account ({reason}); did you run `uanet migrate`?")
        # The address is the operator's own input; echoing the role only keeps logs clean.
        typer.echo(f"created {role.value} account")

    @users.command("disable")
    def disable(
        email: Annotated[str, typer.Option(help="the address the account signs in with")],
    ) -> None:
        """Revoke a console account: no more sign-ins, and its open sessions end."""
        from services.publisher.staff import StaffUserError, disable_staff_user
        from shared.db import make_engine, make_sessionmaker
        from uanet_cli.common import fail, settings_or_exit

        settings = settings_or_exit()

        async def run() -> None:
            engine = make_engine(settings.publisher_database_url)
            try:
                await disable_staff_user(make_sessionmaker(engine), email=email)
            finally:
                await engine.dispose()

        try:
            asyncio.run(run())
        except StaffUserError as exc:
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - one line for an operator, not a traceback
            reason = type(exc).__name__
            fail(f"could not disable the account ({reason}); did you run `uanet migrate`?")
        typer.echo("disabled the account")
