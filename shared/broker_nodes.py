"""Several brokers, one cluster: a robust connection that moves to another node (contract §10).

``UANET_AMQP_URL`` may name the nodes of one RabbitMQ cluster, comma-separated. aio-pika's robust
connection reconnects to the one URL it was given; this one tries the nodes in turn, starting from
a random one (so the processes of a deployment spread over the nodes) and, when its node goes away
(connection closed, node stopped or killed), goes on with the next. aio-pika then restores its
channels: the exchanges and queues declared on them are declared again and their consumers
started again. Publishes that were waiting for a confirm fail (the caller publishes again:
the outbox relay does, a handler's settling requeues its message) and consumers are idempotent.
"""

from __future__ import annotations

import logging
import random
from typing import Any

from aio_pika.connection import make_url
from aio_pika.robust_connection import RobustConnection
from yarl import URL

log = logging.getLogger(__name__)

# Seconds between two connection attempts (each to the next node): a node lost costs about this.
RECONNECT_INTERVAL = 1.0
# Seconds a connection attempt may take, handshake included, before the next node is tried. aio-
# pika keeps the first attempt's bound for every reconnection, and without one an attempt to a
# node that takes the TCP connection and never answers (one shutting down) waited for ever: the
# process published nothing for 15 minutes in a CI run of the failover test, connected to nothing.
CONNECT_TIMEOUT = 10.0


def split_urls(value: str) -> list[str]:
    """The broker URLs of a setting: one, or several comma-separated (blanks ignored)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def node_of(url: str | URL) -> str:
    """host:port of a broker URL: what /readyz shows, never the credentials."""
    parsed = URL(str(url))
    return f"{parsed.host}:{parsed.port or 5672}"


class ClusterConnection(RobustConnection):
    """A robust connection over several nodes: each connection attempt goes to the next one."""

    def __init__(self, url: URL, *, nodes: list[str], first: int = 0, **kwargs: Any) -> None:
        self._nodes = [URL(node) for node in nodes]
        self._turn = first
        super().__init__(url, **kwargs)

    # aio-pika clears ``transport`` right before every connection attempt (its first and each
    # reconnection) and then connects to ``self.url``: the one moment to choose the node.
    @property
    def transport(self) -> Any:
        return self.__dict__.get("_cluster_transport")

    @transport.setter
    def transport(self, value: Any) -> None:
        nodes: list[URL] | None = self.__dict__.get("_nodes")
        if value is None and nodes:
            self.url = nodes[self._turn % len(nodes)]
            self._turn += 1
            log.info("connecting to broker node %s", node_of(self.url))
        self.__dict__["_cluster_transport"] = value

    @property
    def node(self) -> str:
        return node_of(self.url)


async def connect_cluster(urls: str, *, name: str) -> ClusterConnection:
    """Connect to a node of ``urls`` that answers, trying each once from a random one."""
    nodes = split_urls(urls)
    if not nodes:
        raise ValueError("no broker URL")
    start = random.randrange(len(nodes))
    error: Exception | None = None
    for offset in range(len(nodes)):
        first = (start + offset) % len(nodes)
        try:
            connection = await _connect_one(nodes, first, name)
        except Exception as exc:  # noqa: BLE001 - the next node may answer
            where = node_of(nodes[first])
            log.warning("broker node %s not reachable (%s)", where, type(exc).__name__)
            error = exc
            continue
        return connection
    assert error is not None
    raise error


async def _connect_one(nodes: list[str], first: int, name: str) -> ClusterConnection:
    """``aio_pika.connect_robust``, except that a start cancelled or failed closes what it began:
    the connection's own reconnect task would live on, held by no one and connecting for ever
    (it takes a cancellation for one more failed attempt), as when a process is stopped while
    it is still connecting."""
    options: dict[str, Any] = {
        "nodes": nodes,
        "first": first,
        "reconnect_interval": RECONNECT_INTERVAL,
    }
    connection = ClusterConnection(
        make_url(nodes[first], **options),
        client_properties={"connection_name": name},
        **options,
    )
    try:
        await connection.connect(timeout=CONNECT_TIMEOUT)
    except BaseException:
        await connection.close()
        raise
    return connection
