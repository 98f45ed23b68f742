"""One broker node of three goes away (stopped, or its Erlang VM killed) while a consumer takes
messages from a queue it leads and a publisher publishes: the consumer moves to another node and
goes on, the queue elects another leader, and nothing published is lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from devtools.rabbitmq_cluster import RabbitCluster
from shared import events
from shared.broker_nodes import node_of, split_urls
from shared.messaging import Broker
from tests.shared.conftest import TEST_QUEUES, WORK, Recorder, erased
from tests.support import eventually

MESSAGES = 400


async def _publish_until_confirmed(broker: Broker, event: events.Message) -> int:
    """What the outbox relay does: publish until the broker confirms; returns the tries."""
    tries = 0
    while True:
        tries += 1
        try:
            await broker.publish_event(event)
            return tries
        except Exception:  # noqa: BLE001 - the node went away: publish it again
            await asyncio.sleep(0.2)


# About one run in four on a loaded machine (6 December), the clients reconnected to a surviving
# node before the quorum queues had new leaders, and then consumed nothing with the connection up
# and the channel open. The likeliest cause, not caught in the act since (0 stalls in 10 runs
# under load on 7 December): the call that restores the consumer's queue went unanswered, which
# aio-pika awaits without a bound (tests/shared/test_reconnect.py reproduces that). Broker's
# watch now counts a channel not restored, or a consumer missing from its channel, as not back
# and connects again after RESTORE_TIMEOUT; the 90 s below leave room for that.
@pytest.mark.timeout(900)
@pytest.mark.parametrize("loss", ["stop", "kill"])
async def test_a_node_lost_mid_stream_loses_nothing(
    rabbit_cluster: RabbitCluster, cluster_url: str, cluster_vhost: str, loss: str
) -> None:
    nodes = {node_of(url) for url in split_urls(cluster_url)}
    recorder = Recorder()
    consumer = Broker(cluster_url, name="uanet-test-consumer", queues=TEST_QUEUES)
    # Declared first, from the consumer's node: RabbitMQ puts a quorum queue's leader on the
    # node of the client that declares it, so losing that node loses the leader too.
    await consumer.connect()
    publisher = Broker(cluster_url, name="uanet-test-publisher", queues=TEST_QUEUES)
    await publisher.connect()
    try:
        first_node = consumer.node
        assert first_node in nodes
        await consumer.consume(WORK.name, recorder, [events.SubscriberErased], prefetch=20)
        leaders = await asyncio.to_thread(rabbit_cluster.queue_leaders, cluster_vhost)
        leader = rabbit_cluster.node_named(leaders[WORK.name])
        assert node_of(leader.url()) == first_node

        sent = [erased() for _ in range(MESSAGES)]
        lost: asyncio.Task[None] | None = None
        lose: Callable[[], None] = (
            (lambda: rabbit_cluster.stop_node(leader))
            if loss == "stop"
            else (lambda: rabbit_cluster.kill_node(leader))
        )
        for i, event in enumerate(sent):
            if i == MESSAGES // 4:
                # While publishing goes on and the consumer holds messages unacked.
                lost = asyncio.create_task(asyncio.to_thread(lose))
            await _publish_until_confirmed(publisher, event)
            await asyncio.sleep(0.005)
        assert lost is not None
        await lost

        wanted = {str(e.message_id) for e in sent}
        await eventually(lambda: wanted <= set(recorder.ids()), timeout=90, what="every message")
        assert set(recorder.ids()) == wanted
        # Redelivered at most what was unacked or unconfirmed when the node went.
        assert len(recorder.ids()) - len(wanted) <= 2 * 20 + 10
        assert consumer.reconnections >= 1
        assert consumer.node is not None and consumer.node != first_node
        new_leaders = await asyncio.to_thread(rabbit_cluster.queue_leaders, cluster_vhost)
        assert new_leaders[WORK.name] != leader.name
    finally:
        await publisher.close()
        await consumer.close()


async def test_a_service_connects_to_a_node_that_answers(
    rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    """The first node named is down (a closed port): the broker connects to the next one."""
    dead = "amqp://guest:guest@127.0.0.1:1/" + cluster_vhost
    urls = ",".join([dead, *split_urls(rabbit_cluster.urls(cluster_vhost))])
    for _ in range(3):  # each start picks its first node at random
        broker = Broker(urls, name="uanet-test", queues=TEST_QUEUES)
        await broker.connect()
        try:
            assert broker.node in {node_of(n.url()) for n in rabbit_cluster.nodes}
        finally:
            await broker.close()
