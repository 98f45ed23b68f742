"""A fan-out on a three-node RabbitMQ cluster with PostgreSQL, two dispatchers and two
subscriptions processes, while one broker node goes away: the scenario of
tests/cluster/test_fanout_failover.py (a thousand alerts) and bench/cluster_failover.py (5,000)."""

from __future__ import annotations

import asyncio
import random
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx

from devtools.rabbitmq_cluster import Node, RabbitCluster
from tests.conftest import SECRET
from tests.faults.harness import FaultStack, open_fault_stack, seed_subscribers
from tests.support import eventually

Loss = Literal["stop", "kill", "publish"]
# SMTP connections per dispatcher: two sends in flight on each (smtp_sender.SmtpEmailSender).
SMTP_CONCURRENCY = 4
DISPATCHERS = ("dispatcher", "dispatcher-2")
# What can be sent again when a node goes: a send accepted by the relay whose ledger commit had
# not happened yet, at most every send in flight (README, "Deploys and crashes").
IN_DOUBT_BOUND = len(DISPATCHERS) * 2 * SMTP_CONCURRENCY
BUSIEST = "dispatcher.batches"
EMAIL_RATE = 100


@dataclass
class Outcome:
    size: int
    loss: Loss
    node: str
    delivered: int
    resent: int
    two_message_ids: int
    sent_by: dict[str, float]
    seconds: float


async def open_cluster_stack(
    cluster_url: str, database_urls: dict[str, str], log_dir: Path
) -> FaultStack:
    faults = await open_fault_stack(
        amqp_url=cluster_url,
        database_urls=database_urls,
        log_dir=log_dir,
        secret=SECRET,
        env={
            "UANET_SMTP_CONCURRENCY": str(SMTP_CONCURRENCY),
            # Long enough for a node to go away in the middle of it.
            "UANET_EMAIL_RATE": str(EMAIL_RATE),
        },
    )
    faults.start_replica("dispatcher", "dispatcher-2")
    faults.start_replica("subscriptions", "subscriptions-2")
    await faults.ready("dispatcher-2")
    await faults.ready("subscriptions-2")
    return faults


async def broker_node(faults: FaultStack, process: str) -> str | None:
    async with httpx.AsyncClient(timeout=10) as client:
        body = (await client.get(faults.stack.url(process) + "/readyz")).json()
    node: str | None = body.get("broker_node")
    return node


def _closed(port: int) -> bool:
    """The node no longer takes connections."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _node_at(cluster: RabbitCluster, address: str) -> Node:
    return next(n for n in cluster.nodes if address.endswith(f":{n.port}"))


async def fan_out_losing_a_node(
    faults: FaultStack, cluster: RabbitCluster, vhost: str, *, size: int, loss: Loss
) -> Outcome:
    addresses, _ = await seed_subscribers(faults.database_urls["subscriptions"], emails=size)
    token = await faults.token()
    began = time.monotonic()
    if loss == "publish":
        # The node the publisher is on goes while the action is published: its outbox relay
        # publishes the event on another node.
        address = await broker_node(faults, "publisher")
        assert address is not None
        node = _node_at(cluster, address)
        stopping = asyncio.create_task(asyncio.to_thread(cluster.stop_node, node))
        await asyncio.sleep(random.uniform(0.0, 1.5))
        action_id = await faults.publish(token, channels=["email"])
        await stopping
        moved = await broker_node(faults, "publisher")
        assert moved is not None and moved != address, "the publisher stayed on a stopped node"
    else:
        # Quorum queue leaders stay where they were declared until a node goes: ask first.
        leaders = await asyncio.to_thread(cluster.queue_leaders, vhost)
        node = cluster.node_named(leaders[BUSIEST])
        pid = await asyncio.to_thread(cluster.os_pid, node)
        action_id = await faults.publish(token, channels=["email"])
        # At a random moment of the fan-out, with sends under way.
        moment = random.randint(size // 10, size // 4)
        await eventually(
            lambda: faults.smtp.total >= moment,
            timeout=120,
            interval=0.01,
            what=f"the fan-out under way ({moment} sent)",
        )
        # A clean stop (SIGTERM, what a service manager sends) or a lost machine (SIGKILL).
        sig = signal.SIGTERM if loss == "stop" else signal.SIGKILL
        losing = asyncio.create_task(asyncio.to_thread(cluster.kill_pid, pid, sig))
        await eventually(lambda: _closed(node.port), timeout=120, interval=0.05, what="node gone")
        assert faults.smtp.total < size, "the fan-out ended before the node went"
        await losing
    await eventually(
        lambda: len(faults.smtp.accepted) >= size, timeout=300, what="every alert delivered"
    )

    async def settled() -> bool:
        ledger = await faults.ledger(action_id)
        return ledger["sent"] == size

    await eventually(settled, timeout=60, what="every ledger row sent")
    seconds = time.monotonic() - began
    assert set(faults.smtp.accepted) == set(addresses)
    two_ids = sum(1 for ids in faults.smtp.message_ids.values() if len(set(ids)) > 1)
    sent_by = {
        name: await faults.metric(name, 'uanet_dispatcher_sent_total{channel="email"}')
        for name in DISPATCHERS
    }
    return Outcome(
        size=size,
        loss=loss,
        node=node.name,
        delivered=len(faults.smtp.accepted),
        resent=sum(faults.smtp.sent_twice().values()),
        two_message_ids=two_ids,
        sent_by=sent_by,
        seconds=seconds,
    )
