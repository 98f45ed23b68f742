"""The webhook deliverer in-process against the real database and a receiver on loopback: what
one endpoint can and cannot do to the others, disabling, and memory with a long backlog."""

from __future__ import annotations

import asyncio

import pytest

from services.publisher.webhooks.delivery import IN_ALL, PER_ENDPOINT
from tests.publisher.conftest import Api
from tests.publisher.webhook_lanes import add, delivering, inbox_on_loopback, record, states
from tests.support import eventually


@pytest.mark.parametrize("hanging", [1, IN_ALL // PER_ENDPOINT + 1])
async def test_hanging_endpoints_on_the_same_host_hold_back_no_other(
    api: Api, hanging: int
) -> None:
    """One hanging endpoint with more events waiting than it may try at once shares its host with
    a healthy one (two Zapier hooks): a per-host connection limit would starve the healthy one.
    Enough hanging endpoints to fill every try in flight would starve it of the global limit."""
    database = api.app.state.database
    release = asyncio.Event()
    in_hang = 0

    async def respond(endpoint: str, _calls: int) -> int:
        nonlocal in_hang
        if endpoint.startswith("hangs"):
            in_hang += 1
            await release.wait()
        return 200

    async with inbox_on_loopback(respond) as inbox:
        for i in range(hanging):
            await add(database, inbox, f"hangs{i}", ["action.published"])
        healthy = await add(database, inbox, "healthy", ["action.closed"])
        await record(database, "action.published", PER_ENDPOINT + 8)
        async with delivering(database) as deliverer:
            await eventually(lambda: in_hang >= PER_ENDPOINT, what="the hanging tries under way")
            await asyncio.sleep(0.5)  # every hanging lane takes what it can
            await record(database, "action.closed", 20)
            deliverer.notify()
            started = asyncio.get_running_loop().time()
            await eventually(lambda: len(inbox.to("healthy")) >= 20, timeout=5, what="healthy")
            took = asyncio.get_running_loop().time() - started
            assert await states(database, healthy) == {("delivered", 1): 20}, "none failed"
            release.set()
    print(f"{hanging} hanging: 20 events to the healthy endpoint in {took:.2f} s")
    assert all(call.verified for call in inbox.to("healthy"))
