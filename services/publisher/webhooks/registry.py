"""The registry of webhook endpoints: what admins add, list, remove and replay (API, console and
``uanet webhooks``), each change in the audit log. The schemas of those calls live here too."""

from __future__ import annotations

import ipaddress
import uuid
from datetime import UTC, datetime
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)
from sqlalchemy import and_, delete, func, insert, literal, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher import audit
from services.publisher.audit import WEBHOOK_ADDED, WEBHOOK_REMOVED, WEBHOOK_REPLAYED, Actor
from services.publisher.webhooks.models import (
    ACTIVE,
    PENDING,
    WEBHOOK,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from services.publisher.webhooks.standard import EVENT_TYPES, EventType, new_secret
from shared.db import utcnow
from shared.sealing import seal


class EndpointNotFound(LookupError):
    pass


def _loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint_url(value: str) -> str:
    """``https://…``, or ``http://`` to a loopback address (a receiver on the same host)."""
    from urllib.parse import urlsplit

    value = value.strip()
    if any(c.isspace() or ord(c) < 32 for c in value):
        raise ValueError("must not contain spaces or control characters")
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError("has an invalid port") from None
    host = parts.hostname or ""
    if not host:
        raise ValueError("must be an absolute https:// URL")
    if parts.username or parts.password:
        raise ValueError("must not carry a user name or password")
    if parts.scheme == "https":
        return value
    if parts.scheme == "http" and _loopback(host):
        return value
    raise ValueError("must be https://, or http:// to a loopback address")


def _unique_types(values: list[EventType]) -> list[EventType]:
    return list(dict.fromkeys(values))


EndpointUrl = Annotated[str, StringConstraints(max_length=2000), AfterValidator(check_endpoint_url)]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: EndpointUrl
    events: Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES) * 2)] = (
        Field(description="event types to send; at least one")
    )
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] = ""

    def model_post_init(self, _context: object) -> None:
        object.__setattr__(self, "events", _unique_types(self.events))


class WebhookEndpointRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: uuid.UUID
    url: str
    description: str
    events: list[str]
    state: str = Field(description="active, or disabled (see disabled_reason)")
    disabled_reason: str | None
    created_at: datetime
    last_success_at: datetime | None
    failures_in_a_row: int = Field(description="failed tries since the last success")


class WebhookEndpointCreated(WebhookEndpointRead):
    secret: str = Field(description="the signing secret (whsec_…): shown in this answer only")


class WebhookEndpointList(BaseModel):
    items: list[WebhookEndpointRead]


class WebhookDeliveryRead(BaseModel):
    webhook_id: str
    type: str
    state: str = Field(description="pending, delivered or failed")
    attempts: int
    last_status: int | None
    next_attempt_at: datetime | None
    occurred_at: datetime


class WebhookDeliveryPage(BaseModel):
    """Newest first; ``next_offset`` is null on the last page."""

    items: list[WebhookDeliveryRead]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class WebhookReplay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: datetime = Field(
        description="every event since then goes again, with its first id (no offset: UTC)"
    )

    @field_validator("since")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class WebhookReplayed(BaseModel):
    requeued: int
    not_kept: int = Field(
        description="personal events delivered before and no longer held (privacy: the "
        "publisher keeps a person's data no longer than a delivery takes)"
    )


def _endpoint_subject(endpoint: WebhookEndpoint) -> str:
    return f"webhook {endpoint.id} {endpoint.url}"


async def add_endpoint(
    session: AsyncSession, *, endpoint_in: WebhookEndpointCreate, secret_key: str, actor: Actor
) -> tuple[WebhookEndpoint, str]:
    """A new active endpoint and its secret (returned once, stored sealed)."""
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        url=endpoint_in.url,
        description=endpoint_in.description,
        events=list(endpoint_in.events),
        secret_sealed=seal(secret_key, secret),
        state=ACTIVE,
        created_at=utcnow(),
        failures_in_a_row=0,
    )
    session.add(endpoint)
    audit.record(
        session,
        actor=actor,
        event=WEBHOOK_ADDED,
        subject=_endpoint_subject(endpoint),
        details={"events": endpoint.events, "description": endpoint.description},
    )
    return endpoint, secret


