"""The deployment's send rate (contract §10): two dispatcher processes' limiters on one
PostgreSQL database hold the rate together, as one would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from decimal import Decimal

from services.dispatcher.deployment_rate import DeploymentRateLimiter
from tests.dispatcher.conftest import migrated

RATE = 20
UNITS = 120  # six seconds at the rate


def _most_in_a_window(times: list[float], window: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, at in enumerate(times):
        while at - times[start] >= window:
            start += 1
        most = max(most, end - start + 1)
    return most


async def test_two_processes_together_hold_the_rate(pg_database: Callable[[], str]) -> None:
    url = pg_database()
    # Two sessionmakers, two engines: two processes as far as the database can tell.
    first, second = await migrated(url), await migrated(url)
    sent: dict[str, list[float]] = {"a": [], "b": []}

    async def sender(name: str, limiter: DeploymentRateLimiter, count: int) -> None:
        async def one() -> None:
            await limiter.acquire(1)
            sent[name].append(time.monotonic())

        # Concurrent senders in each process, as the dispatcher runs them.
        await asyncio.gather(*(one() for _ in range(count)))

    try:
        a = DeploymentRateLimiter(Decimal(RATE), "sms", first)
        b = DeploymentRateLimiter(Decimal(RATE), "sms", second)
        began = time.monotonic()
        await asyncio.gather(sender("a", a, UNITS // 2), sender("b", b, UNITS // 2))
        took = time.monotonic() - began
    finally:
        await first.kw["bind"].dispose()
        await second.kw["bind"].dispose()
    times = sent["a"] + sent["b"]
    assert len(times) == UNITS
    # Not faster than the rate: a unit more in any second (the schedule's own allowance) and
    # one more for a wake-up late behind another's on time (this machine is shared); over any
    # five seconds within the contract's 5%. And not much slower either.
    assert _most_in_a_window(times, 1.0) <= RATE + 2
    assert _most_in_a_window(times, 5.0) <= 5 * RATE * 1.05
    assert took >= (UNITS - 1) / RATE - 0.05
    assert took <= UNITS / RATE * 1.15 + 1
    # Both processes sent all along, not one after the other.
    assert min(sent["a"]) < max(sent["b"]) and min(sent["b"]) < max(sent["a"])


async def test_a_multi_segment_sms_books_its_whole_cost(pg_database: Callable[[], str]) -> None:
    maker = await migrated(pg_database())
    try:
        limiter = DeploymentRateLimiter(Decimal(2), "sms", maker)
        began = time.monotonic()
        await limiter.acquire(3)  # first: at once
        await limiter.acquire(1)  # after the three segments' 1.5 s
        assert time.monotonic() - began >= 1.4
    finally:
        await maker.kw["bind"].dispose()


async def test_no_limit_books_nothing(pg_database: Callable[[], str]) -> None:
    maker = await migrated(pg_database())
    try:
        limiter = DeploymentRateLimiter(Decimal(0), "email", maker)
        began = time.monotonic()
        for _ in range(1000):
            await limiter.acquire(1)
        assert time.monotonic() - began < 1
    finally:
        await maker.kw["bind"].dispose()
