"""The webhook deliverer in-process against the real database and a receiver on loopback: what
one endpoint can and cannot do to the others, disabling, and memory with a long backlog."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.publisher.webhooks.delivery import IN_ALL, PER_ENDPOINT
from services.publisher.webhooks.slots import FairSlots
from tests.publisher.conftest import Api
from tests.publisher.webhook_lanes import (
    add,
    backlog_memory,
    delivering,
    inbox_on_loopback,
    publisher_database,
    record,
    states,
)
from tests.support import eventually

MB = 1024 * 1024


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


async def test_failing_without_a_success_for_the_set_time_disables_the_endpoint(
    api: Api,
) -> None:
    """UANET_WEBHOOK_DISABLE_AFTER (5 days) shortened to seconds: the endpoint stays active while
    it fails for less, and is disabled, saying why, once it has failed for that long."""
    database = api.app.state.database

    async def respond(_endpoint: str, _calls: int) -> int:
        return 500

    async def listed() -> dict[str, Any]:
        response = await api.client.get("/api/v1/webhooks", headers=api.auth("admin"))
        assert response.status_code == 200
        item: dict[str, Any] = response.json()["items"][0]
        return item

    async with inbox_on_loopback(respond) as inbox:
        await add(database, inbox, "dead", ["action.closed"])
        await record(database, "action.closed", 1)
        disable_after = timedelta(seconds=3)
        retries = [timedelta(seconds=0.2)] * 100
        async with delivering(database, retry_delays=retries, disable_after=disable_after):
            started = asyncio.get_running_loop().time()
            await eventually(lambda: len(inbox.to("dead")) >= 2, what="tries failing")
            early = await listed()
            assert (early["state"], early["disabled_reason"]) == ("active", None)
            assert early["failures_in_a_row"] >= 2
            disabled = await eventually(
                lambda: _if_disabled(listed()), timeout=15, what="the endpoint disabled"
            )
            took = asyncio.get_running_loop().time() - started
            tries = len(inbox.to("dead"))
            await asyncio.sleep(1)
            assert len(inbox.to("dead")) == tries, "nothing more is sent to a disabled endpoint"
    assert took >= disable_after.total_seconds() - 0.5
    assert disabled["disabled_reason"].startswith("failing without a success since ")
    assert disabled["disabled_reason"].endswith(" UTC")
    assert disabled["last_success_at"] is None


async def _if_disabled(listed: Awaitable[dict[str, Any]]) -> dict[str, Any] | None:
    item = await listed
    return item if item["state"] == "disabled" else None


@pytest.mark.timeout(120)
async def test_memory_stays_flat_with_100000_deliveries_waiting_for_a_dead_endpoint(
    tmp_path: Path,
) -> None:
    """The same number of failed tries with 1,000 and with 100,000 waiting: the deliverer's
    memory over them does not grow with what waits (bench/webhook_backlog.py prints it)."""
    measured = []
    for waiting in (1000, 100_000):
        url = f"sqlite+aiosqlite:///{tmp_path / f'backlog{waiting}.db'}"
        async with publisher_database(url) as database:
            measured.append(await backlog_memory(database, waiting=waiting, tries=480))
    small, large = measured
    print(small, large, sep="\n")
    assert large.tries >= 480
    assert large.peak_growth < small.peak_growth + MB, "the passes hold no more for more waiting"
    assert large.held_growth < MB, "nothing accumulates pass after pass"


def test_a_lane_always_gets_its_share_whatever_the_others_borrowed() -> None:
    slots = FairSlots(total=64, per_lane=16)
    for lane in "abcdef":
        slots.join(lane)
    assert slots.share == 10
    assert slots.take("a", 16) == 14, "its share, and what no other lane is owed"
    assert [slots.take(lane, 16) for lane in "bcde"] == [10] * 4
    assert slots.take("f", 16) == 10, "the last lane still gets its share at once"
    slots.release("f", 10)
    slots.leave("e")  # 5 lanes: a share of 12; 14 + 3 x 12 owed to the others
    assert slots.take("f", 16) == 14 and slots.take("f", 16) == 0
    slots.release("a", 14)
    assert slots.take("a", 3) == 3
