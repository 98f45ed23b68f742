"""The webhook deliverer in-process on a migrated publisher database, with endpoints on a loopback
receiver (``devtools.webhook_inbox``): for the tests and the benchmark of its lanes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import time
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select

from devtools.webhook_inbox import Responder, WebhookInbox, always_ok
from services.publisher.audit import Actor
from services.publisher.database import Database
from services.publisher.webhooks.delivery import PER_ENDPOINT, WebhookDeliverer
from services.publisher.webhooks.models import PENDING, WebhookDelivery, WebhookEvent
from services.publisher.webhooks.record import record_event
from services.publisher.webhooks.registry import WebhookEndpointCreate, add_endpoint
from services.publisher.webhooks.standard import event_body
from shared.db import make_engine, make_sessionmaker, utcnow
from shared.migrations import upgrade
from tests.conftest import SECRET
from tests.support import free_port


async def add_url(database: Database, url: str, events: list[str]) -> tuple[uuid.UUID, str]:
    """An endpoint at ``url``: its id and secret."""
    async with database.write() as session:
        endpoint, secret = await add_endpoint(
            session,
            endpoint_in=WebhookEndpointCreate(url=url, events=events),
            secret_key=SECRET,
            actor=Actor.command_line(),
        )
    return endpoint.id, secret


async def add(database: Database, inbox: WebhookInbox, name: str, events: list[str]) -> uuid.UUID:
    """An endpoint ``name`` on the inbox, its secret given to the inbox to verify with."""
    endpoint_id, inbox.secrets[name] = await add_url(database, inbox.url(name), events)
    return endpoint_id


async def record(database: Database, event_type: str, count: int, chunk: int = 500) -> None:
    """``count`` events of ``event_type`` for the endpoints that want it, ``chunk`` at a time."""
    for start in range(0, count, chunk):
        async with database.write() as session:
            for i in range(start, min(count, start + chunk)):
                await record_event(session, event_type, {"n": i})


async def states(database: Database, endpoint_id: uuid.UUID) -> dict[tuple[str, int], int]:
    """How many of the endpoint's deliveries are in each (state, attempts)."""
    async with database.read() as session:
        rows = await session.execute(
            select(WebhookDelivery.state, WebhookDelivery.attempts, func.count())
            .where(WebhookDelivery.endpoint_id == endpoint_id)
            .group_by(WebhookDelivery.state, WebhookDelivery.attempts)
        )
        return {(state, attempts): count for state, attempts, count in rows.all()}


@contextlib.asynccontextmanager
async def inbox_on_loopback(respond: Responder = always_ok) -> AsyncIterator[WebhookInbox]:
    inbox = WebhookInbox(respond=respond)
    await inbox.start()
    try:
        yield inbox
    finally:
        await inbox.stop()


@contextlib.asynccontextmanager
async def delivering(
    database: Database,
    *,
    retry_delays: Sequence[timedelta] = (timedelta(seconds=5),),
    disable_after: timedelta = timedelta(days=5),
) -> AsyncIterator[WebhookDeliverer]:
    deliverer = WebhookDeliverer(
        database, secret_key=SECRET, retry_delays=retry_delays, disable_after=disable_after
    )
    deliverer.start()
    try:
        yield deliverer
    finally:
        await deliverer.stop()


async def seed_pending(
    database: Database, endpoint_id: uuid.UUID, count: int, chunk: int = 5000
) -> None:
    """``count`` events due now for the endpoint, written in bulk (as a long outage leaves them)."""
    now = utcnow()
    data = {"action_id": str(uuid.uuid4()), "reference": "UA 1/26", "outcome": "released"}
    body = event_body("action.closed", now, data)
    for start in range(0, count, chunk):
        ids = [f"msg_{uuid.uuid4().hex}" for _ in range(min(chunk, count - start))]
        async with database.write() as session:
            await session.execute(
                insert(WebhookEvent),
                [{"id": i, "type": "action.closed", "occurred_at": now, "body": body} for i in ids],
            )
            await session.execute(
                insert(WebhookDelivery),
                [
                    {
                        "endpoint_id": endpoint_id,
                        "event_id": i,
                        "state": PENDING,
                        "attempts": 0,
                        "next_attempt_at": now,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for i in ids
                ],
            )


@dataclass(frozen=True)
class BacklogMemory:
    waiting: int
    tries: int
    seconds: float
    # Python's allocations (tracemalloc) during the passes: the most held above what was held
    # when they began, and what is still held at the end above that.
    peak_growth: int
    held_growth: int
    rss_growth: int


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def backlog_memory(database: Database, *, waiting: int, tries: int) -> BacklogMemory:
    """Seed ``waiting`` deliveries for a dead endpoint (connections refused), run the deliverer
    through ``tries`` failed tries (claim, try, record the retry an hour later; after a warm-up
    of a few passes), and measure its memory over them."""
    endpoint_id, _ = await add_url(
        database, f"http://127.0.0.1:{free_port()}/dead", ["action.closed"]
    )
    await seed_pending(database, endpoint_id, waiting)
    retried = (
        select(func.count())
        .select_from(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.state == PENDING,
            WebhookDelivery.next_attempt_at > utcnow() + timedelta(minutes=30),
        )
    )

    async def tried() -> int:
        async with database.read() as session:
            return int((await session.execute(retried)).scalar_one())

    gc.collect()
    tracemalloc.start()
    try:
        async with delivering(database, retry_delays=(timedelta(hours=1),)):
            warm_up = 4 * PER_ENDPOINT
            while await tried() < warm_up:
                await asyncio.sleep(0.05)
            gc.collect()
            tracemalloc.reset_peak()
            start, _ = tracemalloc.get_traced_memory()
            rss = _rss()
            began = time.monotonic()
            while (done := await tried()) < warm_up + tries:
                await asyncio.sleep(0.05)
            seconds = time.monotonic() - began
            gc.collect()
            held, peak = tracemalloc.get_traced_memory()
            rss_growth = _rss() - rss
    finally:
        tracemalloc.stop()
    return BacklogMemory(waiting, done - warm_up, seconds, peak - start, held - start, rss_growth)


@contextlib.asynccontextmanager
async def publisher_database(url: str) -> AsyncIterator[Database]:
    """The publisher's database at ``url``, migrated (for a benchmark outside pytest)."""
    await asyncio.to_thread(upgrade, "publisher", url)
    engine = make_engine(url)
    try:
        yield Database(engine, make_sessionmaker(engine))
    finally:
        await engine.dispose()
