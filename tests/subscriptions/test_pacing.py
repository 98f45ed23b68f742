"""The page loop goes at the dispatchers' pace: it waits while their batch queue is full."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from services.subscriptions import pacing
from services.subscriptions.pacing import BATCH_QUEUE, Pace
from shared.messaging import Broker, Retry
from tests.shared.conftest import queue_depth
from tests.subscriptions.conftest import action_published, running_service
from tests.subscriptions.test_audience import subscriber_row


async def test_the_pace_waits_while_the_queue_is_full_and_not_when_it_cannot_tell() -> None:
    depths = iter([5, 4, 3, 1])
    asked: list[int | None] = []

    async def depth() -> int | None:
        value = next(depths)
        asked.append(value)
        return value

    loop = asyncio.get_running_loop()
    started = loop.time()
    await Pace(depth, ahead=3, poll_s=0.01).wait()
    assert asked == [5, 4, 3, 1]  # waited through 5, 4 and 3; went on at 1
    assert loop.time() - started >= 0.03  # a poll's sleep after each of the three

    async def unknown() -> int | None:
        return None

    await asyncio.wait_for(Pace(unknown, ahead=0).wait(), 1)  # never held up by not knowing


async def test_dispatchers_away_give_the_message_back_deferred() -> None:
    async def full() -> int | None:
        return 10

    pace = Pace(full, ahead=3, poll_s=0.01, stall_s=0.1)
    with pytest.raises(Retry) as raised:
        await pace.wait()
    assert raised.value.defer  # its retries are not used up: the dispatchers come back
    assert "took no batch" in raised.value.reason


async def test_a_large_audience_waits_for_the_dispatchers_then_goes_on(
    amqp_url: str, tmp_path: Path, make_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """2,500 subscribers by email are five pages of one batch each; with one batch allowed
    ahead, the loop hands over a page (two when it looks before the outbox relay published the
    first), waits while nobody takes them, and goes on as they are taken."""
    monkeypatch.setattr(pacing, "AHEAD", 1)
    by_email = [subscriber_row(n, sms_status="pending") for n in range(2500)]
    async with running_service(make_settings, tmp_path, by_email):
        publisher = Broker(amqp_url, name="test-publisher")
        await publisher.connect()
        connection = await aio_pika.connect(amqp_url)
        try:
            await publisher.publish_event(action_published())
            channel = await connection.channel()
            taken: list[dict[str, Any]] = []
            async with asyncio.timeout(60):
                while len(taken) < 5:
                    # Nobody takes the batches for a while: the loop must not run ahead.
                    while await queue_depth(amqp_url, BATCH_QUEUE) == 0:
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(1.0)
                    assert await queue_depth(amqp_url, BATCH_QUEUE) <= 2
                    queue = await channel.get_queue(BATCH_QUEUE, ensure=False)
                    message = await queue.get(no_ack=True)
                    taken.append(json.loads(message.body))
        finally:
            await connection.close()
            await publisher.close()
    assert sum(len(batch["recipients"]) for batch in taken) == 2500
