"""Broker.queue_depth: what waits in a queue, asked without declaring anything."""

from __future__ import annotations

from shared.messaging import Broker
from tests.shared.conftest import WORK, erased


async def test_the_depth_counts_ready_messages_and_a_missing_queue_is_unknown(
    broker: Broker,
) -> None:
    assert await broker.queue_depth(WORK.name) == 0
    for _ in range(3):
        await broker.publish_event(erased())
    assert await broker.queue_depth(WORK.name) == 3

    # A queue that does not exist: not known, and not an error of the caller; the broker's
    # refusal closes only the probing channel, so publishing and asking again still work.
    assert await broker.queue_depth("no.such.queue") is None
    await broker.publish_event(erased())
    assert await broker.queue_depth(WORK.name) == 4
    assert await broker.queue_depth("no.such.queue") is None
    assert await broker.queue_depth(WORK.name) == 4


async def test_a_closed_broker_cannot_say(amqp_url: str) -> None:
    broker = Broker(amqp_url, name="uanet-test")
    assert await broker.queue_depth(WORK.name) is None
