"""Resolving an audience at the dispatchers' pace, not ahead of them.

The page loop (audience.py) reads subscribers faster than the dispatchers send to them. Left
alone it handed a million-subscriber alert to RabbitMQ in a third of the time the sending took:
up to 1,100 batches (about 300 MB) waiting in ``dispatcher.batches``, and an urgent action
published meanwhile queued behind all of it (what it cost the dispatchers a message:
docs/performance.md, "the million at the dispatchers' pace"). Before each page the loop now
waits while the batch queue holds ``ahead`` batches or more: enough that the dispatchers never
run dry (at 3,000 alerts a second, 60 batches of 500 are 10 s of work), few enough that what
waits for them is bounded whatever the size of the list.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from shared.messaging import Retry

BATCH_QUEUE = "dispatcher.batches"
# Batches (of up to 500 recipients) waiting for a dispatcher before the page loop waits too.
AHEAD = 60
# How often a waiting loop looks again: a batch takes a dispatcher 0.15-0.5 s.
POLL_S = 0.25
# No batch taken for this long: the dispatchers are away. The page loop gives its message back
# (deferred through the delay queue, its retries not used up) instead of holding it unacked
# for as long as they are away: RabbitMQ's consumer timeout would hand it to a second loop.
STALL_S = 300.0

Depth = Callable[[], Awaitable[int | None]]


class Pacer(Protocol):
    async def wait(self) -> None:
        """Returns when the next page may be written."""


@dataclass
class Pace:
    """Waits while the dispatchers have ``ahead`` batches or more before them.

    ``depth`` says how many batches wait (None when the broker cannot say: then the loop goes
    on, as it did before pacing: a fan-out is never held up by the pacing itself). Raises
    Retry (deferred) when the queue has not gone down in ``stall_s``.
    """

    depth: Depth
    ahead: int = AHEAD
    poll_s: float = POLL_S
    stall_s: float = STALL_S

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        progressed_at = loop.time()
        last: int | None = None
        while True:
            depth = await self.depth()
            if depth is None or depth < self.ahead:
                return
            now = loop.time()
            if last is None or depth < last:
                progressed_at = now
            elif now - progressed_at > self.stall_s:
                raise Retry(f"the dispatchers took no batch in {self.stall_s:.0f} s", defer=True)
            last = depth
            await asyncio.sleep(self.poll_s)


def paced_by(queue_depth: Callable[[str], Awaitable[int | None]]) -> Pace:
    """The pace of the dispatchers, read from the depth of their batch queue (a service's
    ``Broker.queue_depth``)."""
    # AHEAD read now, not as the dataclass's default: a test lowers it for one service.
    return Pace(lambda: queue_depth(BATCH_QUEUE), ahead=AHEAD)


class Unpaced:
    """No pacing (tests of the page loop alone, tools)."""

    async def wait(self) -> None:
        return None
