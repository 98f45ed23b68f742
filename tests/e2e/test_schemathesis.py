"""Each service's OpenAPI is true: schemathesis generates requests from ``GET /openapi.json`` and
checks what the running service answers (status codes, content types and bodies as documented, no
500, invalid data refused, no operation that ignores its authentication).

The three services run as real processes on PostgreSQL and a fresh RabbitMQ vhost; the calls
carry a valid admin token (made by ``uanet token create``), so they get past authentication, and
the Twilio webhooks' calls are signed (schemathesis_hooks.py). Half the generated ids and link
tokens are real ones (a draft, a published action, a confirmed subscriber's links), so the runs
reach the handling of real resources, not only their 404s.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.subscriptions.links import Links
from shared.settings import SERVICES
from shared.tokens import LinkSigner
from tests.conftest import SECRET
from tests.e2e.letters_flow import ACTION, SUBSCRIBER, publish_to_a_subscriber
from tests.e2e.stack import Stack, close_stack, open_stack
from tests.support import eventually

pytestmark = pytest.mark.e2e

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "ignored_auth",
)
# A small budget: the three runs together stay within a couple of minutes on two cores.
MAX_EXAMPLES = os.environ.get("UANET_SCHEMATHESIS_EXAMPLES", "8")
# Fixed, so a failure seen once is seen again; set another to explore.
SEED = os.environ.get("UANET_SCHEMATHESIS_SEED", "20261202")


@pytest.fixture
async def stack(
    amqp_url: str, tmp_path: Path, pg_database: Callable[[], str]
) -> AsyncIterator[Stack]:
    urls = {s: pg_database() for s in SERVICES}
    running = await open_stack(
        amqp_url=amqp_url, database_urls=urls, log_dir=tmp_path, secret=SECRET
    )
    try:
        yield running
    finally:
        await close_stack(running)


async def admin_token_known_everywhere(stack: Stack) -> str:
    """An admin token, once subscriptions has heard of it (it learns tokens over the broker)."""
    token = stack.token("admin", "schemathesis")
    probe = f"{stack.url('subscriptions')}/api/v1/subscribers/{uuid.uuid4()}/export"
    async with httpx.AsyncClient() as client:

        async def known() -> bool:
            response = await client.get(probe, headers={"Authorization": f"Bearer {token}"})
            return response.status_code == 404

        await eventually(known, what="the admin token to reach subscriptions")
    return token


async def real_resources(stack: Stack, token: str) -> dict[str, list[str]]:
    """Ids and link tokens that name something: a published action and a draft; Ana's act,
    preferences, unsubscribe and confirm links, and a letter's reply-address link; Ben, whom
    the erasure call may erase."""
    async with httpx.AsyncClient() as client:
        published = await publish_to_a_subscriber(client, stack)
        draft = await client.post(
            stack.url("publisher") + "/api/v1/actions",
            json=ACTION,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert draft.status_code == 201, draft.text
        ben = "ben@example.net"
        signed_up = await client.post(
            stack.url("subscriptions") + "/api/v1/subscribers",
            json={"email": ben, "country": "FR", "channels": ["email"]},
        )
        assert signed_up.status_code == 202, signed_up.text
        written = await client.post(
            published.act_url + "/letter",
            json={"name": "Ana", "email": "reply@example.org", "letter": "Please release him."},
        )
        assert written.status_code == 202 and written.json()["status"] == "confirm_email"
    links = Links(LinkSigner(SECRET), stack.env["UANET_PUBLIC_URL"])

    def public_id(address: str) -> uuid.UUID:
        unsubscribe = stack.smtp.to(address)[0].header("List-Unsubscribe").strip("<>")
        return links.read_unsubscribe(unsubscribe.rsplit("/", 1)[1]).subscriber

    await eventually(lambda: stack.smtp.to(ben), what="Ben's confirmation")
    ana = public_id(SUBSCRIBER)
    return {
        "action_id": [published.action_id, draft.json()["id"]],
        "subscriber_id": [str(public_id(ben))],
        # Each page's own kind of link.
        "act": [published.act_url.rsplit("/", 1)[1]],
        "preferences": [links.preferences(ana).rsplit("/", 1)[1]],
        "unsubscribe": [links.unsubscribe(ana, "email").rsplit("/", 1)[1]],
        "confirm": [links.confirm(ana).rsplit("/", 1)[1]],
        "letters": [links.letter(uuid.UUID(written.json()["letter_id"])).rsplit("/", 1)[1]],
    }


# Which of the real resources each service's operations take.
PATH_PARAMETERS = {"publisher": ["action_id"], "subscriptions": ["subscriber_id"], "dispatcher": []}
PAGES = {"subscriptions": ["act", "preferences", "unsubscribe", "confirm", "letters"]}


def write_config(path: Path, service: str, resources: dict[str, list[str]]) -> Path:
    def binding(parameter: str, dictionary: str) -> str:
        return f'"path.{parameter}" = {{ dictionary = "{dictionary}", probability = 0.5 }}'

    lines = [
        # The live stream sends the counts on connect, then only when they change: one event
        # is the whole answer, rather than waiting out the request timeout for more.
        "max-stream-events = 1",
        "",
        "[parameters]",
        *(binding(name, name) for name in PATH_PARAMETERS[service]),
    ]
    pages = PAGES.get(service, [])
    for page in pages:
        lines += [
            "",
            "[[operations]]",
            f'include-path-regex = "^/{page}/"',
            f"parameters = {{ {binding('token', page)} }}",
        ]
    for name in [*PATH_PARAMETERS[service], *pages]:
        lines += ["", f"[dictionaries.{name}]", f"values = {json.dumps(resources[name])}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def run_schemathesis(
    stack: Stack, service: str, token: str, report: Path, config: Path
) -> dict[str, Any]:
    completed = subprocess.run(
        [
            str(SCHEMATHESIS),
            "--config-file",
            str(config),
            "run",
            f"{stack.url(service)}/openapi.json",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            SEED,
            "--workers",
            "1",
            "--header",
            f"Authorization: Bearer {token}",
            "--request-timeout",
            "10",
            "--report",
            "json",
            "--report-json-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=report.parent,  # its cache (.schemathesis/) goes with the test's files
        env={
            **os.environ,
            "NO_COLOR": "1",
            "SCHEMATHESIS_TELEMETRY": "false",
            # Signs the Twilio webhooks' calls with the stack's auth token.
            "SCHEMATHESIS_HOOKS": str(HOOKS),
            "UANET_TWILIO_AUTH_TOKEN": stack.env["UANET_TWILIO_AUTH_TOKEN"],
        },
    )
    summary = json.loads(report.read_text()) if report.exists() else {}
    return {"returncode": completed.returncode, "output": completed.stdout, "report": summary}


async def test_every_service_answers_as_its_openapi_says(stack: Stack, tmp_path: Path) -> None:
    token = await admin_token_known_everywhere(stack)
    resources = await real_resources(stack, token)
    failed: list[str] = []
    for service in SERVICES:
        config = write_config(tmp_path / f"{service}.toml", service, resources)
        result = await asyncio.to_thread(
            run_schemathesis, stack, service, token, tmp_path / f"{service}.json", config
        )
        print(f"==== {service}\n{result['output']}")
        if result["returncode"] != 0:
            failed.append(f"{service}:\n{result['output'][-6000:]}")
    assert not failed, "\n\n".join(failed)
