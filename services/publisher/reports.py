"""The counts as coordinators take them away: CSV, and a live Server-Sent Events stream.

CSV columns, one row per country of residence then a ``TOTAL`` row:

- ``reference``, ``country``
- ``recipients``: distinct people the action was sent to (in that country / in all)
- ``people``: distinct people who reported acting; ``actions``: the actions they reported
- on the ``TOTAL`` row only (left empty on country rows, where they are not known):
  ``letter``, ``email``, ``call``, ``sms_reply``, ``other`` (actions by kind),
  ``email_recipients``, ``email_sent``, ``email_delivered``, ``email_failed``, and the same
  for ``sms``;
- ``section``: on a hub, whose rows: empty for the hub's own, a section's code for its rows,
  ``network`` for the whole network's total (contract §9).
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from services.publisher.models import CHANNELS, RESPONSE_KINDS
from services.publisher.schemas import ActionStats, NetworkStats, SectionStats
from services.publisher.tally import StatsNotifier
from shared.spreadsheet import csv_writer

Counts = ActionStats | SectionStats | NetworkStats

CSV_COLUMNS: tuple[str, ...] = (
    "reference",
    "country",
    "recipients",
    "people",
    "actions",
    *RESPONSE_KINDS,
    *(
        f"{channel}_{what}"
        for channel in CHANNELS
        for what in ("recipients", "sent", "delivered", "failed")
    ),
    # On a hub, whose rows these are: "" the hub's own, a section's code, "network" the sum.
    "section",
)


def stats_csv(stats: ActionStats) -> str:
    out = io.StringIO()
    writer = csv_writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    _write_counts(writer, stats.reference, stats, section="")
    # On a hub: each section's rows (its own reference), then the network's total.
    for code, part in stats.sections.items():
        _write_counts(writer, part.reference or stats.reference, part, section=code)
    if stats.sections and stats.network is not None:
        _write_counts(writer, stats.reference, stats.network, section=NETWORK, countries=False)
    return out.getvalue()


NETWORK = "network"


def _write_counts(
    writer: Any, reference: str, counts: Counts, *, section: str, countries: bool = True
) -> None:
    empty_totals = [""] * (len(CSV_COLUMNS) - 6)
    if countries:
        for country, c in counts.by_country.items():
            writer.writerow(
                [reference, country, c.recipients, c.people, c.actions, *empty_totals, section]
            )
    deliveries: list[int] = []
    for channel in CHANNELS:
        d = counts.deliveries[channel]
        deliveries += [counts.recipients.get(channel, 0), d.sent, d.delivered, d.failed]
    writer.writerow(
        [
            reference,
            "TOTAL",
            sum(c.recipients for c in counts.by_country.values()),
            counts.responses.people,
            counts.responses.actions,
            *(counts.responses.by_kind.get(kind, 0) for kind in RESPONSE_KINDS),
            *deliveries,
            section,
        ]
    )


def csv_filename(reference: str) -> str:
    # "UA 12/26" -> "ua-12-26-stats.csv"
    slug = "".join(ch if ch.isalnum() else "-" for ch in reference.lower()).strip("-")
    return f"{slug}-stats.csv"


def sse_event(stats: ActionStats) -> str:
    # JSON has no raw newlines, so the data is one line.
    return f"event: stats\ndata: {stats.model_dump_json(exclude_unset=True)}\n\n"


KEEP_ALIVE = ": keep-alive\n\n"


async def stats_stream(
    *,
    action_id: uuid.UUID,
    first: ActionStats,
    load: Callable[[], Awaitable[ActionStats]],
    changed_at: Callable[[], Awaitable[datetime | None]],
    notifier: StatsNotifier,
    poll_interval: float = 1.0,
    keep_alive_interval: float = 15.0,
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
    recheck_interval: float = 15.0,
) -> AsyncIterator[str]:
    """The current counts, then new counts whenever they change, until the client goes away
    or, checked every ``recheck_interval``, ``still_allowed`` says its caller no longer may.

    Woken at once by the tally consumer of this process; the poll of ``updated_at`` catches
    changes counted by another publisher process. Starlette cancels this generator when the
    client disconnects.
    """
    with notifier.listen(action_id) as woken:
        yield sse_event(first)
        last_body = first.model_dump_json()
        last_changed_at: datetime | None = first.updated_at
        last_sent = last_checked = time.monotonic()
        while True:
            if still_allowed is not None and time.monotonic() - last_checked >= recheck_interval:
                if not await still_allowed():
                    return  # signed out, revoked or disabled: the stream ends
                last_checked = time.monotonic()
            try:
                await asyncio.wait_for(woken.wait(), timeout=poll_interval)
            except TimeoutError:
                pass
            notified = woken.is_set()
            woken.clear()
            current = await changed_at()
            if notified or current != last_changed_at:
                last_changed_at = current
                stats = await load()
                body = stats.model_dump_json()
                if body != last_body:
                    last_body = body
                    last_sent = time.monotonic()
                    yield sse_event(stats)
                    continue
            if time.monotonic() - last_sent >= keep_alive_interval:
                last_sent = time.monotonic()
                yield KEEP_ALIVE
