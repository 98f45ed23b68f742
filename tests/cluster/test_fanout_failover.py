"""Contract §10: stopping any one node of three in the middle of a fan-out, the leader of the
busiest queues included, loses nothing and sends nothing twice with different Message-IDs; the
fan-out completes. The services as processes (two dispatchers, two subscriptions), PostgreSQL, a
three-node cluster. A thousand alerts and a clean stop here (a node killed mid-stream is in
tests/cluster/test_broker_failover.py at the broker's level, to keep `make test` short);
bench/cluster_failover.py runs the stop, the kill and a stop during the publish with 5,000."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from devtools.rabbitmq_cluster import RabbitCluster
from shared.settings import SERVICES
from tests.cluster.fanout import IN_DOUBT_BOUND, fan_out_losing_a_node, open_cluster_stack
from tests.faults.harness import FaultStack, close_fault_stack

pytestmark = pytest.mark.e2e

FAN_OUT = 1000


@pytest.fixture
async def faults(
    cluster_url: str, pg_database: Callable[[], str], tmp_path: Path
) -> AsyncIterator[FaultStack]:
    running = await open_cluster_stack(cluster_url, {s: pg_database() for s in SERVICES}, tmp_path)
    try:
        yield running
    finally:
        await close_fault_stack(running)


@pytest.mark.slow
@pytest.mark.timeout(1800)
async def test_a_fan_out_survives_the_leader_of_its_busiest_queue_stopped(
    faults: FaultStack, rabbit_cluster: RabbitCluster, cluster_vhost: str
) -> None:
    outcome = await fan_out_losing_a_node(
        faults, rabbit_cluster, cluster_vhost, size=FAN_OUT, loss="stop"
    )
    assert outcome.delivered == FAN_OUT
    assert outcome.two_message_ids == 0
    assert outcome.resent <= IN_DOUBT_BOUND
    # The work was shared.
    assert all(sent > 0 for sent in outcome.sent_by.values()), outcome.sent_by
