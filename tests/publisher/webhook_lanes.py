"""The webhook deliverer in-process on a migrated publisher database, with endpoints on a loopback
receiver (``devtools.webhook_inbox``): for the tests and the benchmark of its lanes."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

from sqlalchemy import func, select

from devtools.webhook_inbox import Responder, WebhookInbox, always_ok
from services.publisher.audit import Actor
from services.publisher.database import Database
from services.publisher.webhooks.delivery import WebhookDeliverer
from services.publisher.webhooks.models import WebhookDelivery
from services.publisher.webhooks.record import record_event
from services.publisher.webhooks.registry import WebhookEndpointCreate, add_endpoint
from tests.conftest import SECRET


async def add(database: Database, inbox: WebhookInbox, name: str, events: list[str]) -> uuid.UUID:
    """An endpoint ``name`` on the inbox, its secret given to the inbox to verify with."""
    async with database.write() as session:
        endpoint, secret = await add_endpoint(
            session,
            endpoint_in=WebhookEndpointCreate(url=inbox.url(name), events=events),
            secret_key=SECRET,
            actor=Actor.command_line(),
        )
    inbox.secrets[name] = secret
    return endpoint.id


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
