"""Holding a send rate exactly: one schedule per channel per process, with an injectable clock."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SendRate(Protocol):
    """A send rate: ``acquire(units)`` returns when those units may go. This process's own
    (RateLimiter) or the whole deployment's (deployment_rate.DeploymentRateLimiter)."""

    @property
    def unlimited(self) -> bool: ...

    async def acquire(self, units: int = 1) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class RateLimiter:
    """At most ``rate`` units a second (messages, or SMS segments); ``0`` means no limit.

    A token bucket holding one second's worth of units (at least one), kept as a schedule (GCRA):
    after a pause up to ``rate`` units go at once, then units are spaced ``1/rate`` seconds apart.
    A request bigger than the bucket (a 3-segment SMS on a 1 segment/s number) goes when the
    schedule is free and the ones after it wait for its full cost, so the long-run rate is held
    exactly. Reservations are made before sleeping, so concurrent senders get distinct slots.
    """

    def __init__(self, rate: Decimal, *, clock: Clock | None = None) -> None:
        if rate < 0:
            raise ValueError("rate must be >= 0")
        self.rate = rate
        self.clock: Clock = clock or SystemClock()
        self._interval = float(1 / rate) if rate else 0.0
        # How far ahead of now the schedule may run before callers wait: the bucket minus one.
        self._tolerance = (max(float(rate), 1.0) - 1.0) * self._interval
        self._free_at = float("-inf")

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def reserve(self, units: int = 1) -> float:
        """Book ``units``; returns how many seconds the caller must wait before using them."""
        if self.unlimited or units <= 0:
            return 0.0
        now = self.clock.monotonic()
        begin = max(self._free_at, now)
        self._free_at = begin + units * self._interval
        wait = begin - now - self._tolerance
        # Float noise (1e-13 s) is no reason to yield.
        return wait if wait > 1e-6 else 0.0

    async def acquire(self, units: int = 1) -> None:
        wait = self.reserve(units)
        if wait > 0:
            await self.clock.sleep(wait)
