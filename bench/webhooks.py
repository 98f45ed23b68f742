"""Webhooks under load: N confirmed email subscribers, the stack as real processes, Postfix's
``smtp-sink`` as the relay, and 10 webhook endpoints on a loopback receiver that verifies each
call (``devtools/webhook_inbox.py``), every endpoint subscribed to every event type.

Two fan-outs of one urgent action in the same run: the first with no endpoint registered, the
second with the 10 endpoints while subscribers keep changing their preferences and
unsubscribing (``subscriber.updated`` / ``.unsubscribed`` events, ``--events-per-second`` of
them, each delivered to all 10). Prints both fan-out rates and their ratio, the webhook
deliveries a second and their latency (event -> verified at the receiver), and each service's
CPU and peak memory.

    .venv/bin/python bench/webhooks.py [-n 20000] [--events-per-second 40] [--postgres]

Not a test. Needs RabbitMQ (and PostgreSQL with --postgres), like the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.fanout import SmtpSink, cpu_seconds, peak_memory_mb, started  # noqa: E402
from bench.scratch import Scratch, scratch  # noqa: E402
from devtools.twilio_fake import FakeTwilio  # noqa: E402
from devtools.webhook_inbox import ReceivedWebhook, WebhookInbox  # noqa: E402
from services.publisher.webhooks.standard import EVENT_TYPES  # noqa: E402
from services.subscriptions.links import Links  # noqa: E402
from shared.settings import SERVICES  # noqa: E402
from shared.tokens import LinkSigner  # noqa: E402
from tests.e2e.stack import ACCOUNT_SID, AUTH_TOKEN, Stack, stack_environment  # noqa: E402
from tests.faults.harness import ACTION  # noqa: E402
from tests.support import SmtpRecorder, free_port  # noqa: E402

SECRET = "bench-secret-key"
ENDPOINTS = 10
CHANGERS = 5000


async def fan_out(
    client: httpx.AsyncClient, api: str, auth: dict[str, str], sink: SmtpSink, n: int, title: str
) -> float:
    # The N seeded in GB; the people whose changes make the events live elsewhere, so an
    # unsubscribe never takes an alert out of the fan-out being timed.
    audience = {"countries": ["GB"], "themes": [], "languages": []}
    created = await client.post(
        api,
        json={**ACTION, "title": title, "channels": ["email"], "audience": audience},
        headers=auth,
    )
    assert created.status_code == 201, created.text
    before = sink.count
    started_at = time.monotonic()
    published = await client.post(f"{api}/{created.json()['id']}/publish", headers=auth)
    assert published.status_code == 200, published.text
    last = await asyncio.to_thread(sink.wait_for, before + n, 600)
    if last is None:
        raise SystemExit(f"{title}: only {sink.count - before} of {n} in 10 minutes")
    return n / (last - started_at)


def seed_changers(stack: Stack, workdir: Path, n: int) -> None:
    """People outside the timed audience (Ireland) whose changes make the webhook events."""
    path = workdir / "changers.csv"
    path.write_text(
        "email,name,country,language,channels\n"
        + "".join(f"changer{i}@example.net,Changer {i},IE,en,email\n" for i in range(n))
    )
    done = stack.cli("subscribers", "import", str(path), "--confirmed")
    if done.returncode != 0:
        raise SystemExit(f"import failed: {done.stderr[-2000:]}")


def subscriber_ids(infra: Scratch, limit: int) -> list[uuid.UUID]:
    url = infra.database_urls["subscriptions"]
    if url.startswith("sqlite"):
        with sqlite3.connect(url.split("///", 1)[1]) as db:
            rows = db.execute(
                "SELECT public_id FROM subscribers WHERE country = 'IE' LIMIT ?", (limit,)
            ).fetchall()
        return [uuid.UUID(str(r[0])) if len(str(r[0])) != 32 else uuid.UUID(hex=r[0]) for r in rows]
    import subprocess

    name = infra.databases[SERVICES.index("subscriptions")]
    out = subprocess.run(
        [
            "psql",
            f"postgresql://postgres@127.0.0.1:5432/{name}",
            "-At",
            "-c",
            f"SELECT public_id FROM subscribers WHERE country = 'IE' LIMIT {limit}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [uuid.UUID(line) for line in out.split()]


async def changes(
    client: httpx.AsyncClient,
    links: Links,
    people: list[uuid.UUID],
    per_second: float,
    stop: asyncio.Event,
) -> int:
    """Preference changes and, one in five, an unsubscribe, at a steady rate, until ``stop``."""
    made = 0
    interval = 1.0 / per_second
    next_at = time.monotonic()
    while not stop.is_set() and made < len(people):
        person = people[made]
        if made % 5 == 4:
            await client.post(links.unsubscribe(person, "email"), data={})
        else:
            await client.post(links.preferences(person), json={"themes": [f"t{made % 7}"]})
        made += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return made


async def run(n: int, per_second: float, postgres: bool) -> None:
    with scratch("uanet-webhooks", postgres=postgres) as infra:
        await _run(infra, n, per_second, postgres)


async def _run(infra: Scratch, n: int, per_second: float, postgres: bool) -> None:
    sink = SmtpSink(free_port())
    twilio = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    await twilio.start()
    inbox = WebhookInbox()
    await inbox.start()
    ports = {s: free_port() for s in SERVICES}
    env = stack_environment(
        amqp_url=infra.amqp_url,
        database_urls=infra.database_urls,
        smtp_port=sink.port,
        twilio_base=twilio.base_url,
        ports=ports,
        secret=SECRET,
    )
    stack = Stack(env=env, smtp=SmtpRecorder(), twilio=twilio, log_dir=infra.workdir, ports=ports)
    try:
        auth, api = await started(stack, n, infra.workdir)
        seed_changers(stack, infra.workdir, CHANGERS)
        people = subscriber_ids(infra, CHANGERS)
        links = Links(LinkSigner(SECRET), stack.url("subscriptions"))
        async with httpx.AsyncClient(timeout=60) as client:
            without = await fan_out(client, api, auth, sink, n, "Without webhooks")
            hooks = stack.url("publisher") + "/api/v1/webhooks"
            for i in range(ENDPOINTS):
                added = await client.post(
                    hooks,
                    json={"url": inbox.url(f"e{i}"), "events": list(EVENT_TYPES)},
                    headers=auth,
                )
                assert added.status_code == 201, added.text
                inbox.secrets[f"e{i}"] = added.json()["secret"]
            await asyncio.sleep(3)  # the lanes start
            cpu_before = {s: cpu_seconds(p.pid) for s, p in stack.processes.items()}
            stop = asyncio.Event()
            generator = asyncio.create_task(changes(client, links, people, per_second, stop))
            started_at = time.monotonic()
            # Counted, not kept: the inbox keeps only its last calls.
            received_before, verified_before = inbox.total, inbox.verified
            latencies: list[float] = []
            inbox.listeners.append(lambda call: latencies.append(_latency(call)))
            with_hooks = await fan_out(client, api, auth, sink, n, "With webhooks")
            fan_out_seconds = time.monotonic() - started_at
            stop.set()
            made = await generator
            expected = received_before + made * ENDPOINTS + ENDPOINTS  # + action.published
            deadline = time.monotonic() + 300
            while inbox.total < expected and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            drained = time.monotonic() - started_at
            print(f"fan-out with webhooks: {fan_out_seconds:.1f}s; every call in by {drained:.1f}s")
        calls = inbox.total - received_before
        verified = inbox.verified - verified_before
        cpu = {s: cpu_seconds(p.pid) - cpu_before[s] for s, p in stack.processes.items()}
        memory = {s: peak_memory_mb(p.pid) for s, p in stack.processes.items()}
        print(
            f"N = {n}, {ENDPOINTS} endpoints (every type), {'PostgreSQL' if postgres else 'SQLite'}"
        )
        print(f"fan-out without webhooks: {without:.0f} messages/s")
        print(
            f"fan-out with webhooks:    {with_hooks:.0f} messages/s "
            f"(ratio {with_hooks / without:.2f}, loss {1 - with_hooks / without:.0%}; "
            f"{per_second:g} changes/s offered)"
        )
        print(f"events made during the fan-out: {made} (x{ENDPOINTS} endpoints)")
        print(
            f"webhook calls received: {calls} of {expected - received_before}, "
            f"{verified} verified, in {drained:.1f}s: {calls / drained:.0f} deliveries/s"
        )
        if latencies:
            q = statistics.quantiles(latencies, n=100)
            print(
                f"event -> received: p50 {q[49] * 1000:.0f} ms, p95 {q[94] * 1000:.0f} ms, "
                f"max {max(latencies) * 1000:.0f} ms"
            )
        for service in SERVICES:
            print(f"CPU {service}: {cpu[service]:.1f}s; peak memory {memory[service]:.0f} MB")
    finally:
        stack.stop_all()
        await inbox.stop()
        await twilio.stop()
        sink.stop()


def _latency(call: ReceivedWebhook) -> float:
    """From the event (its timestamp) to its verified arrival."""
    occurred = datetime.fromisoformat(call.payload["timestamp"].replace("Z", "+00:00"))
    return (call.received_at - occurred).total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=20_000)
    parser.add_argument("--events-per-second", type=float, default=40.0)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.n, args.events_per_second, args.postgres))


if __name__ == "__main__":
    main()
