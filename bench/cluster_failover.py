"""A fan-out of N alerts (default 5,000) on a three-node RabbitMQ cluster with PostgreSQL, two
dispatchers and two subscriptions processes, while one broker node goes away: stopped (the leader
of the busiest queue), killed (SIGKILL of its Erlang VM), and stopped during the publish (the
publisher's node: its outbox relay fails over). Prints, for each: delivered, sent again, recipients
with two different Message-IDs, each dispatcher's share, seconds.

    .venv/bin/python bench/cluster_failover.py [-n 5000] [--loss stop,kill,publish]

The scenario is tests/cluster/fanout.py (the test runs it with 1,000 and a stop). Needs root (the
cluster's nodes run as the rabbitmq user), RabbitMQ installed and PostgreSQL, like the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch  # noqa: E402
from devtools.rabbitmq_cluster import RabbitCluster, default_folder  # noqa: E402
from tests.cluster.fanout import (  # noqa: E402
    IN_DOUBT_BOUND,
    Loss,
    fan_out_losing_a_node,
    open_cluster_stack,
)
from tests.faults.harness import close_fault_stack  # noqa: E402


async def one(cluster: RabbitCluster, n: int, loss: Loss) -> None:
    for node in cluster.nodes:
        if not cluster.running(node):
            cluster.start_node(node)
    vhost = f"uanet-bench-{loss}"
    cluster.add_vhost(vhost)
    try:
        with scratch("uanet-cluster", postgres=True) as infra:
            faults = await open_cluster_stack(
                cluster.urls(vhost), infra.database_urls, infra.workdir
            )
            try:
                o = await fan_out_losing_a_node(faults, cluster, vhost, size=n, loss=loss)
            finally:
                await close_fault_stack(faults)
    finally:
        for node in cluster.nodes:
            if not cluster.running(node):
                cluster.start_node(node)
        cluster.ctl(cluster.nodes[0], "delete_vhost", vhost)
    shares = ", ".join(f"{name} {sent:.0f}" for name, sent in o.sent_by.items())
    print(
        f"{loss}: node {o.node}: delivered {o.delivered}/{o.size}, sent again {o.resent} "
        f"(bound {IN_DOUBT_BOUND}), two Message-IDs {o.two_message_ids}, sent by {shares}, "
        f"{o.seconds:.1f} s",
        flush=True,
    )


async def run(n: int, losses: list[Loss]) -> None:
    cluster = RabbitCluster(default_folder(), port=5680)
    await asyncio.to_thread(cluster.start)
    try:
        for loss in losses:
            await one(cluster, n, loss)
    finally:
        await asyncio.to_thread(cluster.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="alerts (default 5000)")
    parser.add_argument("--loss", default="stop,kill,publish")
    args = parser.parse_args()
    losses = [cast(Loss, loss.strip()) for loss in args.loss.split(",")]
    asyncio.run(run(args.n, losses))


if __name__ == "__main__":
    main()
