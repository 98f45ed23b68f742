"""The robust connection: after the broker drops every connection, consumers and publishers
go on."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aio_pika.robust_queue import RobustQueue

from shared import events, messaging
from shared.messaging import Broker
from tests.broker_admin import rabbitmqctl
from tests.shared.conftest import (
    TEST_QUEUES,
    WORK,
    Recorder,
    erased,
    eventually,
    vhost_of,
)


async def _consumers(amqp_url: str, queue: str) -> int:
    out = await asyncio.to_thread(
        rabbitmqctl,
        "list_queues",
        "-p",
        vhost_of(amqp_url),
        "--formatter",
        "json",
        "name",
        "consumers",
    )
    return int(next(row["consumers"] for row in json.loads(out) if row["name"] == queue))


async def _connections(amqp_url: str) -> int:
    out = await asyncio.to_thread(
        rabbitmqctl, "list_connections", "--formatter", "json", "vhost", "state"
    )
    vhost = vhost_of(amqp_url)
    return sum(1 for row in json.loads(out) if row["vhost"] == vhost and row["state"] == "running")


async def test_consumer_and_publisher_survive_the_broker_closing_connections(
    broker: Broker, amqp_url: str
) -> None:
    recorder = Recorder()
    await broker.consume(WORK.name, recorder, [events.SubscriberErased], prefetch=5)
    # A second process publishing, as a service publishes another service's events.
    publisher = Broker(amqp_url, name="uanet-test-publisher", queues=TEST_QUEUES)
    await publisher.connect()
    try:
        before = erased()
        await publisher.publish_event(before)
        await eventually(lambda: recorder.got)
        assert await _connections(amqp_url) == 2

        # Only this test's vhost: other test runs on the broker are left alone.
        await asyncio.to_thread(
            rabbitmqctl, "close_all_connections", "-p", vhost_of(amqp_url), "test"
        )
        await eventually(lambda: broker.reconnections >= 1, timeout=15)

        after = erased()

        async def publish() -> bool:
            try:
                await publisher.publish_event(after)
            except Exception:  # noqa: BLE001 - still reconnecting
                return False
            return True

        await eventually(publish, timeout=30, interval=0.2)
        await eventually(lambda: len(recorder.got) == 2, timeout=30)
        assert recorder.ids() == [str(before.message_id), str(after.message_id)]
        assert broker.connected and publisher.connected

        # The consumer was restored once, not lost and not doubled. The broker's consumer
        # count lags the consumer itself under load, so wait for it to settle.
        async def one_consumer() -> bool:
            return await _consumers(amqp_url, WORK.name) == 1

        await eventually(one_consumer, timeout=10, interval=0.2)
        assert await _connections(amqp_url) == 2

        # And the consuming side's own publishes (retries, dead letters) work too.
        third = erased()
        await broker.publish_event(third)
        await eventually(lambda: len(recorder.got) == 3)
    finally:
        await publisher.close()


@pytest.fixture
async def watched(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Broker, Recorder]]:
    """A broker consuming WORK into a recorder, its watch looking every 0.2 s and giving
    restoring 1 s."""
    monkeypatch.setattr(messaging, "RESTORE_TIMEOUT", 1.0)
    monkeypatch.setattr(messaging, "WATCH_INTERVAL", 0.2)
    broker = Broker(amqp_url, name="uanet-test-watched", queues=TEST_QUEUES)
    await broker.connect()
    recorder = Recorder()
    try:
        await broker.consume(WORK.name, recorder, [events.SubscriberErased], prefetch=5)
        yield broker, recorder
    finally:
        await broker.close()


async def _until_dropped(broker: Broker) -> None:
    """What a broker call whose answer never comes does: it ends only with its connection, and
    then fails as its connection did (calling the real one afterwards, on a connection that is
    gone, could wait for ever under load: a stall of the test's making, not the broker's)."""
    connection = broker._connection
    assert connection is not None and connection.transport is not None
    await asyncio.shield(connection.transport.connection.closing)
    raise ConnectionError("the connection was dropped under a broker call")


async def _stuck_then_made_again(
    broker: Broker, recorder: Recorder, amqp_url: str, hung: list[bool]
) -> None:
    """Drop the broker's connections; once its restoring is stuck (``hung``), the broker must
    publish and consume again, by a connection its watch made anew."""
    await asyncio.to_thread(rabbitmqctl, "close_all_connections", "-p", vhost_of(amqp_url), "test")
    await eventually(lambda: hung, timeout=15)

    event = erased()

    async def publish() -> bool:
        try:
            await broker.publish_event(event)
        except Exception:  # noqa: BLE001 - not back yet
            return False
        return True

    await eventually(publish, timeout=30, interval=0.2)
    await eventually(lambda: str(event.message_id) in recorder.ids(), timeout=15)
    assert broker.forced_reconnections >= 1


async def test_a_connection_whose_channels_never_come_back_is_made_again(
    amqp_url: str, watched: tuple[Broker, Recorder]
) -> None:
    """RabbitMQ was seen never answering the declare that restores a channel (a quorum queue
    electing a new leader): the connection is up, its channels closed for good. The broker
    drops such a connection and makes it again."""
    broker, recorder = watched
    channel = broker.channel
    reopen = channel.reopen
    hung: list[bool] = []

    async def reopen_that_hangs_once() -> None:
        connection = broker._connection
        transport = connection.transport if connection is not None else None
        if not hung and transport is not None and not transport.connection.is_closed:
            hung.append(True)  # restoring on a connection that is up
            await _until_dropped(broker)
        await reopen()

    channel.reopen = reopen_that_hangs_once  # type: ignore[method-assign]
    await _stuck_then_made_again(broker, recorder, amqp_url, hung)


async def test_a_channel_open_but_never_restored_is_noticed_and_made_again(
    amqp_url: str, watched: tuple[Broker, Recorder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cluster stall of issue 17: after a reconnection the consumer's channel opened, then
    the declare that restores its queue was never answered. The channel is open at the protocol
    level and the connection up, but nothing is consumed: the watch sees the channel not
    restored (and the consumer missing) and makes the connection again."""
    broker, recorder = watched
    [(queue, _tag)] = broker._consumers
    restore = RobustQueue.restore
    hung: list[bool] = []

    async def restore_that_hangs_once(self: RobustQueue, channel: object = None) -> None:
        if self is queue and not hung:
            hung.append(True)
            # The stall as seen: every other channel back and open. aio-pika restores the
            # channels one after another in no set order; restored here first, they are.
            for other in broker._channels():
                if other is not queue.channel:
                    await other.restore()  # type: ignore[attr-defined]
            assert not any(channel.is_closed for channel in broker._channels())
            await _until_dropped(broker)
        await restore(self)

    # On the class: a queue's attributes are slots.
    monkeypatch.setattr(RobustQueue, "restore", restore_that_hangs_once)
    await _stuck_then_made_again(broker, recorder, amqp_url, hung)
