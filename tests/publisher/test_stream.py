"""The live counts over Server-Sent Events, through a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from services.publisher.tally import StatsNotifier, TallyConsumer
from shared import events
from tests.publisher.conftest import Api


@pytest.fixture
async def served(api: Api) -> AsyncIterator[str]:
    config = uvicorn.Config(api.app, host="127.0.0.1", port=0, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def next_stats(lines: AsyncIterator[str]) -> dict[str, Any]:
    """Reads one ``stats`` event, skipping keep-alive comments."""
    name = None
    async for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: ") and name == "stats":
            data: dict[str, Any] = json.loads(line.removeprefix("data: "))
            return data
    raise AssertionError("stream ended")


async def test_stream_sends_counts_on_connect_and_on_change(api: Api, served: str) -> None:
    action = await api.publish((await api.create())["id"])
    tally: TallyConsumer = api.app.state.tally
    notifier: StatsNotifier = api.app.state.stats_notifier
    action_id = uuid.UUID(action["id"])
    url = f"{served}/api/v1/actions/{action['id']}/stats/stream"

    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, headers=api.auth("coordinator")) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        first = await asyncio.wait_for(next_stats(lines), 10)
        assert first["action_id"] == action["id"]
        assert first["responses"]["actions"] == 0

        await tally(
            events.ResponseRecorded(
                action_id=action_id,
                subscriber_id=uuid.uuid4(),
                kind="letter",
                count=3,
                country="GB",
            )
        )
        second = await asyncio.wait_for(next_stats(lines), 10)
        assert second["responses"] == {
            "people": 1,
            "actions": 3,
            "by_kind": {"letter": 3, "email": 0, "call": 0, "sms_reply": 0, "other": 0},
        }
        assert second["by_country"]["GB"]["actions"] == 3
        assert notifier.listening(action_id) == 1

    # The client went away: the server stops streaming and forgets the listener.
    async def listener_gone() -> None:
        while notifier.listening(action_id):
            await asyncio.sleep(0.05)

    await asyncio.wait_for(listener_gone(), 10)


async def test_stream_sees_counts_made_by_another_process(api: Api, served: str) -> None:
    """A change this process was not told of (another publisher counted it) arrives by polling."""
    action = await api.publish((await api.create())["id"])
    other_process = TallyConsumer(api.app.state.database, StatsNotifier())
    url = f"{served}/api/v1/actions/{action['id']}/stats/stream"
    async with (
        httpx.AsyncClient(timeout=10) as client,
        client.stream("GET", url, headers=api.auth("admin")) as response,
    ):
        lines = response.aiter_lines()
        await asyncio.wait_for(next_stats(lines), 10)
        await other_process(
            events.AudienceCounted(
                action_id=uuid.UUID(action["id"]), recipients={"email": 7}, by_country={"FR": 7}
            )
        )
        changed = await asyncio.wait_for(next_stats(lines), 10)
        assert changed["recipients"] == {"email": 7, "sms": 0}
        assert changed["by_country"] == {"FR": {"recipients": 7, "people": 0, "actions": 0}}
