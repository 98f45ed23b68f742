"""Cluster benchmark: an N-alert email fan-out (default 100,000) on PostgreSQL, on the single
RabbitMQ node and on a three-node cluster (devtools/rabbitmq_cluster.py), with one and with two
dispatcher processes; then on the cluster with two dispatchers losing the node that leads the
busiest queue halfway. Prints each run's rate, each process's CPU per message (and PostgreSQL's),
the cluster/single ratio, and for the loss the seconds until the rate is back (80% of before).

    .venv/bin/python bench/cluster.py [-n 100000] [--runs single1,single2,cluster1,cluster2,loss]

Postfix's smtp-sink takes the mail (bench/fanout.py). Not a test. Needs root (the cluster's nodes
run as the rabbitmq user), RabbitMQ installed, PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fanout import SmtpSink, cpu_seconds, database_backends  # noqa: E402
from bench.scratch import Scratch, scratch  # noqa: E402
from devtools.rabbitmq_cluster import RabbitCluster, default_folder  # noqa: E402
from devtools.twilio_fake import FakeTwilio  # noqa: E402
from shared.settings import SERVICES  # noqa: E402
from tests.e2e.stack import ACCOUNT_SID, AUTH_TOKEN, Stack, stack_environment  # noqa: E402
from tests.faults.harness import ACTION, seed_subscribers  # noqa: E402
from tests.support import SmtpRecorder, free_port  # noqa: E402

BUSIEST = "dispatcher.batches"
SAMPLE = 0.1  # seconds between two looks at the sink's count


@dataclass
class Run:
    label: str
    n: int
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)
    recovery: float | None = None
    lowest: float | None = None

    @property
    def rate(self) -> float:
        return self.n / self.seconds


def _start_extra(stack: Stack, service: str, name: str) -> None:
    """A second process of ``service`` (its own HTTP port, the same queues and database)."""
    stack.ports[name] = free_port()
    env, first = stack.env, stack.processes.pop(service)
    stack.env = {**env, f"UANET_{service.upper()}_PORT": str(stack.ports[name])}
    try:
        stack.start(service)
    finally:
        stack.env = env
        stack.processes[name] = stack.processes.pop(service)
        stack.processes[service] = first


async def one_run(
    label: str,
    n: int,
    infra: Scratch,
    amqp_url: str,
    dispatchers: int,
    lose: tuple[RabbitCluster, str] | None = None,
) -> Run:
    sink = SmtpSink(free_port())
    twilio = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    await twilio.start()
    ports = {s: free_port() for s in SERVICES}
    env = stack_environment(
        amqp_url=amqp_url,
        database_urls=infra.database_urls,
        smtp_port=sink.port,
        twilio_base=twilio.base_url,
        ports=ports,
        secret="bench-secret-key",
    )
    stack = Stack(env=env, smtp=SmtpRecorder(), twilio=twilio, log_dir=infra.workdir, ports=ports)
    run = Run(label, n)
    try:
        if stack.cli("migrate").returncode != 0:
            raise SystemExit("migrate failed")
        await seed_subscribers(infra.database_urls["subscriptions"], emails=n, prefix=label)
        for service in SERVICES:
            stack.start(service)
        for extra in range(2, dispatchers + 1):
            _start_extra(stack, "dispatcher", f"dispatcher-{extra}")
        for name in stack.processes:
            await stack.wait_ready(name)
        token = stack.cli("token", "create", "--role", "admin", "--name", "bench")
        auth = {"Authorization": f"Bearer {token.stdout.strip().splitlines()[-1]}"}
        api = stack.url("publisher") + "/api/v1/actions"
        pid = None
        if lose is not None:
            cluster, vhost = lose
            leader = cluster.node_named(cluster.queue_leaders(vhost)[BUSIEST])
            pid = (cluster, cluster.os_pid(leader), leader.port)
        async with httpx.AsyncClient(timeout=60) as client:
            created = await client.post(api, json={**ACTION, "channels": ["email"]}, headers=auth)
            action_id = created.json()["id"]
            before = {s: cpu_seconds(p.pid) for s, p in stack.processes.items()}
            backends = database_backends(infra.databases)
            published = time.monotonic()
            answer = await client.post(f"{api}/{action_id}/publish", headers=auth)
            assert answer.status_code == 200, answer.text
        if pid is not None:
            run.recovery, run.lowest = await _lose_halfway(sink, n, *pid)
        last = await asyncio.to_thread(sink.wait_for, n, 1800)
        if last is None:
            raise SystemExit(f"{label}: only {sink.count} of {n} arrived")
        run.seconds = last - published
        run.cpu = {s: cpu_seconds(p.pid) - before[s] for s, p in stack.processes.items()}
        for backend, (service, seconds) in database_backends(infra.databases).items():
            key = f"postgres for {service}"
            run.cpu[key] = run.cpu.get(key, 0.0) + seconds - backends.get(backend, ("", 0.0))[1]
    finally:
        stack.stop_all()
        await twilio.stop()
        sink.stop()
    return run


async def _lose_halfway(
    sink: SmtpSink, n: int, cluster: RabbitCluster, pid: int, port: int
) -> tuple[float, float]:
    """SIGTERM (a clean stop) to the leader's node at n/2. Returns the seconds from the node
    gone (its port closed) until the rate over the last second stayed at 80% or more of the
    rate before the loss (0: it never fell below), and the lowest one-second rate after it
    went, as a share of the rate before."""
    seen: list[tuple[float, int]] = []
    while sink.count < n // 2:
        seen.append((time.monotonic(), sink.count))
        await asyncio.sleep(SAMPLE)
    then = time.monotonic()
    earlier = next(((t, c) for t, c in reversed(seen) if then - t >= 1.0), seen[0])
    before = (sink.count - earlier[1]) / max(then - earlier[0], SAMPLE)
    stopping = asyncio.create_task(asyncio.to_thread(cluster.kill_pid, pid, signal.SIGTERM))
    while not _closed(port):
        await asyncio.sleep(0.02)
    gone = time.monotonic()
    window: list[tuple[float, int]] = [(gone, sink.count)]
    last_low, lowest = gone, float("inf")
    while sink.count < n * 0.95:
        await asyncio.sleep(SAMPLE)
        now = time.monotonic()
        window.append((now, sink.count))
        start = next(((t, c) for t, c in reversed(window) if now - t >= 1.0), None)
        if start is None:
            continue
        rate = (sink.count - start[1]) / (now - start[0])
        lowest = min(lowest, rate)
        if rate < 0.8 * before:
            last_low = now
    await stopping
    return last_low - gone, lowest / before


def _closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


async def run(n: int, runs: list[str]) -> None:
    results: dict[str, Run] = {}
    cluster: RabbitCluster | None = None
    try:
        for label in runs:
            with scratch("uanet-cluster", postgres=True) as infra:
                dispatchers = 1 if label.endswith("1") else 2
                if label.startswith("single"):
                    results[label] = await one_run(label, n, infra, infra.amqp_url, dispatchers)
                else:
                    if cluster is None:
                        cluster = RabbitCluster(default_folder(), port=5680)
                        began = time.monotonic()
                        await asyncio.to_thread(cluster.start)
                        print(f"cluster of 3 started in {time.monotonic() - began:.1f}s")
                    for node in cluster.nodes:
                        if not cluster.running(node):
                            cluster.start_node(node)
                    vhost = f"uanet-bench-{label}"
                    cluster.add_vhost(vhost)
                    lose = (cluster, vhost) if label == "loss" else None
                    results[label] = await one_run(
                        label, n, infra, cluster.urls(vhost), dispatchers, lose
                    )
            _print(results[label])
    finally:
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
    for dispatchers in (1, 2):
        single = results.get(f"single{dispatchers}")
        clustered = results.get(f"cluster{dispatchers}")
        if single and clustered:
            ratio = clustered.rate / single.rate
            print(f"{dispatchers} dispatcher(s): cluster/single rate {ratio:.2f}")


def _print(run: Run) -> None:
    line = f"{run.label}: N = {run.n}, {run.seconds:.1f}s, {run.rate:.0f} messages/s"
    if run.recovery is not None:
        line += (
            f", node lost at 50%: rate back to 80% {run.recovery:.1f}s after the node went, "
            f"lowest one-second rate {run.lowest:.0%} of before"
        )
    print(line, flush=True)
    for name, seconds in sorted(run.cpu.items()):
        print(f"  CPU {name}: {seconds:.1f}s, {seconds / run.n * 1e6:.0f} us a message", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="alerts (default 100000)")
    parser.add_argument("--runs", default="single1,single2,cluster1,cluster2,loss")
    args = parser.parse_args()
    asyncio.run(run(args.n, [r.strip() for r in args.runs.split(",")]))


if __name__ == "__main__":
    main()