async def list_endpoints(session: AsyncSession) -> list[WebhookEndpoint]:
    """The endpoints admins registered (federation's own are the sections' business)."""
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.kind == WEBHOOK)
        .order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)
    )
    return list((await session.execute(query)).scalars())


async def get_endpoint(session: AsyncSession, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = await session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or endpoint.kind != WEBHOOK:
        raise EndpointNotFound(str(endpoint_id))
    return endpoint


async def remove_endpoint(session: AsyncSession, *, endpoint_id: uuid.UUID, actor: Actor) -> None:
    """Nothing more is sent to it; what waited for it goes with it."""
    endpoint = await get_endpoint(session, endpoint_id)
    audit.record(session, actor=actor, event=WEBHOOK_REMOVED, subject=_endpoint_subject(endpoint))
    await session.execute(
        delete(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .execution_options(synchronize_session=False)
    )
    await session.delete(endpoint)


async def replay(
    session: AsyncSession, *, endpoint_id: uuid.UUID, since: datetime, actor: Actor
) -> WebhookReplayed:
    """Every event of the endpoint's types since ``since`` goes to it again with its first
    ``webhook-id``; a disabled endpoint is active again (the operator says it is back)."""
    endpoint = await get_endpoint(session, endpoint_id)
    now = utcnow()
    endpoint.state = ACTIVE
    endpoint.disabled_reason = None
    endpoint.failing_since = None
    endpoint.failures_in_a_row = 0
    kept = and_(
        WebhookEvent.occurred_at >= since,
        WebhookEvent.body.is_not(None),
        WebhookEvent.type.in_(endpoint.events),
    )
    again = await session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.event_id.in_(select(WebhookEvent.id).where(kept)),
        )
        .values(
            state=PENDING,
            attempts=0,
            next_attempt_at=now,
            lease_until=None,
            last_status=None,
            last_error=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    # Events it never had a delivery of (it was disabled, or added later) go too.
    missing = (
        select(
            literal(endpoint_id),
            WebhookEvent.id,
            literal(PENDING),
            literal(0),
            literal(now),
            literal(now),
            literal(now),
        )
        .where(kept)
        .where(
            ~select(WebhookDelivery.id)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.event_id == WebhookEvent.id,
            )
            .exists()
        )
    )
    added = await session.execute(
        insert(WebhookDelivery).from_select(
            [
                "endpoint_id",
                "event_id",
                "state",
                "attempts",
                "next_attempt_at",
                "created_at",
                "updated_at",
            ],
            missing,
        )
    )
    not_kept = (
        await session.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookEvent.occurred_at >= since,
                WebhookEvent.body.is_(None),
            )
        )
    ).scalar_one()
    requeued = _rowcount(again) + _rowcount(added)
    audit.record(
        session,
        actor=actor,
        event=WEBHOOK_REPLAYED,
        subject=_endpoint_subject(endpoint),
        details={"since": since.isoformat(), "requeued": requeued},
    )
    return WebhookReplayed(requeued=requeued, not_kept=int(not_kept))


def _rowcount(result: object) -> int:
    count = getattr(result, "rowcount", 0)
    return int(count) if count and count > 0 else 0


async def list_deliveries(
    session: AsyncSession, *, endpoint_id: uuid.UUID, limit: int, offset: int
) -> WebhookDeliveryPage:
    await get_endpoint(session, endpoint_id)
    query = (
        select(
            WebhookDelivery.event_id,
            WebhookEvent.type,
            WebhookDelivery.state,
            WebhookDelivery.attempts,
            WebhookDelivery.last_status,
            WebhookDelivery.next_attempt_at,
            WebhookEvent.occurred_at,
        )
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(WebhookEvent.occurred_at.desc(), WebhookDelivery.id.desc())
        .limit(limit)
        .offset(offset)
    )
    rows = (await session.execute(query)).all()
    total = (
        await session.execute(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(WebhookDelivery.endpoint_id == endpoint_id)
        )
    ).scalar_one()
    following = offset + len(rows)
    return WebhookDeliveryPage(
        items=[
            WebhookDeliveryRead(
                webhook_id=row[0],
                type=row[1],
                state=row[2],
                attempts=row[3],
                last_status=row[4],
                next_attempt_at=row[5],
                occurred_at=row[6],
            )
            for row in rows
        ],
        total=int(total),
        limit=limit,
        offset=offset,
        next_offset=following if following < total else None,
    )
