"""Sign-ups per client: a sliding window, so a script cannot use the form to flood strangers'
inboxes or fill the list with junk. A client is an IPv4 address or an IPv6 /64 network (one
host is given a whole /64: counted per address, it could sign up without end).

Kept in the process's memory: each subscriptions process counts on its own (behind N processes an
address gets up to N times the limit), which is enough to stop a flood without a database write per
request. The confirmations per mailbox or number (``confirmations``) and the hourly budget of
confirmation SMS (the dispatcher's ``sms_lane``) are the guards that hold across processes.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from shared.web import client_key

SIGNUPS_PER_WINDOW = 10
WINDOW_SECONDS = 600.0
# Addresses remembered at once; the least recently seen are forgotten first (bounded memory).
MAX_TRACKED = 50_000


@dataclass
class SignupLimiter:
    limit: int = SIGNUPS_PER_WINDOW
    window: float = WINDOW_SECONDS
    max_tracked: int = MAX_TRACKED
    clock: Callable[[], float] = time.monotonic
    _seen: OrderedDict[str, deque[float]] = field(default_factory=OrderedDict)

    def take(self, address: str) -> float | None:
        """Count one sign-up from ``address`` (its client: ``client_key``); None if allowed,
        else seconds until it would be."""
        address = client_key(address)
        now = self.clock()
        times = self._seen.get(address)
        if times is None:
            times = deque()
            self._seen[address] = times
            while len(self._seen) > self.max_tracked:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(address)
        while times and now - times[0] >= self.window:
            times.popleft()
        if len(times) >= self.limit:
            return max(times[0] + self.window - now, 1.0)
        times.append(now)
        return None


def retry_after_header(seconds: float) -> str:
    return str(math.ceil(seconds))
