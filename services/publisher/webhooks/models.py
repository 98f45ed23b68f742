"""The tables of outbound webhooks: endpoints, events, and one delivery per endpoint and event."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.publisher.models import Base
from shared.db import UTCDateTime, utcnow

ACTIVE = "active"
DISABLED = "disabled"
PENDING = "pending"
DELIVERED = "delivered"
FAILED = "failed"
# What an endpoint is: a receiver an admin registered, a section's inbox (on a hub), or the hub's
# counts (on a section). The last two are federation's (contract §9): tried until they answer.
WEBHOOK = "webhook"
SECTION_INBOX = "section"
HUB_COUNTS = "hub"


class WebhookEndpoint(Base):
    """A receiver a campaign team registered (a CRM, a warehouse, Zapier)."""

    __tablename__ = "publisher_webhook_endpoints"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    kind: Mapped[str] = mapped_column(String(16), default=WEBHOOK, server_default=WEBHOOK)
    # Federation's calls carry it as ``uanet-section`` (the section's own code).
    section_code: Mapped[str | None] = mapped_column(String(16), nullable=True)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(500), default="")
    events: Mapped[list[str]] = mapped_column(JSON)
    # The signing secret sealed with UANET_SECRET_KEY (shared.sealing): shown once, never again.
    secret_sealed: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    disabled_reason: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_success_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The first failure since the last success: five days of it disable the endpoint.
    failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    failures_in_a_row: Mapped[int] = mapped_column(Integer, default=0)


class WebhookEvent(Base):
    """One event as it is sent: its ``webhook-id`` and the exact body, so every try and every
    replay sends the same bytes under the same id."""

    __tablename__ = "publisher_webhook_events"
    __table_args__ = (
        Index("ix_publisher_webhook_events_subscriber", "subscriber_id"),
        Index("ix_publisher_webhook_events_occurred", "occurred_at"),
        Index("ix_publisher_webhook_events_topic", "topic"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    type: Mapped[str] = mapped_column(String(40))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # None once a personal event was delivered everywhere (or its person erased).
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The person a personal event is about, so erasure finds what still waits for them.
    subscriber_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    personal: Mapped[bool] = mapped_column(Boolean, default=False)
    # Events of one topic replace each other while waiting (a section's counts of one action:
    # only the newest snapshot matters).
    topic: Mapped[str | None] = mapped_column(String(80), nullable=True)


class WebhookDelivery(Base):
    """One event to one endpoint: claimed before a try (``lease_until``), then recorded."""

    __tablename__ = "publisher_webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_publisher_webhook_deliveries"),
        # What is due for one endpoint, oldest first: the workers' only query.
        Index("ix_publisher_webhook_deliveries_due", "endpoint_id", "state", "next_attempt_at"),
        Index("ix_publisher_webhook_deliveries_event", "event_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    endpoint_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("publisher_webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[str] = mapped_column(
        ForeignKey("publisher_webhook_events.id", ondelete="CASCADE")
    )
    state: Mapped[str] = mapped_column(String(16), default=PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Why the last try failed without a status ("timeout", "connection refused").
    last_error: Mapped[str | None] = mapped_column(String(200), nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
