"""Subscribers and suppressions in and out as CSV (``uanet subscribers|suppressions ...``).

Everything streams: rows are read, checked and written ``CHUNK_SIZE`` at a time, one transaction
per chunk, so memory stays flat whatever the file's size and an interrupted import keeps the
chunks it committed (running it again refuses those rows as already subscribed).

An address we already have is refused ("already subscribed"), never updated: the person may have
changed their preferences or left since the other platform's list was made, and what they chose
here wins.
"""

from __future__ import annotations

import asyncio
import csv
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from datetime import datetime
from itertools import islice
from typing import IO, Any, cast

from pydantic import ValidationError
from sqlalchemy import Table, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions import store
from services.subscriptions.links import Links
from services.subscriptions.models import (
    CONFIRMED,
    PENDING,
    Consent,
    Outbox,
    Subscriber,
    Suppression,
)
from services.subscriptions.schemas import (
    TEXT_INPUT,
    FieldError,
    SubscriberCreate,
    normalize_email,
    normalize_phone,
)
from services.subscriptions.subscribers import confirmation_message, may_ask_to_confirm
from shared.db import insert_or_ignore, outbox_row, refresh_statistics, utcnow
from shared.logs import mask_address
from shared.spreadsheet import csv_writer, read_cell

CHUNK_SIZE = 1000
# Chunks being checked ahead of the one being written.
READ_AHEAD = 3
SUBSCRIBER_COLUMNS = (
    "email",
    "phone",
    "name",
    "country",
    "language",
    "timezone",
    "channels",
    "themes",
    "frequency",
)
# What an export adds to the sign-up columns (an import ignores them).
EXPORT_COLUMNS = (
    "id",
    *SUBSCRIBER_COLUMNS,
    "email_status",
    "sms_status",
    "created_at",
)
SUPPRESSION_COLUMNS = ("channel", "address", "reason")
SUPPRESSION_REASONS = frozenset({"opted_out", "hard_bounce", "unsubscribed", "complaint"})
LIST_SEPARATOR = ";"
# The tables themselves: Core inserts, not the ORM's (see _insert_subscribers).
SUBSCRIBERS = cast(Table, Subscriber.__table__)
CONSENTS = cast(Table, Consent.__table__)
ALREADY_SUBSCRIBED = "already subscribed"


class BadFile(Exception):
    """The file cannot be imported at all (its header); ``str()`` is one line."""


@dataclass(frozen=True)
class Refusal:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass
class ImportReport:
    taken: int = 0
    refused: int = 0
    # Suppressions only: rows already on the list (taken, nothing changed).
    unchanged: int = 0
    confirmations: int = 0


OnRefused = Callable[[Refusal], None]


# ---- reading ------------------------------------------------------------------------------------


