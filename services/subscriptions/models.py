"""What the subscriptions service stores: subscribers and their consent, suppressed addresses,
the urgent actions it has heard of, who received each one, and the reports that came back."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import OutboxMixin, ProcessedMessageMixin, UTCDateTime, utcnow

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL gets a 64-bit key.
BigId = BigInteger().with_variant(Integer(), "sqlite")

ChannelStatus = Literal["pending", "confirmed", "unsubscribed"]
ConsentEvent = Literal["given", "confirmed", "withdrawn"]
# "feedback": a report about our mail (a spam complaint through a feedback loop or an ESP).
ConsentSource = Literal["api", "page", "sms", "import", "feedback"]
SuppressionReason = Literal["opted_out", "hard_bounce", "unsubscribed", "complaint"]

PENDING: ChannelStatus = "pending"
CONFIRMED: ChannelStatus = "confirmed"
UNSUBSCRIBED: ChannelStatus = "unsubscribed"


class Base(DeclarativeBase):
    pass


class Outbox(OutboxMixin, Base):
    __service__ = "subscriptions"


class ProcessedMessage(ProcessedMessageMixin, Base):
    __service__ = "subscriptions"


class Subscriber(Base):
    """One person. A channel's status is None when they gave no address for it or did not ask
    for it; only a ``confirmed`` channel ever receives alerts."""

    __tablename__ = "subscribers"
    # OSDI's filter on modified_date (a CRM's nightly sync) reads this index.
    __table_args__ = (Index("ix_subscribers_updated_at", "updated_at"),)

    # An integer key so audience resolution can page through subscribers in order.
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    public_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True, default=uuid.uuid4)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    phone: Mapped[str | None] = mapped_column(String(20), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    country: Mapped[str] = mapped_column(String(2))
    language: Mapped[str] = mapped_column(String(2))
    timezone: Mapped[str] = mapped_column(String(64))
    themes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    frequency: Mapped[str] = mapped_column(String(20), default="immediate")
    email_status: Mapped[str | None] = mapped_column(String(12))
    sms_status: Mapped[str | None] = mapped_column(String(12))
    # Confirmation resends for an existing address are limited per hour (no mail bombing).
    confirmations_window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirmations_in_window: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    # Set when the person asked to be erased: the row stays, without personal data, so the
    # actions they received and reported still count.
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    def channel_status(self, channel: str) -> str | None:
        return self.email_status if channel == "email" else self.sms_status

    def set_channel_status(self, channel: str, status: str | None) -> None:
        if channel == "email":
            self.email_status = status
        else:
            self.sms_status = status

    def address(self, channel: str) -> str | None:
        return self.email if channel == "email" else self.phone


class ConfirmationAllowance(Base):
    """Confirmations sent to one mailbox or number in its current hour, however the address was
    written (``confirmations.mailbox``). ``key`` is a keyed digest, not the address: the row
    counts without keeping who. In the database, so every process shares the count."""

    __tablename__ = "confirmation_allowances"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    sent: Mapped[int] = mapped_column(Integer)


class Consent(Base):
    """The consent record: every time consent was given, confirmed or withdrawn, and how."""

    __tablename__ = "consents"
    __table_args__ = (Index("ix_consents_subscriber", "subscriber_id", "at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    subscriber_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("subscribers.id", ondelete="CASCADE")
    )
    channel: Mapped[str] = mapped_column(String(8))
    event: Mapped[str] = mapped_column(String(12))
    source: Mapped[str] = mapped_column(String(8))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    client_address: Mapped[str | None] = mapped_column(String(64))
    # Why, when it was not the person's own choice on a page or by SMS (``complaint``).
    reason: Mapped[str | None] = mapped_column(String(32))


class Suppression(Base):
    """An address or number that must never be contacted (until its owner opts back in)."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    channel: Mapped[str] = mapped_column(String(8))
    address: Mapped[str] = mapped_column(String(320), unique=True)
    reason: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiToken(Base):
    """An API token the publisher issued (only its SHA-256), for the admin endpoints here.

    A revocation may arrive before its issue (two messages, no order between queues' retries): the
    row is then created revoked, without a hash, and the late issue cannot bring it back.
    """

    __tablename__ = "api_tokens"

    token_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    role: Mapped[str] = mapped_column(String(12), default="")
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Reported to the publisher (ApiTokenUsed) at most once a minute.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class KnownAction(Base):
    """What this service knows of an urgent action, from the publisher's events."""

    __tablename__ = "known_actions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    reference: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(500))
    status: Mapped[str] = mapped_column(String(12), default="published")
    urgency: Mapped[str] = mapped_column(String(12))
    channels: Mapped[list[Any]] = mapped_column(JSON)
    default_language: Mapped[str] = mapped_column(String(2))
    audience: Mapped[dict[str, Any]] = mapped_column(JSON)
    targets: Mapped[list[Any]] = mapped_column(JSON)
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    deadline: Mapped[date | None] = mapped_column(Date)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime)
    outcome: Mapped[str | None] = mapped_column(String(24))
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ActionUpdate(Base):
    """A follow-up or closing text of an action (shown on the action page too)."""

    __tablename__ = "action_updates"
    __table_args__ = (Index("ix_action_updates_action", "action_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    action_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("known_actions.id", ondelete="CASCADE")
    )
    message_kind: Mapped[str] = mapped_column(String(60))
    kind: Mapped[str] = mapped_column(String(24))
    outcome: Mapped[str | None] = mapped_column(String(24))
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    default_language: Mapped[str] = mapped_column(String(2))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ActionRecipient(Base):
    """One subscriber who was sent one action; its id is the ``recipient_id`` of act links."""

    __tablename__ = "action_recipients"
    __table_args__ = (
        UniqueConstraint("action_id", "subscriber_id", name="uq_action_recipients_action"),
        # The latest action sent to a number, for SMS replies like "DONE 3".
        Index("ix_action_recipients_subscriber", "subscriber_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    action_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("known_actions.id", ondelete="CASCADE")
    )
    subscriber_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("subscribers.id", ondelete="CASCADE")
    )
    via_email: Mapped[bool] = mapped_column(Boolean, default=False)
    via_sms: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    @property
    def channels(self) -> list[str]:
        return [c for c, used in (("email", self.via_email), ("sms", self.via_sms)) if used]


class AudienceProgress(Base):
    """How far the fan-out of one message of one action got, so it resumes after a crash."""

    __tablename__ = "audience_progress"

    action_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    message_kind: Mapped[str] = mapped_column(String(60), primary_key=True)
    last_subscriber_id: Mapped[int] = mapped_column(BigId, default=0)
    pages: Mapped[int] = mapped_column(Integer, default=0)
    finished: Mapped[bool] = mapped_column(Boolean, default=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class Response(Base):
    """A subscriber's report of what they did; ``id`` is the report id, so a retry counts once."""

    __tablename__ = "responses"
    __table_args__ = (Index("ix_responses_action", "action_id", "created_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    action_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("known_actions.id", ondelete="CASCADE")
    )
    subscriber_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("subscribers.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(12))
    count: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Letter(Base):
    """A letter a subscriber asked us to email to an action's targets (mail-to-target).

    ``id`` is the letter id (made when the page was rendered, so a resubmitted form sends once).
    The text, name and email travel only in the dispatcher's command: not kept here.
    """

    __tablename__ = "letters"
    __table_args__ = (Index("ix_letters_action_subscriber", "action_id", "subscriber_id"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    action_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("known_actions.id", ondelete="CASCADE")
    )
    subscriber_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("subscribers.id", ondelete="CASCADE")
    )
    language: Mapped[str] = mapped_column(String(2))
    # How many targets with an email address it went to (what the tally counts).
    targets: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class PendingLetter(Base):
    """A letter whose reply address is not the subscriber's confirmed email: kept until that
    address follows the link emailed to it (then sent, and this row deleted), at most 7 days."""

    __tablename__ = "pending_letters"

    letter_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("letters.id", ondelete="CASCADE"), primary_key=True
    )
    recipient_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("action_recipients.id", ondelete="CASCADE")
    )
    subscriber_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("subscribers.id", ondelete="CASCADE"), index=True
    )
    sender_name: Mapped[str] = mapped_column(String(200))
    sender_email: Mapped[str] = mapped_column(String(320))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
