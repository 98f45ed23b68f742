"""Contract §1: a bad argument or setting prints one clear line to stderr and exits 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

UANET = [sys.executable, "-c", "from uanet_cli.main import main; main()"]


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("UANET_")}
    environment.update(env)
    return subprocess.run(
        [*UANET, *args], capture_output=True, text=True, env=environment, timeout=60
    )


@pytest.mark.parametrize(
    "args",
    [
        ("token", "create", "--role", "emperor", "--name", "x"),
        ("token", "create", "--role", "staff"),
        ("no-such-command",),
        ("serve", "mailer"),
        ("dead-letters", "list", "--limit", "0"),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("uanet: ")


def test_a_bad_setting_is_one_line_naming_it_and_exit_2() -> None:
    result = run("migrate", UANET_AMQP_URL="http://not-amqp")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "uanet: UANET_AMQP_URL: Value error, must start with one of amqp://, amqps://"
    ]


def test_serve_without_a_secret_names_it() -> None:
    result = run("serve", "subscriptions")
    assert result.returncode == 2
    assert "UANET_SECRET_KEY" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_exits_0() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "token" in result.stdout
