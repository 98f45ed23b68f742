"""Writing an event for the endpoints that want it, in the caller's transaction.

Called in the transaction of the change the event reports (a publish, a close) or of the
consumer that took the other service's event off the broker: the event exists if and only if
the change does. Nothing is written when no endpoint wants the type, so a deployment without
webhooks keeps nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import delete, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.webhooks.models import (
    ACTIVE,
    PENDING,
    SECTION_INBOX,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from services.publisher.webhooks.standard import (
    PERSONAL_TYPES,
    EventType,
    event_body,
    new_event_id,
)
from shared.db import utcnow


async def record_event(
    session: AsyncSession,
    event_type: EventType | str,
    data: Mapping[str, Any],
    *,
    occurred_at: datetime | None = None,
    subscriber_id: uuid.UUID | None = None,
    event_id: str | None = None,
    sections: list[str] | None = None,
    topic: str | None = None,
) -> str | None:
    """Store the event and a pending delivery for each active endpoint subscribed to its type;
    returns its ``webhook-id`` (None when no endpoint wants it).

    ``sections``: the sections whose inboxes take it (None: every section's; the hub passes
    those the action was sent to). ``topic``: a new event replaces the waiting ones of its topic."""
    endpoints = (
        await session.execute(
            select(
                WebhookEndpoint.id,
                WebhookEndpoint.events,
                WebhookEndpoint.kind,
                WebhookEndpoint.section_code,
            ).where(WebhookEndpoint.state == ACTIVE)
        )
    ).all()
    wanting = [
        endpoint_id
        for endpoint_id, types, kind, code in endpoints
        if event_type in types and (kind != SECTION_INBOX or sections is None or code in sections)
    ]
    if not wanting:
        return None
    if topic is not None:
        await _drop_waiting(session, topic)
    now = utcnow()
    occurred_at = occurred_at or now
    event_id = event_id or new_event_id()
    session.add(
        WebhookEvent(
            id=event_id,
            type=event_type,
            occurred_at=occurred_at,
            body=event_body(event_type, occurred_at, data),
            subscriber_id=subscriber_id,
            personal=event_type in PERSONAL_TYPES,
            topic=topic,
        )
    )
    await session.flush()  # the event before its deliveries (their foreign key)
    session.add_all(
        WebhookDelivery(
            endpoint_id=endpoint_id,
            event_id=event_id,
            state=PENDING,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
        for endpoint_id in wanting
    )
    return event_id


async def _drop_waiting(session: AsyncSession, topic: str) -> None:
    """The waiting (not in flight) deliveries of ``topic``'s earlier events go: only the
    newest matters."""
    earlier = select(WebhookEvent.id).where(WebhookEvent.topic == topic)
    await session.execute(
        delete(WebhookDelivery)
        .where(
            WebhookDelivery.event_id.in_(earlier),
            WebhookDelivery.state == PENDING,
            WebhookDelivery.lease_until.is_(None),
        )
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        delete(WebhookEvent)
        .where(
            WebhookEvent.topic == topic,
            ~exists().where(WebhookDelivery.event_id == WebhookEvent.id),
        )
        .execution_options(synchronize_session=False)
    )


async def forget_subscriber(session: AsyncSession, subscriber_id: uuid.UUID) -> int:
    """Erasure: every event about that person, delivered or waiting, goes with its deliveries
    (nothing still waiting carries their data; no record keeps a trace). Returns how many."""
    ids = list(
        (
            await session.execute(
                select(WebhookEvent.id).where(WebhookEvent.subscriber_id == subscriber_id)
            )
        ).scalars()
    )
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        await session.execute(
            delete(WebhookDelivery)
            .where(WebhookDelivery.event_id.in_(chunk))
            .execution_options(synchronize_session=False)
        )
        await session.execute(
            delete(WebhookEvent)
            .where(WebhookEvent.id.in_(chunk))
            .execution_options(synchronize_session=False)
        )
    return len(ids)
