"""How long a live stream of counts may live, and how many one caller may hold (contract §11).

- A stream checks its caller again every ``RECHECK_SECONDS`` (the same check as on connect: the
  token still live, the console session still there, its account not disabled) and ends when
  the check fails: signing out, revoking the token or disabling the account ends the streams
  it opened within a minute.
- One caller (a token, or a console account whatever its sessions) holds at most
  ``MAX_STREAMS_PER_CALLER`` streams at once in one publisher process; one more gets 429. Each
  stream reads the database about once a second, so an unbounded number from one token is a
  way to load it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fastapi import HTTPException, Request

from services.publisher.auth import Principal
from shared.access import Guard

MAX_STREAMS_PER_CALLER = 5
RECHECK_SECONDS = 15.0  # well within the minute the contract allows
STREAM_RETRY_AFTER = "30"


@dataclass
class StreamTicket:
    """One open stream's place; released once, when the stream ends however it ends."""

    slots: StreamSlots
    key: tuple[str, int]
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.slots._drop(self.key)


@dataclass
class StreamSlots:
    """The streams each caller holds open in this process."""

    limit: int = MAX_STREAMS_PER_CALLER
    recheck_seconds: float = RECHECK_SECONDS
    _open: dict[tuple[str, int], int] = field(default_factory=dict)

    def take(self, principal: Principal) -> StreamTicket:
        """A place for one more stream of this caller, or 429."""
        key = (principal.kind, principal.id)
        held = self._open.get(key, 0)
        if held >= self.limit:
            raise HTTPException(
                status_code=429,
                detail=f"at most {self.limit} live streams at once",
                headers={"Retry-After": STREAM_RETRY_AFTER},
            )
        self._open[key] = held + 1
        return StreamTicket(self, key)

    def open_streams(self) -> int:
        """All callers' streams open in this process (for the tests and the curious)."""
        return sum(self._open.values())

    def _drop(self, key: tuple[str, int]) -> None:
        left = self._open.get(key, 0) - 1
        if left > 0:
            self._open[key] = left
        else:
            self._open.pop(key, None)


def caller_still_allowed(request: Request, guard: Guard) -> Callable[[], Awaitable[bool]]:
    """The connect-time check of this request's caller, to run again while it streams."""

    async def check() -> bool:
        try:
            await guard.check(request)
        except HTTPException:
            return False
        return True

    return check
