"""The ledger's writes of many rows at once, one way per database.

SQLite: a claim is one statement, and a commit of outcomes one trip to the connection's thread
(``shared.db.sqlite_in_one_trip``): every trip waits for a turn of the busy event loop. PostgreSQL:
one statement for a whole batch's claims or a whole commit's outcomes, the rows passed as arrays
and turned back into rows by ``unnest``; an executemany there is one statement execution per row
on the server (parameters parsed, a plan, an index lookup each) and made the dispatcher's writes
cost half again as much as on SQLite.
"""

from __future__ import annotations

import functools
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    column,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.models import RETRY, SENDING, Delivery, Outbox
from shared.db import UTCDateTime, outbox_values, sqlite_in_one_trip
from shared.events import Message

deliveries = cast(Table, Delivery.__table__)
KEY = ["subscriber_id", "action_id", "message_kind", "channel"]  # uq_dispatch_delivery

# PostgreSQL: a batch's claims.
_claimed = (
    func.unnest(
        bindparam("subscriber_ids", type_=postgresql.ARRAY(String)),
        bindparam("channels", type_=postgresql.ARRAY(String)),
    )
    .table_valued(column("subscriber_id", String), column("channel", String))
    .render_derived(name="wanted")
)
_claim_insert = postgresql.insert(deliveries).from_select(
    [*KEY, "status", "claim_token", "attempts", "created_at", "updated_at"],
    select(
        _claimed.c.subscriber_id,
        bindparam("action_id", type_=String),
        bindparam("message_kind", type_=String),
        _claimed.c.channel,
        literal(SENDING),
        bindparam("token", type_=String),
        literal(1),
        bindparam("now", type_=UTCDateTime),
        bindparam("now", type_=UTCDateTime),
    )
    # Key order, like every other writer of these rows: no lock-order deadlock.
    .order_by(_claimed.c.subscriber_id, _claimed.c.channel),
)
# New rows are inserted; one left ``retry`` or abandoned ``sending`` (lease run out) is taken
# back; any other is left alone. RETURNING names the rows this handling now owns.
CLAIM_PG = _claim_insert.on_conflict_do_update(
    index_elements=KEY,
    set_={
        "status": SENDING,
        "claim_token": _claim_insert.excluded.claim_token,
        "attempts": deliveries.c.attempts + 1,
        "updated_at": _claim_insert.excluded.updated_at,
    },
    where=or_(
        deliveries.c.status == RETRY,
        and_(
            deliveries.c.status == SENDING,
            deliveries.c.updated_at < bindparam("stale", type_=UTCDateTime),
        ),
    ),
).returning(deliveries.c.id, deliveries.c.subscriber_id, deliveries.c.channel)

# SQLite: the same claim in one statement, the keys passed as one JSON array of [subscriber,
# channel] pairs. It was three (take back the retry rows, an executemany of 500 inserts, a
# select of what came of them), and a claim held the process's one connection for 34 ms at
# the median while 500 rows' parameters were built in Python between the statements: the
# outcomes of the batches being sent waited behind it, so did every send holding an in-doubt
# slot. (``WHERE true``: SQLite's parser needs it between a SELECT and ON CONFLICT.)
CLAIM_SQLITE = text(
    """
    INSERT INTO dispatch_deliveries
        (subscriber_id, action_id, message_kind, channel, status, claim_token, attempts,
         created_at, updated_at)
    SELECT json_extract(wanted.value, '$[0]'), :action_id, :message_kind,
           json_extract(wanted.value, '$[1]'), :sending, :token, 1, :now, :now
    FROM json_each(:keys) AS wanted WHERE true
    ORDER BY wanted.key
    ON CONFLICT (subscriber_id, action_id, message_kind, channel) DO UPDATE SET
        status = excluded.status,
        claim_token = excluded.claim_token,
        attempts = dispatch_deliveries.attempts + 1,
        updated_at = excluded.updated_at
    WHERE dispatch_deliveries.status = :retry
       OR (dispatch_deliveries.status = :sending AND dispatch_deliveries.updated_at < :stale)
    RETURNING id, subscriber_id, channel
    """
).bindparams(
    bindparam("now", type_=UTCDateTime),
    bindparam("stale", type_=UTCDateTime),
    sending=SENDING,
    retry=RETRY,
)

# (column, element type) of each outcome's value: its row, then the columns it sets.
_Stamp = postgresql.TIMESTAMP(timezone=True)
_OUTCOME_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("row_id", BigInteger),
    ("status", String),
    ("claim_token", String),
    ("updated_at", _Stamp),
    ("error_code", String),
    ("segments", Integer),
    ("provider_message_id", String),
    ("sent_at", _Stamp),
    ("not_before", _Stamp),
    # JSON as text: an array of json would need a codec on every connection.
    ("held", String),
)
_outcomes = (
    func.unnest(*(bindparam(name, type_=postgresql.ARRAY(kind)) for name, kind in _OUTCOME_COLUMNS))
    .table_valued(*(column(name, kind) for name, kind in _OUTCOME_COLUMNS))
    .render_derived(name="outcome")
)
RECORD_OUTCOMES_PG = (
    update(deliveries)
    .where(deliveries.c.id == _outcomes.c.row_id)
    .values(
        {
            name: sql_cast(_outcomes.c[name], JSON) if name == "held" else _outcomes.c[name]
            for name, _ in _OUTCOME_COLUMNS[1:]
        }
    )
)


