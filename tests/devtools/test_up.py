"""`uanet up`: the environment it gives the services, and how it supervises them (with stand-in
services, so these tests start no real service)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from devtools import up
from devtools.up import (
    DevCredentials,
    DevPlan,
    Stack,
    UpError,
    child_environment,
    dev_secret_key,
    settings_for,
)

CREDS = DevCredentials(account_sid="AC" + "d" * 32, auth_token="t" * 32)


def plan(environ: dict[str, str]) -> DevPlan:
    return child_environment(environ, secret_key=lambda: "dev-secret", credentials=lambda: CREDS)


def test_nothing_given_starts_catcher_and_outbox() -> None:
    result = plan({"PATH": "/usr/bin"})
    assert result.mail_catcher and result.sms_outbox
    env = result.env
    assert env["PATH"] == "/usr/bin"
    assert env["UANET_SECRET_KEY"] == "dev-secret"
    assert env["UANET_SMTP_HOST"] == "127.0.0.1"
    assert env["UANET_SMTP_PORT"] == "1025"
    assert env["UANET_SMTP_STARTTLS"] == "false"
    assert env["UANET_TWILIO_ACCOUNT_SID"] == CREDS.account_sid
    assert env["UANET_TWILIO_AUTH_TOKEN"] == CREDS.auth_token
    assert env["UANET_TWILIO_API_BASE"] == "http://127.0.0.1:8026"
    assert env["UANET_TWILIO_FROM"] == "+15005550006"
    assert result.outbox_credentials == CREDS
    settings = settings_for(env)
    assert settings.twilio_enabled
    assert settings.twilio_api_base == "http://127.0.0.1:8026"
    assert settings.require_secret() == "dev-secret"


def test_explicit_settings_win() -> None:
    given = {
        "UANET_SECRET_KEY": "mine",
        "UANET_SMTP_HOST": "smtp.example.org",
        "UANET_SMTP_PORT": "587",
        "UANET_TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "UANET_TWILIO_AUTH_TOKEN": "real-token",
        "UANET_TWILIO_FROM": "MG" + "2" * 32,
    }
    result = child_environment(given, secret_key=pytest.fail, credentials=pytest.fail)
    assert not result.mail_catcher and not result.sms_outbox
    assert result.env == given
    assert result.outbox_credentials is None


def test_empty_values_count_as_unset_and_a_lone_port_moves_the_catcher() -> None:
    result = plan({"UANET_SMTP_HOST": "", "UANET_SMTP_PORT": "2525", "UANET_SECRET_KEY": " "})
    assert result.mail_catcher
    assert result.catcher_smtp_port == 2525
    assert result.env["UANET_SMTP_PORT"] == "2525"
    assert result.env["UANET_SECRET_KEY"] == "dev-secret"


def test_a_sending_number_given_without_an_account_is_kept_for_the_outbox() -> None:
    result = plan({"UANET_TWILIO_FROM": "+447700900999"})
    assert result.sms_outbox
    assert result.env["UANET_TWILIO_FROM"] == "+447700900999"


def test_half_a_twilio_account_is_an_error() -> None:
    with pytest.raises(UpError, match="UANET_TWILIO_AUTH_TOKEN"):
        plan({"UANET_TWILIO_ACCOUNT_SID": "AC" + "1" * 32})
    with pytest.raises(UpError, match="UANET_TWILIO_ACCOUNT_SID"):
        plan({"UANET_TWILIO_AUTH_TOKEN": "x"})


def test_bad_values_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(UpError, match="UANET_SMTP_PORT"):
        plan({"UANET_SMTP_PORT": "lots"})
    with pytest.raises(UpError, match="UANET_PUBLISHER_DATABASE_URL"):
        up.prepare({"UANET_PUBLISHER_DATABASE_URL": "mysql://x"}, var_dir=tmp_path)


def test_dev_secret_is_made_once_private_and_reused(tmp_path: Path) -> None:
    var = tmp_path / "var"
    first = dev_secret_key(var)
    assert len(first) >= 40
    assert stat.S_IMODE((var / "secret_key").stat().st_mode) == 0o600
    assert dev_secret_key(var) == first


def test_up_is_registered_on_the_cli() -> None:
    app = typer.Typer()

    @app.command()
    def other() -> None:  # a second command, so typer keeps subcommands
        pass

    up.register(app)
    result = CliRunner().invoke(app, ["up", "--help"])
    assert result.exit_code == 0
    assert "--demo" in result.output


# ---- supervision, with stand-in services ------------------------------------------------------

STAND_IN = r"""
import http.server, os, sys
name = sys.argv[1]
if os.environ.get("STAND_IN_DIES") == name:
    sys.exit(3)
port = int(os.environ["UANET_" + name.upper() + "_PORT"])

class Ready(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"ready": true, "checks": {}}')

    def log_message(self, *args):
        pass

print(name, "listening", flush=True)
http.server.HTTPServer(("127.0.0.1", port), Ready).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def stand_in_stack(monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setattr(up, "service_command", lambda name: [sys.executable, "-c", STAND_IN, name])
    given = {
        **os.environ,
        "UANET_SMTP_HOST": "127.0.0.1",
        "UANET_TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
        "UANET_TWILIO_AUTH_TOKEN": "x",
        "UANET_PUBLISHER_PORT": str(free_port()),
        "UANET_SUBSCRIPTIONS_PORT": str(free_port()),
        "UANET_DISPATCHER_PORT": str(free_port()),
    }
    result = child_environment(given, secret_key=lambda: "dev-secret")
    return Stack(plan=result, settings=settings_for(result.env), demo=False, inbox_port=None)


async def test_sigterm_stops_every_child_and_exits_0(
    stand_in_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    async def terminate_when_up() -> None:
        while "Ctrl-C stops everything" not in capsys.readouterr().out:
            await asyncio.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = asyncio.create_task(terminate_when_up())
    code = await asyncio.wait_for(up.supervise(stand_in_stack), 30)
    await killer
    assert code == 0
    assert len(stand_in_stack.children) == 3
    assert all(child.process.returncode is not None for child in stand_in_stack.children)


async def test_a_dying_child_is_named_and_stops_everything(
    stand_in_stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    stand_in_stack.plan.env["STAND_IN_DIES"] = "subscriptions"
    code = await asyncio.wait_for(up.supervise(stand_in_stack), 30)
    assert code == 1
    assert "subscriptions exited with status 3" in capsys.readouterr().err
    assert all(child.process.returncode is not None for child in stand_in_stack.children)
