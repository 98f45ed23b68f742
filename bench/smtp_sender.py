"""The dispatcher's SMTP path alone against the floor, in one run: what sending costs and what
the rest of the dispatcher costs (issue 19, item 4).

Both send the same pre-built alert to one Postfix ``smtp-sink``: the floor is aiosmtplib over 20
connections (``bench/fanout.py``'s floor), then the dispatcher's pipelining ``SmtpEmailSender``
with its default pool and 64 callers (the in-doubt window's size), twice each, alternating.
Prints each one's rate and this process's CPU a message. No broker, no database, no rendering.

    .venv/bin/python bench/smtp_sender.py [-n 50000]

Not a test. Measured on 7 December: the floor 5,626-5,996/s at 171-182 µs of CPU a message, the
sender 25,904-28,399/s at 36-40 µs (the sink is then the limit): the fan-out's dispatcher spends
about 200 µs a message, so four fifths of it is not the sending.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import uvloop  # noqa: E402

from bench.fanout import SmtpSink, floor_rate, sample_message  # noqa: E402
from services.dispatcher.adapters import IN_DOUBT_LIMIT  # noqa: E402
from services.dispatcher.smtp_sender import SmtpEmailSender  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.support import free_port  # noqa: E402


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def sender_rate(port: int, n: int, message: bytes) -> float:
    """The dispatcher's sender: ``IN_DOUBT_LIMIT`` callers, as the send workers are."""
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=False
    )
    sender = SmtpEmailSender(settings)
    numbers = iter(range(n))

    async def caller() -> None:
        for i in numbers:
            result = await sender.send("alerts@localhost", f"bench{i}@example.net", message)
            if result.outcome != "sent":
                raise RuntimeError(f"not sent: {result}")

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(IN_DOUBT_LIMIT)))
    elapsed = time.monotonic() - started
    await sender.close()
    return n / elapsed


async def run(n: int) -> None:
    port = free_port()
    sink = SmtpSink(port)
    await asyncio.sleep(0.5)
    message = sample_message()
    ways: dict[str, Callable[[], Awaitable[float]]] = {
        "floor (aiosmtplib, 20 connections)": lambda: floor_rate(port, n, 20, message),
        "SmtpEmailSender (pipelined, default pool)": lambda: sender_rate(port, n, message),
    }
    try:
        for _ in range(2):
            for name, measure in ways.items():
                before = cpu_seconds()
                rate = await measure()
                used = cpu_seconds() - before
                print(f"{name}: {rate:,.0f} messages/s, {1e6 * used / n:.0f} us CPU a message")
    finally:
        sink.process.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=50_000, help="messages each way (default 50000)")
    args = parser.parse_args()
    uvloop.run(run(args.n))


if __name__ == "__main__":
    main()
