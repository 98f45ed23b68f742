"""Deploy and crash benchmark: the dispatcher stopped mid-fan-out at full speed, the relay 20 ms
away (devtools/latency_proxy.py), the three services as real processes. Each round stops it at
a random moment while sends are in flight, restarts it, lets the fan-out finish, and prints:

- SIGTERM (a deploy): seconds from the signal to the exit, and alerts sent twice (promise: 0);
- SIGKILL (a crash): messages the relay accepted that the dead process had not recorded (the
  in-doubt window; promise: at most 64), how many went again, and whether every resend carried
  the Message-ID of its first send.

    .venv/bin/python bench/deploys.py [-n 20000] [--rounds 3] [--rtt-ms 20] [--postgres]

Not a test; the same scenario at a small scale is tests/faults/test_deploys.py, with assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scratch import Scratch, scratch  # noqa: E402
from tests.faults.harness import (  # noqa: E402
    FaultStack,
    close_fault_stack,
    open_fault_stack,
    seed_subscribers,
)

SECRET = "bench-secret-key-" + "x" * 16


async def _wait(probe: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def one_round(
    n: int, sig: signal.Signals, rtt_ms: float, postgres: bool, rng: random.Random
) -> dict[str, float]:
    with scratch("uanet-deploys", postgres=postgres) as infra:
        return await _round(infra, n, sig, rtt_ms, rng)


async def _round(
    infra: Scratch, n: int, sig: signal.Signals, rtt_ms: float, rng: random.Random
) -> dict[str, float]:
    urls = infra.database_urls
    faults: FaultStack | None = None
    try:
        faults = await open_fault_stack(
            amqp_url=infra.amqp_url,
            database_urls=urls,
            log_dir=infra.workdir,
            secret=SECRET,
            rtt_ms=rtt_ms,
        )
        await seed_subscribers(urls["subscriptions"], emails=n)
        token = await faults.token()
        action_id = await faults.publish(token, channels=["email"])
        at = rng.randint(n // 10, n * 6 // 10)
        started = time.monotonic()
        while not (faults.smtp.total >= at and faults.smtp.in_flight > 0):
            await asyncio.sleep(0.001)
        rate = faults.smtp.total / (time.monotonic() - started)
        in_flight = faults.smtp.in_flight
        process = faults.stack.processes.pop("dispatcher")
        signalled = time.monotonic()
        process.send_signal(sig)
        await asyncio.to_thread(process.wait, 60)
        exit_seconds = time.monotonic() - signalled
        await asyncio.sleep(rtt_ms / 1000 * 5)  # what was on its way to the relay lands
        recorded = (await faults.ledger(action_id))["sent"]
        in_doubt = faults.smtp.total - recorded

        faults.start_dispatcher()

        async def served() -> bool:
            assert faults is not None
            return len(faults.smtp.accepted) >= n

        await _wait(served, 600, "every recipient served")
        await asyncio.sleep(1)
        again = faults.smtp.sent_twice()
        same_id = all(
            len(set(faults.smtp.message_ids[a])) == 1 and faults.smtp.message_ids[a][0]
            for a in again
        )
        return {
            "at": at,
            "rate": rate,
            "in_flight": in_flight,
            "exit_seconds": exit_seconds,
            "in_doubt": in_doubt,
            "again": sum(again.values()),
            "same_message_id": float(same_id),
            "lost": n - len(faults.smtp.accepted),
        }
    finally:
        if faults is not None:
            await close_fault_stack(faults)


async def run(n: int, rounds: int, rtt_ms: float, postgres: bool, seed: int) -> None:
    rng = random.Random(seed)
    where = "PostgreSQL" if postgres else "SQLite"
    print(f"N = {n}, relay {rtt_ms:g} ms away, {where}, {rounds} rounds per signal, seed {seed}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        results = [await one_round(n, sig, rtt_ms, postgres, rng) for _ in range(rounds)]
        for r in results:
            print(
                f"{sig.name}: stopped after {r['at']:.0f} accepted ({r['rate']:.0f}/s, "
                f"{r['in_flight']:.0f} in flight): exit {r['exit_seconds']:.2f} s, "
                f"in doubt {r['in_doubt']:.0f}, sent again {r['again']:.0f}, "
                f"same Message-ID {'yes' if r['same_message_id'] else 'NO'}, lost {r['lost']:.0f}"
            )
        exits = [r["exit_seconds"] for r in results]
        doubts = [r["in_doubt"] for r in results]
        print(
            f"{sig.name} summary: exit median {statistics.median(exits):.2f} s "
            f"(max {max(exits):.2f}), in doubt max {max(doubts):.0f}, "
            f"sent again total {sum(r['again'] for r in results):.0f}, "
            f"lost total {sum(r['lost'] for r in results):.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="subscribers (default 20000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per signal (default 3)")
    parser.add_argument("--rtt-ms", type=float, default=20, help="relay round trip (default 20)")
    parser.add_argument("--postgres", action="store_true", help="PostgreSQL instead of SQLite")
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    args = parser.parse_args()
    asyncio.run(run(args.n, args.rounds, args.rtt_ms, args.postgres, args.seed))


if __name__ == "__main__":
    main()
