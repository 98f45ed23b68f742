"""A brake on guessing staff passwords that an outsider cannot turn into a lock-out (§7, §11).

Counted per sign-in email as typed (trimmed, lower case), whether or not it is an account: an
unknown email gets exactly the answers an account would, so the answers tell no one which
emails are accounts.

A client address is an IPv4 address or an IPv6 /64 network (``shared.web.client_key``).

- One email from one client address: after ``PAIR_FAILURES`` wrong passwords within the window,
  refused (even the right password) for ``WINDOW_SECONDS``. Someone else's address is not
  refused: an outsider failing on purpose locks out only themselves.
- One email from all addresses: past ``ACCOUNT_FREE_FAILURES`` failures in the window the email
  is under pressure, and each address waits its own turn: after its last failure for that email,
  or, on its first try, from that try, ``2 s, 4 s, …`` up to ``MAX_ACCOUNT_DELAY`` (fixed when
  the wait is given, so a promised ``Retry-After`` is kept). Tries refused meanwhile change
  nothing. A spray gets one guess a minute per address (and at most ``PAIR_FAILURES`` per
  address); the owner, from their own address, waits at most ``MAX_ACCOUNT_DELAY`` however
  many addresses poll.
- One address, all emails: after ``ADDRESS_FAILURES`` failures in the window, refused.

The counting sits behind :class:`SignInThrottle` so that a shared store (PostgreSQL, for
several publisher processes) can replace :class:`MemorySignInThrottle` without touching the
sign-in page.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

PAIR_FAILURES = 10
WINDOW_SECONDS = 15 * 60
# Twice the per-address allowance: one address (locked out itself at 10) cannot even put an
# email under pressure.
ACCOUNT_FREE_FAILURES = 2 * PAIR_FAILURES
MAX_ACCOUNT_DELAY = 60.0
ADDRESS_FAILURES = 50  # wrong sign-ins from one address, whatever the email (a spray)
# Emails, addresses and pairs kept in memory, the least recently failing forgotten first. Pushing
# an account's counters out takes failures from thousands of addresses (each stops at
# ADDRESS_FAILURES), which could make as many guesses anyway.
MAX_TRACKED = 100_000

K = TypeVar("K")
V = TypeVar("V")


def sign_in_key(email: str) -> str:
    """The email as sign-in looks it up: what the counters are keyed by."""
    return email.strip().lower()


class SignInThrottle(Protocol):
    """What the sign-in page asks; implementations keep the counts (memory, a database)."""

    async def wait(self, *, email: str, address: str) -> float | None:
        """Seconds until ``email`` may be tried from ``address``; None if it may be now."""

    async def failed(self, *, email: str, address: str) -> None:
        """A wrong password (or no such account) for ``email`` from ``address``."""

    async def succeeded(self, *, email: str, address: str) -> None:
        """The right password: that address's failures for that email are forgiven."""


def pressure_delay(failures: int) -> float | None:
    """How long each address waits between tries of an email with this many recent failures."""
    if failures < ACCOUNT_FREE_FAILURES:
        return None
    return min(2.0 ** (failures - ACCOUNT_FREE_FAILURES + 1), MAX_ACCOUNT_DELAY)


def _bounded_set(table: OrderedDict[K, V], key: K, value: V) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > MAX_TRACKED:
        table.popitem(last=False)


@dataclass
class MemorySignInThrottle:
    """:class:`SignInThrottle` counted in this process's memory (one publisher process)."""

    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._email: OrderedDict[str, deque[float]] = OrderedDict()
        self._address: OrderedDict[str, deque[float]] = OrderedDict()
        self._pair: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        self._pair_locked: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._turn: OrderedDict[tuple[str, str], float] = OrderedDict()  # next allowed try

    def _recent(self, times: deque[float] | None, now: float) -> deque[float]:
        if times is None:
            return deque()
        while times and now - times[0] > WINDOW_SECONDS:
            times.popleft()
        return times

    async def wait(self, *, email: str, address: str) -> float | None:
        now = self.clock()
        key = sign_in_key(email)
        pair = (key, address)
        by_address = self._recent(self._address.get(address), now)
        if len(by_address) >= ADDRESS_FAILURES:
            return by_address[0] + WINDOW_SECONDS - now
        locked_until = self._pair_locked.get(pair)
        if locked_until is not None and now < locked_until:
            return locked_until - now
        turn = self._turn.get(pair)
        if turn is not None and now < turn:
            return turn - now
        delay = pressure_delay(len(self._recent(self._email.get(key), now)))
        if delay is not None and turn is None:
            # A first try under pressure waits its turn, like any other address.
            _bounded_set(self._turn, pair, now + delay)
            return delay
        return None

    async def failed(self, *, email: str, address: str) -> None:
        now = self.clock()
        key = sign_in_key(email)
        pair = (key, address)
        for table, name in ((self._address, address), (self._email, key)):
            times = self._recent(table.get(name), now)
            times.append(now)
            while len(times) > 10_000:  # bounded, and far past the longest delay anyway
                times.popleft()
            _bounded_set(table, name, times)
        pair_times = self._recent(self._pair.get(pair), now)
        pair_times.append(now)
        if len(pair_times) >= PAIR_FAILURES:
            _bounded_set(self._pair_locked, pair, now + WINDOW_SECONDS)
            pair_times.clear()
        _bounded_set(self._pair, pair, pair_times)
        delay = pressure_delay(len(self._email[key]))
        if delay is not None:
            _bounded_set(self._turn, pair, now + delay)

    async def succeeded(self, *, email: str, address: str) -> None:
        pair = (sign_in_key(email), address)
        self._pair.pop(pair, None)
        self._turn.pop(pair, None)
