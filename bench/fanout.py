"""Fan-out benchmark: N confirmed email subscribers, one urgent action, the stack as real
processes, Postfix's ``smtp-sink`` on loopback. Prints publish -> first and last message accepted,
the rate, each service's peak memory, and the floor (aiosmtplib alone, same sink, same
concurrency, pre-built messages) with the ratio of the two rates.

    .venv/bin/python bench/fanout.py [-n 100000] [--postgres] [--concurrency C]
        [--email-rate R] [--floor-connections F] [--floor-n M]
    .venv/bin/python bench/fanout.py -n 10000 --rtt-ms 20   # the relay 20 ms away (see below)

By default it runs issue 19's method: subscribers imported with ``uanet subscribers import FILE
--confirmed``, ``UANET_EMAIL_RATE=1000000``, the dispatcher's SMTP concurrency left at its default,
the floor over 20 connections. ``--email-rate 0 --floor-connections 32`` is the method of the
figures measured before issue 19 (no rate limiter at all, the floor as wide as the dispatcher).

Not a test (``make bench-fanout``). Needs RabbitMQ (and PostgreSQL with --postgres), like the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiosmtplib
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scratch import Scratch, scratch  # noqa: E402
from devtools.latency_proxy import start_latency_proxy  # noqa: E402
from devtools.twilio_fake import FakeTwilio  # noqa: E402
from services.subscriptions.pacing import BATCH_QUEUE  # noqa: E402
from shared.settings import SERVICES, Settings  # noqa: E402
from tests.e2e.stack import (  # noqa: E402
    ACCOUNT_SID,
    AUTH_TOKEN,
    UANET,
    Stack,
    stack_environment,
)
from tests.faults.harness import ACTION  # noqa: E402
from tests.shared.conftest import queue_depth  # noqa: E402
from tests.support import SmtpRecorder, free_port  # noqa: E402

COUNTER = re.compile(rb"mesg=(\d+)")
MARK = 100_000


class SmtpSink:
    """Postfix's smtp-sink: accepts everything at C speed; ``-c`` prints a running count, read
    here to time the first and the last message accepted."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.count = 0
        self.first_at: float | None = None
        # When the count first reached each multiple of ``MARK`` (the rate along the way).
        self.marks: dict[int, float] = {}
        self.changed = threading.Condition()
        binary = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
        if not Path(binary).exists():
            print("installing postfix for smtp-sink ...", file=sys.stderr)
            subprocess.run(
                ["apt-get", "install", "-y", "postfix"],
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
                check=True,
                capture_output=True,
            )
        self.process = subprocess.Popen(
            [binary, "-c", "-u", "nobody", f"127.0.0.1:{port}", "1024"],
            stdout=subprocess.PIPE,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        buffer = b""
        while chunk := self.process.stdout.read1(4096):  # type: ignore[attr-defined]
            buffer = (buffer + chunk)[-200:]
            found = COUNTER.findall(buffer)
            if found:
                now = time.monotonic()
                with self.changed:
                    count = int(found[-1])
                    if count and self.first_at is None:
                        self.first_at = now
                    self.marks.setdefault(count // MARK * MARK, now)
                    self.count = count
                    self.changed.notify_all()

    def wait_for(self, total: int, timeout: float) -> float | None:
        """Monotonic time the sink's count reached ``total`` (None on timeout)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while self.count < total:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.changed.wait(min(left, 1.0))
            return time.monotonic()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def reset_peak_memory(pid: int) -> None:
    """Start the process's VmHWM again from its RSS now (Linux 4.0+): the peak then read is the
    fan-out's, not the start-up's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def peak_memory_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (what a 2-core machine runs short of)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def seed(stack: Stack, n: int, workdir: Path) -> str:
    """N confirmed email subscribers, through the streaming import a real network would use."""
    path = workdir / "subscribers.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["email", "name", "country", "language", "timezone", "channels"])
        for i in range(n):
            writer.writerow(
                [f"bench{i:07d}@example.net", f"Member {i}", "GB", "en", "Europe/London", "email"]
            )
    # Not stack.cli: its two-minute timeout is a test's, and a million rows take longer.
    done = subprocess.run(
        [*UANET, "subscribers", "import", str(path), "--confirmed"],
        env=stack.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr[-2000:]}")
    return "uanet subscribers import --confirmed"


async def started(
    stack: Stack, n: int, workdir: Path, seeded_in: Path | None = None
) -> tuple[dict[str, str], str]:
    """Migrated, seeded with N subscribers, the three services up: (admin auth header, the
    actions API URL)."""
    if seeded_in is not None:
        # A kept run's databases, seeded and migrated (a million takes 10+ minutes to import).
        for path in seeded_in.glob("*.db"):
            shutil.copy(path, workdir / path.name)
        print(f"seeded: the databases of {seeded_in} (expected to hold {n} subscribers)")
    if stack.cli("migrate").returncode != 0:
        raise SystemExit("migrate failed")
    if seeded_in is None:
        seeded = time.monotonic()
        how = await seed(stack, n, workdir)
        print(f"seeded {n} subscribers in {time.monotonic() - seeded:.1f}s ({how})")
    for service in SERVICES:
        stack.start(service)
    for service in SERVICES:
        # A loaded machine (and broker) can take more than the tests' minute.
        await stack.wait_ready(service, timeout=300)
    token = stack.cli("token", "create", "--role", "admin", "--name", "bench")
    auth = {"Authorization": f"Bearer {token.stdout.strip().splitlines()[-1]}"}
    return auth, stack.url("publisher") + "/api/v1/actions"


async def floor_on(sink: SmtpSink, n: int, connections: int) -> float:
    """The floor on ``sink``: its rate, once the sink has counted all ``n`` messages."""
    before = sink.count
    rate = await floor_rate(sink.port, n, connections, sample_message())
    assert await asyncio.to_thread(sink.wait_for, before + n, 60) is not None
    return rate


async def floor_on_own_sink(n: int, connections: int) -> float:
    """The floor on a fresh smtp-sink of its own (the run's sink counts the run's messages)."""
    sink = SmtpSink(free_port())
    try:
        return await floor_on(sink, n, connections)
    finally:
        sink.stop()


async def floor_rate(port: int, n: int, concurrency: int, message: bytes) -> float:
    """aiosmtplib alone: N pre-built messages, same concurrency, no broker, no database."""
    sink_count = 0
    queue = iter(range(n))

    async def worker() -> None:
        nonlocal sink_count
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await client.connect()
        for i in queue:
            await client.sendmail("alerts@localhost", [f"floor{i}@example.net"], message)
            sink_count += 1
        await client.quit()

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return n / (time.monotonic() - started)


def sample_message() -> bytes:
    """One alert as the dispatcher renders it (the same size as the real ones)."""
    from datetime import UTC, datetime

    from rendering.renderer import RecipientFill, Renderer
    from services.dispatcher.batches import _alert_text
    from services.dispatcher.models import DispatchAction

    renderer = Renderer(mail_from="Urgent Action Network <alerts@localhost>")
    action = DispatchAction(
        reference="UA 1/26",
        default_language="en",
        content=ACTION["content"],
        targets=ACTION["targets"],
        deadline=None,
    )
    prepared = renderer.alert_email(_alert_text(action), "en", has_act=True, has_preferences=True)
    fill = RecipientFill(
        to="floor@example.net",
        greeting=renderer.greeting("en", "Member"),
        act_url="http://127.0.0.1:8002/act/" + uuid.uuid4().hex,
        unsubscribe_url="http://127.0.0.1:8002/unsubscribe/" + uuid.uuid4().hex * 2,
        preferences_url="http://127.0.0.1:8002/preferences/" + uuid.uuid4().hex * 2,
    )
    return prepared.build(
        fill, now=datetime.now(UTC), message_id=f"<{uuid.uuid4().hex}@example.org>"
    )


def process_cpu(name: str) -> dict[int, float]:
    """Processes whose command line starts with ``name`` (RabbitMQ's beam.smp): pid -> CPU s."""
    found: dict[int, float] = {}
    for proc in Path("/proc").iterdir():
        try:
            if (proc / "cmdline").read_bytes().split(b"\0")[0].endswith(name.encode()):
                found[int(proc.name)] = cpu_seconds(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


def database_backends(databases: list[str]) -> dict[int, tuple[str, float]]:
    """The PostgreSQL server processes serving each service's database (the server shares the
    two cores), found by their titles: pid -> (service, CPU seconds so far)."""
    found: dict[int, tuple[str, float]] = {}
    for proc in Path("/proc").iterdir():
        try:
            title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            for service, name in zip(SERVICES, databases, strict=True):
                if title.startswith("postgres: ") and f" {name} " in title:
                    found[int(proc.name)] = (service, cpu_seconds(int(proc.name)))
        except (OSError, ValueError):
            continue  # not a process, or gone meanwhile
    return found


@dataclass(frozen=True)
class Method:
    """How a run is measured: the rate the dispatcher is given, and the floor's shape."""

    email_rate: str = "1000000"
    floor_connections: int = 20
    floor_n: int = 50_000
    # A kept run's folder (--keep) whose databases already hold the subscribers.
    seeded_in: Path | None = None


async def run(n: int, postgres: bool, concurrency: int, keep: bool, method: Method) -> None:
    with scratch("uanet-bench", postgres=postgres, keep=keep) as infra:
        await _run(infra, n, postgres, concurrency, method)


async def peak_depth(amqp_url: str, queue: str, peak: list[int]) -> None:
    """Sample the ready messages of ``queue`` every second into ``peak[0]`` (until cancelled):
    how far the audience's resolution ran ahead of the sending."""
    while True:
        peak[0] = max(peak[0], await queue_depth(amqp_url, queue))
        await asyncio.sleep(1)


async def _run(infra: Scratch, n: int, postgres: bool, concurrency: int, method: Method) -> None:
    workdir, urls, databases = infra.workdir, infra.database_urls, infra.databases
    sink = SmtpSink(free_port())
    twilio = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    await twilio.start()
    ports = {s: free_port() for s in SERVICES}
    env = stack_environment(
        amqp_url=infra.amqp_url,
        database_urls=urls,
        smtp_port=sink.port,
        twilio_base=twilio.base_url,
        ports=ports,
        secret="bench-secret-key",
    )
    env["UANET_SMTP_CONCURRENCY"] = str(concurrency)
    env["UANET_EMAIL_RATE"] = method.email_rate
    # An SmtpRecorder is only there to satisfy Stack's shape; the sink is smtp-sink.
    stack = Stack(env=env, smtp=SmtpRecorder(), twilio=twilio, log_dir=workdir, ports=ports)
    try:
        auth, api = await started(stack, n, workdir, method.seeded_in)
        floor_n = min(n, method.floor_n)
        # The floor before the run too, on a sink of its own: on a shared host the machine's
        # speed moved by a third within one sitting, and one floor after the run was the
        # ratio's largest error (docs/performance.md).
        floor_before = await floor_on_own_sink(floor_n, method.floor_connections)
        async with httpx.AsyncClient(timeout=60) as client:
            created = await client.post(api, json={**ACTION, "channels": ["email"]}, headers=auth)
            action_id = created.json()["id"]
            cpu_at_publish = {s: cpu_seconds(p.pid) for s, p in stack.processes.items()}
            backends_at_publish = database_backends(databases) if postgres else {}
            broker_at_publish = process_cpu("beam.smp")
            cpu_at_publish["smtp-sink"] = cpu_seconds(sink.process.pid)
            started_peak = {s: peak_memory_mb(p.pid) for s, p in stack.processes.items()}
            for process in stack.processes.values():
                reset_peak_memory(process.pid)
            published_at = time.monotonic()
            response = await client.post(f"{api}/{action_id}/publish", headers=auth)
            assert response.status_code == 200, response.text
        depth = [0]
        sampling = asyncio.create_task(peak_depth(infra.amqp_url, BATCH_QUEUE, depth))
        # Ten minutes, or 100 a second on a busy machine (a million took 20 minutes at 845/s).
        patience = max(600, n / 100)
        try:
            last_at = await asyncio.to_thread(sink.wait_for, n, patience)
        finally:
            sampling.cancel()
        if last_at is None or sink.first_at is None:
            raise SystemExit(f"only {sink.count} of {n} arrived in {patience:.0f} s")
        memory = {s: peak_memory_mb(p.pid) for s, p in stack.processes.items()}
        cpu = {s: cpu_seconds(p.pid) - cpu_at_publish[s] for s, p in stack.processes.items()}
        cpu["smtp-sink"] = cpu_seconds(sink.process.pid) - cpu_at_publish["smtp-sink"]
        # RabbitMQ serves the other engineers' tests too: an upper bound on this run's share.
        cpu["rabbitmq (whole node)"] = sum(
            seconds - broker_at_publish.get(pid, 0.0)
            for pid, seconds in process_cpu("beam.smp").items()
        )
        if postgres:
            # A backend that ended during the run is not counted: the pools keep theirs.
            for pid, (service, seconds) in database_backends(databases).items():
                key = f"postgres for {service}"
                cpu[key] = cpu.get(key, 0.0) + seconds - backends_at_publish.get(pid, ("", 0.0))[1]
        first = sink.first_at - published_at
        total = last_at - published_at
        rate = n / total
        floor_after = await floor_on(sink, floor_n, method.floor_connections)
        floor = (floor_before + floor_after) / 2
        print(
            f"N = {n}, SMTP concurrency {concurrency}, UANET_EMAIL_RATE {method.email_rate}, "
            f"{'PostgreSQL' if postgres else 'SQLite'}"
        )
        print(f"publish -> first accepted: {first:.2f}s")
        print(f"publish -> last accepted:  {total:.2f}s")
        print(f"rate: {rate:.0f} messages/s")
        print(
            f"floor (aiosmtplib alone, pre-built, {floor_n} messages, "
            f"{method.floor_connections} connections): {floor:.0f} messages/s "
            f"(the mean of {floor_before:.0f} before the run and {floor_after:.0f} after)"
        )
        print(f"ratio: {rate / floor:.2f} of the floor")
        if n > MARK and n % MARK == 0:
            # Is the cost per message flat as the fan-out grows? The first and the last MARK.
            first_mark = sink.marks[MARK] - published_at
            last_mark = last_at - sink.marks[n - MARK]
            for label, seconds in (("first", first_mark), ("last", last_mark)):
                print(
                    f"{label} {MARK}: {seconds:.1f}s, {MARK / seconds:.0f} messages/s, "
                    f"ratio {MARK / seconds / floor:.2f}"
                )
        for service, mb in memory.items():
            print(
                f"peak memory (VmHWM) {service}: {mb:.0f} MB during the fan-out"
                f" ({started_peak[service]:.0f} MB before it)"
            )
        print(f"peak depth of {BATCH_QUEUE}: {depth[0]} batches")
        for path in sorted(workdir.glob("*.db*")):
            print(f"file {path.name}: {path.stat().st_size / 1e6:.0f} MB")
        for service, seconds in cpu.items():
            print(
                f"CPU {service}: {seconds:.1f}s ({seconds / total:.0%} of a core, "
                f"{seconds / n * 1e6:.0f} us a message)"
            )
    finally:
        stack.stop_all()
        await twilio.stop()
        sink.stop()


async def run_distance(n: int, concurrency: int, rtt_ms: float, keep: bool) -> None:
    """The relay far away: the same fan-out twice in one stack, through the latency proxy in
    front of the sink, first at 0 ms (the proxy's own cost), then at ``rtt_ms`` (the proxy
    restarted on the same port; the dispatcher reconnects). Prints both rates, their ratio,
    the connections each run used (as the proxy saw them) and the floor."""
    with scratch("uanet-bench", keep=keep) as infra:
        await _run_distance(infra, n, concurrency, rtt_ms)


async def _run_distance(infra: Scratch, n: int, concurrency: int, rtt_ms: float) -> None:
    workdir, urls = infra.workdir, infra.database_urls
    sink = SmtpSink(free_port())
    relay_port = free_port()
    proxy = start_latency_proxy(f"127.0.0.1:{sink.port}", 0, listen_port=relay_port)
    twilio = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    await twilio.start()
    ports = {s: free_port() for s in SERVICES}
    env = stack_environment(
        amqp_url=infra.amqp_url,
        database_urls=urls,
        smtp_port=relay_port,
        twilio_base=twilio.base_url,
        ports=ports,
        secret="bench-secret-key",
    )
    env["UANET_SMTP_CONCURRENCY"] = str(concurrency)
    stack = Stack(env=env, smtp=SmtpRecorder(), twilio=twilio, log_dir=workdir, ports=ports)
    rates: dict[float, float] = {}
    try:
        auth, api = await started(stack, n, workdir)
        print(f"N = {n} per run, UANET_SMTP_CONCURRENCY {concurrency}, SQLite, through the proxy")
        for run_index, rtt in enumerate((0.0, rtt_ms)):
            if run_index:
                proxy.stop()  # the dispatcher's connections drop; it reconnects through the new one
                proxy = start_latency_proxy(f"127.0.0.1:{sink.port}", rtt, listen_port=relay_port)
            before = sink.count
            async with httpx.AsyncClient(timeout=60) as client:
                body = {**ACTION, "channels": ["email"], "title": f"Far relay, run {run_index}"}
                created = await client.post(api, json=body, headers=auth)
                action_id = created.json()["id"]
                published_at = time.monotonic()
                response = await client.post(f"{api}/{action_id}/publish", headers=auth)
                assert response.status_code == 200, response.text
            first_at = await asyncio.to_thread(sink.wait_for, before + 1, 600)
            last_at = await asyncio.to_thread(sink.wait_for, before + n, 900)
            if first_at is None or last_at is None:
                raise SystemExit(f"only {sink.count - before} of {n} arrived")
            total = last_at - published_at
            rates[rtt] = n / total
            print(
                f"RTT {rtt:g} ms: publish -> first {first_at - published_at:.2f}s, "
                f"-> last {total:.2f}s, {rates[rtt]:.0f} messages/s, "
                f"connections used {proxy.peak} at once ({proxy.total} opened)"
            )
        memory = {s: peak_memory_mb(p.pid) for s, p in stack.processes.items()}
        floor_n = min(n, 50_000)
        floor = await floor_on(sink, floor_n, concurrency)
        print(f"ratio {rtt_ms:g} ms / 0 ms: {rates[rtt_ms] / rates[0.0]:.2f}")
        print(f"floor (aiosmtplib alone, loopback, no proxy, {floor_n} messages): {floor:.0f}/s")
        print(
            f"ratio to the floor: 0 ms {rates[0.0] / floor:.2f}, "
            f"{rtt_ms:g} ms {rates[rtt_ms] / floor:.2f}"
        )
        print(f"lockstep bound at {rtt_ms:g} ms: {concurrency / (4 * rtt_ms / 1000):.0f}/s")
        for service, mb in memory.items():
            print(f"peak memory (VmHWM) {service}: {mb:.0f} MB")
    finally:
        stack.stop_all()
        await twilio.stop()
        proxy.stop()
        sink.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=100_000, help="subscribers (default 100000)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=Settings.model_fields["smtp_concurrency"].default,
        help="UANET_SMTP_CONCURRENCY (default: its default)",
    )
    parser.add_argument("--keep", action="store_true", help="keep logs and databases")
    parser.add_argument(
        "--email-rate", default=Method.email_rate, help="UANET_EMAIL_RATE (default 1000000)"
    )
    parser.add_argument(
        "--floor-connections",
        type=int,
        default=Method.floor_connections,
        help="connections the floor sends over (default 20, issue 19's method)",
    )
    parser.add_argument(
        "--floor-n", type=int, default=Method.floor_n, help="messages the floor sends"
    )
    parser.add_argument(
        "--rtt-ms",
        type=float,
        help="run the fan-out twice through the latency proxy, at 0 ms and at this round trip",
    )
    parser.add_argument(
        "--seeded",
        type=Path,
        help="start from the databases a --keep run left in this folder (no import)",
    )
    args = parser.parse_args()
    if args.rtt_ms is not None:
        asyncio.run(run_distance(args.n, args.concurrency, args.rtt_ms, args.keep))
    else:
        method = Method(args.email_rate, args.floor_connections, args.floor_n, args.seeded)
        asyncio.run(run(args.n, args.postgres, args.concurrency, args.keep, method))


if __name__ == "__main__":
    main()