# The outbox rows reporting them, in the same statement (the UPDATE as a data-modifying CTE).
_outbox = cast(Table, Outbox.__table__)
_EVENT_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("outbox_id", String),
    ("outbox_routing_key", String),
    ("outbox_body", Text),
    ("outbox_created_at", _Stamp),
)
_reports = (
    func.unnest(*(bindparam(name, type_=postgresql.ARRAY(kind)) for name, kind in _EVENT_COLUMNS))
    .table_valued(*(column(name, kind) for name, kind in _EVENT_COLUMNS))
    .render_derived(name="report")
)
RECORD_WITH_REPORTS_PG = (
    postgresql.insert(_outbox)
    .from_select(
        ["id", "routing_key", "body", "created_at"],
        select(*(_reports.c[name] for name, _ in _EVENT_COLUMNS)),
    )
    .add_cte(RECORD_OUTCOMES_PG.returning(deliveries.c.id).cte("recorded"))
)


# SQLite: outcomes and their reports in one trip to the connection's thread (see
# ``shared.db.sqlite_in_one_trip``), as plain statements with the columns' own bind processing.
_RECORD_SQLITE = "UPDATE {table} SET {columns} WHERE id = ?".format(
    table=deliveries.name,
    columns=", ".join(f"{name} = ?" for name, _ in _OUTCOME_COLUMNS[1:]),
)
_REPORT_COLUMNS = ("id", "routing_key", "body", "created_at")
_REPORT_SQLITE = "INSERT INTO {table} ({columns}) VALUES ({marks})".format(
    table=_outbox.name, columns=", ".join(_REPORT_COLUMNS), marks=", ".join("?" * 4)
)


@functools.cache
def _processors(table: Table, names: tuple[str, ...], dialect: Dialect) -> tuple[Any, ...]:
    """Each column's bind processing on ``dialect``, looked up once (None: bound as it is).
    The dialect's own type: a generic DateTime binds nothing, SQLite's makes its text."""
    return tuple(table.c[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names)


def _bind(table: Table, names: tuple[str, ...], dialect: Dialect) -> list[Callable[[Any], Any]]:
    """Each column's value as SQLAlchemy would bind it (datetimes as text, JSON dumped), each
    distinct value converted once in a commit: its rows share their stamps."""

    def binder(process: Any) -> Callable[[Any], Any]:
        if process is None:
            return lambda value: value
        seen: dict[Any, Any] = {}

        def bound(value: Any) -> Any:
            if value is None:
                return None
            try:
                return seen[value]
            except KeyError:
                seen[value] = result = process(value)
                return result
            except TypeError:  # unhashable (a held recipient's JSON)
                return process(value)

        return bound

    return [binder(process) for process in _processors(table, names, dialect)]


async def commit_outcomes(
    sessionmaker: async_sessionmaker[AsyncSession],
    rows: Sequence[dict[str, Any]],
    reports: Sequence[Message] = (),
) -> None:
    """Write and commit outcomes of claimed rows, in id order (dicts of ``row_id`` and the
    columns it sets: those of ``_OUTCOME_COLUMNS``, the same keys in every row), with the events
    that report them in the outbox."""
    engine = sessionmaker.kw["bind"]
    if engine.dialect.name == "postgresql":
        async with sessionmaker() as session:
            await _record_pg(session, rows, reports)
        return
    names = tuple(name for name, _ in _OUTCOME_COLUMNS[1:])
    binders = _bind(deliveries, names, engine.dialect)
    outcomes = [
        (*(bind(row[name]) for bind, name in zip(binders, names, strict=True)), row["row_id"])
        for row in rows
    ]
    report_binders = _bind(_outbox, _REPORT_COLUMNS, engine.dialect)
    written = []
    for event in reports:
        values = outbox_values(event)
        written.append(
            tuple(
                bind(values[name])
                for bind, name in zip(report_binders, _REPORT_COLUMNS, strict=True)
            )
        )

    def write(connection: sqlite3.Connection) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(_RECORD_SQLITE, outcomes)
            connection.executemany(_REPORT_SQLITE, written)
        except BaseException:
            connection.rollback()
            raise
        connection.commit()

    await sqlite_in_one_trip(engine, write)


def is_postgres(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


async def _record_pg(
    session: AsyncSession, rows: Sequence[dict[str, Any]], reports: Sequence[Message]
) -> None:
    arrays: dict[str, list[Any]] = {name: [] for name, _ in _OUTCOME_COLUMNS}
    for row in rows:
        for name, values in arrays.items():
            values.append(row[name])
    arrays["held"] = [None if held is None else json.dumps(held) for held in arrays["held"]]
    events: dict[str, list[Any]] = {name: [] for name, _ in _EVENT_COLUMNS}
    for event in reports:
        for name, value in outbox_values(event).items():
            events[f"outbox_{name}"].append(value)
    # One statement, so one transaction of its own: no BEGIN and COMMIT round trips.
    connection = await session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
    await connection.execute(RECORD_WITH_REPORTS_PG, {**arrays, **events})
