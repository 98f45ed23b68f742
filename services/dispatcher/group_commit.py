"""One commit for the outcomes of every batch in flight.

Each handling of a batch records its outcomes as they come (``sending``), and a send holds one
of the process's in-doubt slots until its outcome is committed. Four batches in flight each
committing on their own made four transactions where one would do, every one of them several
turns of the event loop on the process's one database connection (SQLite) or its own WAL flush
(PostgreSQL): at 3,000 messages a second the slots waited 65 ms at the median for commits of 18
outcomes, and the relay's connections stood idle meanwhile. Here the outcomes handed in while a
commit runs go together in the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.ledger_writes import commit_outcomes
from shared.events import Message

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Part:
    """What one handling hands in: its rows' outcomes and the events that report them."""

    rows: Sequence[dict[str, Any]]
    reports: Sequence[Message]
    done: asyncio.Future[None]

    def settle(self, error: BaseException | None = None) -> None:
        if self.done.done():  # its caller gave up waiting (cancelled); the rows still count
            return
        if error is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(error)


class OutcomeCommits:
    """Commits outcomes of claimed rows with their reports, many handlings' in one transaction
    (``ledger_writes.commit_outcomes``), one transaction at a time."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], committed: Callable[[], None]
    ) -> None:
        self.sessionmaker = sessionmaker
        # Called after each commit (wakes the outbox relay).
        self.committed = committed
        self._waiting: list[_Part] = []
        self._writer: asyncio.Task[None] | None = None

    async def commit(self, rows: Sequence[dict[str, Any]], reports: Sequence[Message]) -> None:
        """Returns once these outcomes are committed; raises what their commit raised."""
        part = _Part(rows, reports, asyncio.get_running_loop().create_future())
        self._waiting.append(part)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all(), name="outcome-commits")
            self._writer.add_done_callback(self._ended)
        await part.done

    def _ended(self, writer: asyncio.Task[None]) -> None:
        # Cancelled before it began (the process stopping): its parts are still waiting here.
        if writer is self._writer and writer.cancelled():
            for part in self._waiting:
                part.done.cancel()
            self._waiting = []

    async def _write_all(self) -> None:
        group: list[_Part] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                try:
                    await self._write(group)
                except Exception as exc:  # noqa: BLE001 - each part learns its own fate
                    if len(group) == 1:
                        group[0].settle(exc)
                    else:
                        # One handling's bad row must not fail the others: each on its own.
                        await self._one_by_one(group)
                else:
                    for part in group:
                        part.settle()
                group = []
        finally:
            # Cancelled (the process is stopping): no caller waits for ever.
            for part in [*group, *self._waiting]:
                if not part.done.done():
                    part.done.cancel()
            self._waiting = []

    async def _one_by_one(self, group: list[_Part]) -> None:
        for part in group:
            try:
                await self._write([part])
            except Exception as exc:  # noqa: BLE001 - handed back to its caller, who retries
                part.settle(exc)
            else:
                part.settle()

    async def _write(self, group: Sequence[_Part]) -> None:
        rows = [row for part in group for row in part.rows]
        # In id order, like every other writer of these rows: no lock-order deadlock on
        # PostgreSQL (each part is sorted; together they are not).
        if len(group) > 1:
            rows.sort(key=lambda row: int(row["row_id"]))
        reports = [report for part in group for report in part.reports]
        await commit_outcomes(self.sessionmaker, rows, reports)
        self.committed()
