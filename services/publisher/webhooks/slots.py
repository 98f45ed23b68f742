"""The tries in flight to all endpoints, shared so that no endpoint can hold back another.

Each lane (endpoint) is always owed its share of the whole, ``total // lanes`` (at most its own
cap): it gets that at once, whatever the others hold. Beyond its share a lane may borrow up to
its cap, but only slots no other lane is owed. So a hanging endpoint holds at most its share plus
what was idle when it borrowed, and whatever it holds, every other lane still gets its share
without waiting for the hanging tries to time out.

A lane takes its slots before it claims deliveries (as many as it got), and takes more only when
its tries are done: no try ever waits for a slot, let alone inside its timeout.
"""

from __future__ import annotations

from collections.abc import Hashable


class FairSlots:
    def __init__(self, total: int, per_lane: int) -> None:
        self.total = total
        self.per_lane = per_lane
        self._held: dict[Hashable, int] = {}

    def join(self, lane: Hashable) -> None:
        self._held.setdefault(lane, 0)

    def leave(self, lane: Hashable) -> None:
        """The lane is gone (its endpoint removed or disabled): it is owed nothing more."""
        self._held.pop(lane, None)

    @property
    def share(self) -> int:
        return max(1, min(self.per_lane, self.total // max(1, len(self._held))))

    def _take_one(self, lane: Hashable) -> bool:
        held = self._held.setdefault(lane, 0)
        if held >= self.per_lane:
            return False
        if held >= self.share:
            # Borrowing: only from what no lane is owed (each counted at its share at least).
            share = self.share
            if sum(max(h, share) for h in self._held.values()) >= self.total:
                return False
        self._held[lane] = held + 1
        return True

    def take(self, lane: Hashable, most: int) -> int:
        """Up to ``most`` slots for the lane's next tries; how many it got."""
        granted = 0
        while granted < most and self._take_one(lane):
            granted += 1
        return granted

    def release(self, lane: Hashable, count: int = 1) -> None:
        if lane in self._held:
            self._held[lane] = max(0, self._held[lane] - count)
