"""The test broker's administration: vhosts made and dropped per test, queues listed.

Through RabbitMQ's management HTTP API when it answers (a few milliseconds a call; `.ci/run`
enables the plugin), else through ``rabbitmqctl`` (an Erlang VM per call: close to a second
each, three calls a test, which was a fifth of ``make test``).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from typing import Any
from urllib.parse import quote

import httpx

API = os.environ.get("UANET_TEST_RABBITMQ_API", "http://127.0.0.1:15672/api")
AUTH = ("guest", "guest")
USER = "guest"


def rabbitmqctl(*args: str) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=60
    )
    return done.stdout


@functools.cache
def _api() -> httpx.Client | None:
    """A client of the management API, or None when the plugin is not running."""
    client = httpx.Client(base_url=API, auth=AUTH, timeout=60)
    try:
        client.get("/overview").raise_for_status()
    except httpx.HTTPError:
        client.close()
        return None
    return client


def _vhost_path(vhost: str) -> str:
    return quote(vhost, safe="")


def add_vhost(vhost: str) -> None:
    """A vhost the test user may do everything in."""
    api = _api()
    if api is None:
        rabbitmqctl("add_vhost", vhost)
        rabbitmqctl("set_permissions", "-p", vhost, USER, ".*", ".*", ".*")
        return
    api.put(f"/vhosts/{_vhost_path(vhost)}").raise_for_status()
    api.put(
        f"/permissions/{_vhost_path(vhost)}/{USER}",
        json={"configure": ".*", "write": ".*", "read": ".*"},
    ).raise_for_status()


def delete_vhost(vhost: str) -> None:
    api = _api()
    if api is None:
        rabbitmqctl("delete_vhost", vhost)
        return
    gone = api.delete(f"/vhosts/{_vhost_path(vhost)}")
    if gone.status_code != 404:
        gone.raise_for_status()


def list_queues(vhost: str) -> list[dict[str, Any]]:
    """Every queue of the vhost: name, arguments ({name: value}), durable, type."""
    api = _api()
    if api is None:
        out = rabbitmqctl(
            "list_queues",
            "-p",
            vhost,
            "--formatter",
            "json",
            "name",
            "arguments",
            "durable",
            "type",
        )
        rows: list[dict[str, Any]] = json.loads(out)
        for row in rows:
            # [[name, type, value], ...] -> {name: value}
            row["arguments"] = {name: value for name, _type, value in row["arguments"]}
        return rows
    listed = api.get(
        f"/queues/{_vhost_path(vhost)}", params={"columns": "name,arguments,durable,type"}
    )
    listed.raise_for_status()
    return [
        {
            "name": q["name"],
            "arguments": q.get("arguments") or {},
            "durable": q["durable"],
            "type": q["type"],
        }
        for q in listed.json()
    ]
