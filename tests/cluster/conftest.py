"""A three-node RabbitMQ cluster on this machine (devtools/rabbitmq_cluster.py), started once for
the tests that need one, and a fresh vhost on it per test. The machine's own node on 5672 is left
alone; a node a test stopped or killed is started again before the next test."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest

from devtools.rabbitmq_cluster import RabbitCluster, default_folder


def _free_ports(count: int) -> int:
    """A first port such that it and the next ``count - 1`` (and their +20000 distribution
    ports) are free now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count >= 45000 or first < 20000:
            continue
        ports = [first + i for i in range(count)] + [first + 20000 + i for i in range(count)]
        if all(_free(port) for port in ports):
            return first
    raise RuntimeError("no block of free ports")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.fixture(scope="session")
def rabbit_cluster() -> Iterator[RabbitCluster]:
    cluster = RabbitCluster(default_folder(), port=_free_ports(3))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster_vhost(rabbit_cluster: RabbitCluster) -> Iterator[str]:
    """A fresh vhost on the cluster, every node running; deleted afterwards."""
    for node in rabbit_cluster.nodes:
        if not rabbit_cluster.running(node):
            rabbit_cluster.start_node(node)
    vhost = f"uanet-cluster-{uuid.uuid4().hex[:10]}"
    rabbit_cluster.add_vhost(vhost)
    try:
        yield vhost
    finally:
        for node in rabbit_cluster.nodes:
            if not rabbit_cluster.running(node):
                rabbit_cluster.start_node(node)
        rabbit_cluster.ctl(rabbit_cluster.nodes[0], "delete_vhost", vhost)


@pytest.fixture
def cluster_url(rabbit_cluster: RabbitCluster, cluster_vhost: str) -> str:
    """UANET_AMQP_URL naming every node of the cluster, on this test's vhost."""
    return rabbit_cluster.urls(cluster_vhost)