def csv_rows(handle: IO[str], required: Iterable[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line number, row)`` of a CSV file, lazily; header names are case- and space-blind."""
    reader = csv.reader(handle)
    try:
        header = next(reader)
    except StopIteration:
        raise BadFile("the file is empty (a header line is needed)") from None
    names = [name.strip().lower().lstrip("\ufeff") for name in header]
    missing = [name for name in required if name not in names]
    if missing:
        raise BadFile(f"missing column(s): {', '.join(missing)}")
    for values in reader:
        if not any(value.strip() for value in values):
            continue  # blank line
        row = {name: read_cell(value) for name, value in zip(names, values, strict=False) if name}
        yield reader.line_num, row


def _chunks(rows: Iterator[Any], size: int) -> Iterator[list[Any]]:
    while chunk := list(islice(rows, size)):
        yield chunk


def _refusal_of(line: int, exc: ValidationError | FieldError) -> Refusal:
    if isinstance(exc, FieldError):
        return Refusal(line, exc.field, exc.message)
    err = exc.errors(include_input=False, include_url=False)[0]
    name = str(err["loc"][0]) if err["loc"] else "row"
    return Refusal(line, name, str(err["msg"]).removeprefix("Value error, "))


def _sign_up_of(row: dict[str, str]) -> SubscriberCreate:
    # An empty cell means "not given", so the sign-up's defaults apply.
    given = {k: v for k, v in row.items() if k in SUBSCRIBER_COLUMNS and v.strip()}
    return SubscriberCreate.model_validate(given, context=TEXT_INPUT).checked()


# ---- subscribers in -----------------------------------------------------------------------------


def validate_chunk(
    chunk: list[tuple[int, dict[str, str]]],
) -> list[tuple[int, SubscriberCreate | Refusal]]:
    """Check each row as a sign-up (a pure function: it may run in another process)."""
    checked: list[tuple[int, SubscriberCreate | Refusal]] = []
    for line, row in chunk:
        try:
            checked.append((line, _sign_up_of(row)))
        except (ValidationError, FieldError) as exc:
            checked.append((line, _refusal_of(line, exc)))
    return checked


async def import_subscribers(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    rows: Iterator[tuple[int, dict[str, str]]],
    confirmed: bool,
    links: Links | None,
    on_refused: OnRefused,
    chunk_size: int = CHUNK_SIZE,
    executor: Executor | None = None,
) -> ImportReport:
    """Take each valid row whose addresses we do not have yet.

    ``confirmed``: they consented elsewhere (a move from another platform), so their channels are
    confirmed with consent source ``import``. Otherwise each channel waits for the confirmation we
    send (``links`` is then needed to build it).

    With an ``executor`` (processes), the next chunks are checked while this one is written:
    checking addresses and numbers is most of the work.
    """
    if not confirmed and links is None:
        raise ValueError("links are needed to send confirmations")
    loop = asyncio.get_running_loop()
    chunks = _chunks(rows, chunk_size)
    in_flight: deque[asyncio.Future[list[tuple[int, SubscriberCreate | Refusal]]]] = deque()

    def read_ahead() -> None:
        chunk = next(chunks, None)
        if chunk is None:
            return
        if executor is None:
            done = loop.create_future()
            done.set_result(validate_chunk(chunk))
            in_flight.append(done)
        else:
            in_flight.append(loop.run_in_executor(executor, validate_chunk, chunk))

    # Bounded read-ahead: memory stays at a few chunks whatever the file's size.
    for _ in range(READ_AHEAD):
        read_ahead()
    report = ImportReport()
    while in_flight:
        checked = await in_flight.popleft()
        read_ahead()
        accepted: list[tuple[int, SubscriberCreate]] = []
        refusals: list[Refusal] = []
        for line, outcome in checked:
            if isinstance(outcome, Refusal):
                refusals.append(outcome)
            else:
                accepted.append((line, outcome))
        refusals += await _take_chunk(sessionmaker, accepted, report, confirmed, links)
        for refusal in sorted(refusals, key=lambda r: r.line):
            _refuse(report, on_refused, refusal)
    if report.taken:  # an action published at once is planned on what was imported
        async with sessionmaker() as session, session.begin():
            await refresh_statistics(session, SUBSCRIBERS.name, CONSENTS.name)
    return report


async def _take_chunk(
    sessionmaker: async_sessionmaker[AsyncSession],
    accepted: list[tuple[int, SubscriberCreate]],
    report: ImportReport,
    confirmed: bool,
    links: Links | None,
) -> list[Refusal]:
    """One transaction: insert the rows whose addresses are new; returns the others' refusals."""
    for attempt in range(3):
        duplicates: list[Refusal] = []
        try:
            async with sessionmaker() as session, session.begin():
                fresh = await _without_known_addresses(session, accepted, duplicates.append)
                confirmations = 0
                if fresh:
                    confirmations = await _insert_subscribers(
                        session, fresh, confirmed=confirmed, links=links
                    )
            break
        except IntegrityError:
            # Someone signed up with one of these addresses in between: check again.
            if attempt == 2:
                raise
    report.taken += len(fresh)
    report.confirmations += confirmations
    return duplicates


def _refuse(report: ImportReport, on_refused: OnRefused, refusal: Refusal) -> None:
    report.refused += 1
    on_refused(refusal)


async def _without_known_addresses(
    session: AsyncSession,
    accepted: list[tuple[int, SubscriberCreate]],
    on_refused: OnRefused,
) -> list[SubscriberCreate]:
    emails = [s.email for _, s in accepted if s.email is not None]
    phones = [s.phone for _, s in accepted if s.phone is not None]
    known: set[str] = set()
    if emails:
        query = select(Subscriber.email).where(Subscriber.email.in_(emails))
        known.update(e for e in (await session.execute(query)).scalars() if e)
    if phones:
        query = select(Subscriber.phone).where(Subscriber.phone.in_(phones))
        known.update(p for p in (await session.execute(query)).scalars() if p)
    fresh: list[SubscriberCreate] = []
    for line, sign_up in accepted:
        for name, address in (("email", sign_up.email), ("phone", sign_up.phone)):
            if address is not None and address in known:
                reason = f"{ALREADY_SUBSCRIBED} ({mask_address(address)})"
                on_refused(Refusal(line, name, reason))
                break
        else:
            fresh.append(sign_up)
            # A second row with the same address further down the file is a duplicate too.
            known.update(a for a in (sign_up.email, sign_up.phone) if a is not None)
    return fresh


async def _insert_subscribers(
    session: AsyncSession,
    sign_ups: list[SubscriberCreate],
    *,
    confirmed: bool,
    links: Links | None,
) -> int:
    """Insert one chunk; returns how many confirmations were asked for."""
    now = utcnow()
    status = CONFIRMED if confirmed else PENDING
    values = [
        {
            "public_id": uuid.uuid4(),
            "email": s.email,
            "phone": s.phone,
            "name": s.name,
            "country": s.country,
            "language": s.language,
            "timezone": s.timezone or "UTC",
            "themes": list(s.themes),
            "frequency": s.frequency,
            "email_status": status if "email" in s.wanted_channels else None,
            "sms_status": status if "sms" in s.wanted_channels else None,
            "confirmations_window_start": None if confirmed else now,
            "confirmations_in_window": 0 if confirmed else len(s.wanted_channels),
            "created_at": now,
            "updated_at": now,
        }
        for s in sign_ups
    ]
    # Core executemany without RETURNING: one round trip a chunk on both databases (the ORM's
    # RETURNING path costs a statement per row on SQLite). Ids are read back by public id.
    await session.execute(insert(SUBSCRIBERS), values)
    public_ids = [cast(uuid.UUID, row["public_id"]) for row in values]
    query = select(Subscriber.public_id, Subscriber.id).where(Subscriber.public_id.in_(public_ids))
    id_of = dict((await session.execute(query)).tuples().all())
    ids = [id_of[public_id] for public_id in public_ids]
    consents: list[dict[str, Any]] = []
    events = ("given", "confirmed") if confirmed else ("given",)
    for subscriber_id, sign_up in zip(ids, sign_ups, strict=True):
        for channel in sign_up.wanted_channels:
            for event in events:
                consents.append(
                    {
                        "subscriber_id": subscriber_id,
                        "channel": channel,
                        "event": event,
                        "source": "import",
                        "at": now,
                        "client_address": None,
                    }
                )
    if consents:
        await session.execute(insert(CONSENTS), consents)
    if confirmed or links is None:
        return 0
    return await _ask_to_confirm(session, links, values, sign_ups)


async def _ask_to_confirm(
    session: AsyncSession,
    links: Links,
    values: list[dict[str, Any]],
    sign_ups: list[SubscriberCreate],
) -> int:
    addresses = [a for s in sign_ups for a in (s.email, s.phone) if a is not None]
    reasons = await _suppression_reasons(session, addresses)
    asked = 0
    for row, sign_up in zip(values, sign_ups, strict=True):
        for channel in sign_up.wanted_channels:
            address = sign_up.email if channel == "email" else sign_up.phone
            if address is None or not may_ask_to_confirm(channel, reasons.get(address)):
                continue
            message = confirmation_message(
                links,
                public_id=row["public_id"],
                channel=channel,
                address=address,
                name=sign_up.name,
                language=sign_up.language,
            )
            session.add(outbox_row(Outbox, message))
            asked += 1
    return asked


async def _suppression_reasons(session: AsyncSession, addresses: list[str]) -> dict[str, str]:
    if not addresses:
        return {}
    query = select(Suppression.address, Suppression.reason).where(
        Suppression.address.in_(addresses)
    )
    return dict((await session.execute(query)).tuples().all())


# ---- subscribers out ----------------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


async def _stream(session: AsyncSession, query: Any) -> AsyncIterator[Any]:
    result = await session.stream_scalars(query.execution_options(yield_per=CHUNK_SIZE))
    async for item in result:
        yield item


async def export_subscribers(
    *, sessionmaker: async_sessionmaker[AsyncSession], handle: IO[str]
) -> int:
    """Every subscriber not erased, in the import's columns plus id, statuses and sign-up time."""
    writer = csv_writer(handle)
    writer.writerow(EXPORT_COLUMNS)
    written = 0
    async with sessionmaker() as session:
        query = select(Subscriber).where(Subscriber.erased_at.is_(None)).order_by(Subscriber.id)
        async for s in _stream(session, query):
            channels = [c for c in ("email", "sms") if s.channel_status(c) in (PENDING, CONFIRMED)]
            writer.writerow(
                (
                    str(s.public_id),
                    s.email or "",
                    s.phone or "",
                    s.name,
                    s.country,
                    s.language,
                    s.timezone,
                    LIST_SEPARATOR.join(channels),
                    LIST_SEPARATOR.join(s.themes or []),
                    s.frequency,
                    s.email_status or "",
                    s.sms_status or "",
                    _when(s.created_at),
                )
            )
            written += 1
    return written


# ---- suppressions -------------------------------------------------------------------------------


def _suppression_of(line: int, row: dict[str, str]) -> dict[str, Any] | Refusal:
    channel = row.get("channel", "").strip().lower()
    if channel not in ("email", "sms"):
        return Refusal(line, "channel", "must be email or sms")
    reason = row.get("reason", "").strip().lower() or "opted_out"
    if reason not in SUPPRESSION_REASONS:
        return Refusal(line, "reason", f"must be one of {', '.join(sorted(SUPPRESSION_REASONS))}")
    raw = row.get("address", "").strip()
    try:
        # Numbers must be international (+…): a suppression list has no country to read them by.
        address = normalize_email(raw) if channel == "email" else normalize_phone(raw, None)
    except ValueError as exc:
        return Refusal(line, "address", str(exc))
    return {"channel": channel, "address": address, "reason": reason}


async def import_suppressions(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    rows: Iterator[tuple[int, dict[str, str]]],
    on_refused: OnRefused,
    chunk_size: int = CHUNK_SIZE,
) -> ImportReport:
    """Add addresses that must never be contacted. They stop sending at once: every page of an
    audience is checked against this list when it is handed to the dispatcher."""
    report = ImportReport()
    for chunk in _chunks(rows, chunk_size):
        values: dict[str, dict[str, Any]] = {}
        for line, row in chunk:
            parsed = _suppression_of(line, row)
            if isinstance(parsed, Refusal):
                _refuse(report, on_refused, parsed)
            else:
                values.setdefault(parsed["address"], {**parsed, "at": utcnow()})
                report.taken += 1
        async with sessionmaker() as session, session.begin():
            inserted = await insert_or_ignore(session, Suppression, list(values.values()))
            await store.touch_subscribers_with(session, list(values))
        report.unchanged += len(values) - inserted
    if report.taken:  # every page of an audience looks its addresses up in this list
        async with sessionmaker() as session, session.begin():
            await refresh_statistics(session, Suppression.__tablename__)
    return report


async def export_suppressions(
    *, sessionmaker: async_sessionmaker[AsyncSession], handle: IO[str]
) -> int:
    writer = csv_writer(handle)
    writer.writerow((*SUPPRESSION_COLUMNS, "at"))
    written = 0
    async with sessionmaker() as session:
        query = select(Suppression).order_by(Suppression.id)
        async for s in _stream(session, query):
            writer.writerow((s.channel, s.address, s.reason, _when(s.at)))
            written += 1
    return written


@dataclass
class RefusalPrinter:
    """Prints refusals as they come, up to a limit (a wholly wrong file is not 100,000 lines)."""

    echo: Callable[[str], None]
    limit: int = 1000
    shown: int = field(default=0, init=False)

    def __call__(self, refusal: Refusal) -> None:
        self.shown += 1
        if self.shown <= self.limit:
            self.echo(f"refused {refusal}")
        elif self.shown == self.limit + 1:
            self.echo(f"(more refusals not shown; the first {self.limit} are above)")
