"""The dispatcher's own tables: what it knows of each urgent action, and the delivery ledger.

The ledger keeps subscriber ids and channels, never an address or a number: addresses travel in
each ``DeliveryBatch`` and are forgotten once the message is out. The one exception is a message
held for later (a standard SMS in the subscriber's night, an alert kept for a daily digest): its
row keeps the recipient in ``held`` until it is sent, cancelled or the subscriber is erased.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    Float,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import OutboxMixin, ProcessedMessageMixin, UTCDateTime, utcnow

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit id for big fan-outs.
LedgerId = BigInteger().with_variant(Integer(), "sqlite")

# Room left on each ledger page for the new version of its rows when their outcome is written.
LEDGER_FILLFACTOR = 80

ACTION_OPEN = "open"
ACTION_CLOSED = "closed"

# Ledger states. ``sending``: claimed, the send may be under way (or the process died during it);
# ``retry``: a temporary failure, the batch comes back; ``scheduled``: a held SMS the scheduler
# sends at ``not_before``; ``digest``: an alert waiting for the subscriber's daily digest, due at
# ``not_before``; the rest are final.
SENDING = "sending"
RETRY = "retry"
SCHEDULED = "scheduled"
DIGEST = "digest"
SENT = "sent"
DELIVERED = "delivered"
FAILED = "failed"
CANCELLED = "cancelled"
PENDING_STATES = (SENDING, RETRY, SCHEDULED, DIGEST)
# Waiting for the scheduler (no batch will come back for them): cancelled by a close or an erasure.
HELD_STATES = (SCHEDULED, DIGEST)
FINAL_STATES = (SENT, DELIVERED, FAILED, CANCELLED)


class Base(DeclarativeBase):
    pass


class Outbox(OutboxMixin, Base):
    __service__ = "dispatcher"


class ProcessedMessage(ProcessedMessageMixin, Base):
    __service__ = "dispatcher"


class DispatchAction(Base):
    """An urgent action as ``action.published`` described it: enough to render every alert."""

    __tablename__ = "dispatch_actions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    reference: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(500))
    urgency: Mapped[str] = mapped_column(String(16))
    channels: Mapped[list[str]] = mapped_column(JSON)
    default_language: Mapped[str] = mapped_column(String(16))
    # {language: ActionContent as a dict}
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    deadline: Mapped[date | None] = mapped_column(Date, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default=ACTION_OPEN)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class ActionMessage(Base):
    """A follow-up (``update:<id>``) or the closing outcome (``closed``) of an action."""

    __tablename__ = "dispatch_action_messages"

    action_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    message_kind: Mapped[str] = mapped_column(String(80), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # further_information | outcome
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    default_language: Mapped[str] = mapped_column(String(16))
    # {language: UpdateContent as a dict}; empty when a close came without text
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """The ledger: one row per (action, message kind, subscriber, channel), claimed first."""

    __tablename__ = "dispatch_deliveries"
    __table_args__ = (
        # Subscriber first: the same index serves a batch's claims (its subscribers, for one
        # action and kind) and an erasure (one subscriber), so a new row goes into one index
        # keyed by a random id instead of two.
        UniqueConstraint(
            "subscriber_id", "action_id", "message_kind", "channel", name="uq_dispatch_delivery"
        ),
        # Partial, like the one below: only the rows that have one. Every other ledger row
        # (nearly all of them: emails sent at once) is written to no index but these two.
        Index(
            "ix_dispatch_deliveries_provider_message_id",
            "provider_message_id",
            sqlite_where=text("provider_message_id IS NOT NULL"),
            postgresql_where=text("provider_message_id IS NOT NULL"),
        ),
        Index(
            "ix_dispatch_deliveries_digest_id",
            "digest_id",
            sqlite_where=text("digest_id IS NOT NULL"),
            postgresql_where=text("digest_id IS NOT NULL"),
        ),
        # The rows that wait (held, or left ``retry``) by due time: the scheduler's pages, and
        # what a close or a lease check looks for. Partial and on no column a send changes: the
        # outcome of a row sent at once touches no index (on PostgreSQL a HOT update, written
        # in place on its page, which the fillfactor leaves room for).
        Index(
            "ix_dispatch_deliveries_waiting",
            "not_before",
            sqlite_where=text("not_before IS NOT NULL"),
            postgresql_where=text("not_before IS NOT NULL"),
        ),
        {"postgresql_with": {"fillfactor": LEDGER_FILLFACTOR}},
    )

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    action_id: Mapped[str] = mapped_column(String(36))
    message_kind: Mapped[str] = mapped_column(String(80))
    subscriber_id: Mapped[str] = mapped_column(String(36))
    channel: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    segments: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Which handling of a batch holds a ``sending`` row; with ``updated_at`` it is a lease, so
    # two dispatchers handling a redelivered batch at once never both send.
    claim_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    receipt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # A held row (``scheduled`` or ``digest``): when it is due, and the recipient to send it to.
    # A ``retry`` row: since when it waits for its batch. NULL once the row is final.
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # SQL NULL, not JSON null, once cleared: "IS NOT NULL" finds the rows still holding one.
    held: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    # The digest that carried (or is carrying) this alert.
    digest_id: Mapped[int | None] = mapped_column(LedgerId, nullable=True)


class DigestDelivery(Base):
    """One daily digest email: unique per subscriber and local date, so it goes once a day
    whatever the number of dispatchers. Claimed like a ledger row (``claim_token``, lease)."""

    __tablename__ = "dispatch_digests"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "local_date", name="uq_dispatch_digest_day"),
    )

    id: Mapped[int] = mapped_column(LedgerId, primary_key=True, autoincrement=True)
    subscriber_id: Mapped[str] = mapped_column(String(36))
    local_date: Mapped[date] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(16))
    claim_token: Mapped[str | None] = mapped_column(String(36), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    items: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TransactionalDelivery(Base):
    """The ledger of transactional messages (confirmations, SMS replies): one row per message id."""

    __tablename__ = "dispatch_transactional_deliveries"

    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    template: Mapped[str] = mapped_column(String(40))
    channel: Mapped[str] = mapped_column(String(8))
    status: Mapped[str] = mapped_column(String(16))
    provider_message_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    receipt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class SendSchedule(Base):
    """The deployment's send rate per channel (deployment_rate.py): the moment, in the
    database's clock (Unix seconds), from which the next units may go; every dispatcher books
    its grants here, so all of them together hold UANET_EMAIL_RATE and UANET_SMS_RATE."""

    __tablename__ = "dispatch_send_schedule"

    channel: Mapped[str] = mapped_column(String(16), primary_key=True)
    free_at: Mapped[float] = mapped_column(Float, nullable=False)


class ConfirmationSmsHour(Base):
    """Confirmation SMS sent in one clock hour (UTC), all dispatchers together: the budget of
    ``UANET_CONFIRMATION_SMS_PER_HOUR`` is taken from this row (``sms_lane``)."""

    __tablename__ = "confirmation_sms_hours"

    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    sent: Mapped[int] = mapped_column(Integer)


class SmsAlertMark(Base):
    """Until when (the database's clock, Unix seconds) some dispatcher has alert SMS going:
    confirmations in every dispatcher wait until then (``sms_lane.SharedAlertMark``)."""

    __tablename__ = "sms_alert_marks"

    name: Mapped[str] = mapped_column(String(16), primary_key=True)
    until: Mapped[float] = mapped_column(Float, nullable=False)
