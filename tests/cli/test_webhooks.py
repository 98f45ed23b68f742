"""``uanet webhooks add|list|remove`` as an operator runs them (contract §8): the secret shown once,
alone on the last line; never listed; a bad argument is one line and exit status 2."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from shared.migrations import upgrade
from tests.cli.test_usage import run
from tests.conftest import SECRET


@pytest.fixture
def publisher_env(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'publisher.db'}"
    upgrade("publisher", url)
    return {"UANET_PUBLISHER_DATABASE_URL": url, "UANET_SECRET_KEY": SECRET}


def test_add_list_remove(publisher_env: dict[str, str]) -> None:
    added = run(
        "webhooks",
        "add",
        "https://crm.example.org/hooks",
        "--events",
        "action.published, subscriber.erased",
        "--description",
        "the CRM",
        **publisher_env,
    )
    assert added.returncode == 0, added.stderr
    lines = added.stdout.strip().splitlines()
    secret = lines[-1]
    assert re.fullmatch(r"whsec_[A-Za-z0-9+/=]+", secret), "the secret alone on the last line"
    endpoint_id = str(uuid.UUID(re.findall(r"[0-9a-f-]{36}", lines[0])[0]))
    assert "action.published, subscriber.erased" in lines[0]

    listed = run("webhooks", "list", **publisher_env)
    assert listed.returncode == 0, listed.stderr
    assert endpoint_id in listed.stdout and "https://crm.example.org/hooks" in listed.stdout
    assert "state: active" in listed.stdout and "last success: never" in listed.stdout
    assert secret not in listed.stdout and secret[6:] not in listed.stdout

    removed = run("webhooks", "remove", endpoint_id, **publisher_env)
    assert removed.returncode == 0, removed.stderr
    assert endpoint_id in removed.stdout
    assert run("webhooks", "list", **publisher_env).stdout.strip() == "no webhook endpoints"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("add", "ftp://crm.example.org/"), "uanet: URL: "),
        (("add", "http://crm.example.org/"), "uanet: URL: "),
        (("add", "https://crm.example.org/", "--events", "action.deleted"), "uanet: --events: "),
        (("add", "https://crm.example.org/", "--events", " , "), "uanet: --events: "),
        (("remove", "not-an-id"), "uanet: ID: "),
        (("remove", str(uuid.UUID(int=1))), "uanet: no webhook endpoint "),
    ],
)
def test_a_bad_argument_is_one_line_and_exit_2(
    publisher_env: dict[str, str], args: tuple[str, ...], says: str
) -> None:
    result = run("webhooks", *args, **publisher_env)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(says), lines
    assert result.stdout == ""
