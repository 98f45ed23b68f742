"""The publisher's tables: urgent actions, their follow-ups, API tokens and the tally of counts."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from shared.db import OutboxMixin, ProcessedMessageMixin, UTCDateTime, utcnow

CHANNELS = ("email", "sms")
RESPONSE_KINDS = ("letter", "email", "call", "sms_reply", "other")


class Base(DeclarativeBase):
    pass


class Outbox(OutboxMixin, Base):
    __service__ = "publisher"


class ProcessedMessage(ProcessedMessageMixin, Base):
    __service__ = "publisher"


class ApiToken(Base):
    """A bearer token for the API. Only its SHA-256 is kept: a leaked database leaks no token."""

    __tablename__ = "publisher_api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # None: never expires. Past it the token is refused, as if revoked.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Refreshed at most once a minute (a write per request would cost more than it tells).
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEntry(Base):
    """One change staff made, who made it and when. Rows are only ever added: the migration
    also makes the database refuse UPDATE and DELETE on this table."""

    __tablename__ = "publisher_audit_log"
    __table_args__ = (
        Index("ix_publisher_audit_log_at", "at"),
        Index("ix_publisher_audit_log_action", "action_id", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # "token" (its name), "account" (its email), "cli" (the operator's login on the host).
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(320))
    # What was done: "action.created", "token.revoked", "subscriber.erased", ...
    event: Mapped[str] = mapped_column(String(40))
    action_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    # What it was done to, in words staff read ("UA 12/26", "token ci (coordinator)").
    subject: Mapped[str] = mapped_column(String(500))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class UrgentAction(Base):
    __tablename__ = "urgent_actions"
    __table_args__ = (
        # The reference "UA 12/26" is the 12th action of 2026.
        UniqueConstraint("year", "number", name="uq_urgent_actions_year_number"),
        # A section takes each hub action once, however often the hub's call comes.
        UniqueConstraint("origin_action_id", name="uq_urgent_actions_origin_action_id"),
        Index("ix_urgent_actions_created_at", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    year: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="draft")
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    title: Mapped[str] = mapped_column(String(300))
    country: Mapped[str] = mapped_column(String(2))
    themes: Mapped[list[str]] = mapped_column(JSON, default=list)
    urgency: Mapped[str] = mapped_column(String(16))
    channels: Mapped[list[str]] = mapped_column(JSON)
    deadline: Mapped[date | None] = mapped_column(Date, nullable=True)
    default_language: Mapped[str] = mapped_column(String(2))
    audience: Mapped[dict[str, Any]] = mapped_column(JSON)
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    content: Mapped[dict[str, dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Federation (contract §9). On a hub: the sections it goes to (None: all). On a section:
    # where it came from ({"hub", "action_id", "reference"}), and the hub's follow-ups waiting
    # for staff.
    sections: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    origin: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    origin_action_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    pending_updates: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)

    @property
    def reference(self) -> str:
        return f"UA {self.number}/{self.year % 100:02d}"


class ActionUpdate(Base):
    """A follow-up (further information, an outcome) or the closing message of an action."""

    __tablename__ = "action_updates"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("urgent_actions.id", ondelete="CASCADE"), index=True
    )
    # "further_information", "outcome", or "closed" for the message sent on close.
    kind: Mapped[str] = mapped_column(String(32))
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    content: Mapped[dict[str, dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ActionTally(Base):
    """Counts of one action, one row made with the action; handlers only ever add to it."""

    __tablename__ = "action_tallies"

    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("urgent_actions.id", ondelete="CASCADE"), primary_key=True
    )
    recipients_email: Mapped[int] = mapped_column(Integer, default=0)
    recipients_sms: Mapped[int] = mapped_column(Integer, default=0)
    email_sent: Mapped[int] = mapped_column(Integer, default=0)
    email_delivered: Mapped[int] = mapped_column(Integer, default=0)
    email_failed: Mapped[int] = mapped_column(Integer, default=0)
    sms_sent: Mapped[int] = mapped_column(Integer, default=0)
    sms_delivered: Mapped[int] = mapped_column(Integer, default=0)
    sms_failed: Mapped[int] = mapped_column(Integer, default=0)
    # Reported after the relay accepted the alert (services/publisher/feedback.py): a hard
    # bounce also moved its alert from email_sent to email_failed.
    email_hard_bounces: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    email_soft_bounces: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    email_complaints: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    people: Mapped[int] = mapped_column(Integer, default=0)
    actions: Mapped[int] = mapped_column(Integer, default=0)
    kind_letter: Mapped[int] = mapped_column(Integer, default=0)
    kind_email: Mapped[int] = mapped_column(Integer, default=0)
    kind_call: Mapped[int] = mapped_column(Integer, default=0)
    kind_sms_reply: Mapped[int] = mapped_column(Integer, default=0)
    kind_other: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CountryTally(Base):
    """Counts of one action among subscribers living in one country."""

    __tablename__ = "action_country_tallies"

    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("urgent_actions.id", ondelete="CASCADE"), primary_key=True
    )
    country: Mapped[str] = mapped_column(String(2), primary_key=True)
    recipients: Mapped[int] = mapped_column(Integer, default=0)
    people: Mapped[int] = mapped_column(Integer, default=0)
    actions: Mapped[int] = mapped_column(Integer, default=0)


class Responder(Base):
    """Who reported acting on an action: ``people`` counts distinct subscribers, not reports."""

    __tablename__ = "action_responders"

    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("urgent_actions.id", ondelete="CASCADE"), primary_key=True
    )
    subscriber_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    first_reported_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StaffUser(Base):
    """A person who signs in to the console. Only an argon2id hash of the password is kept."""

    __tablename__ = "publisher_staff_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lowercased
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class StaffSession(Base):
    """A signed-in console session, kept on the server so signing out (or an account being
    disabled) ends it at once. The cookie holds the key; only its SHA-256 is kept here."""

    __tablename__ = "publisher_staff_sessions"

    key_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("publisher_staff_users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class ActivityBucket(Base):
    """What happened to one action in one minute: the time series behind the dashboard's chart.

    Written by the tally handlers in the same transaction as the counters they add to.
    """

    __tablename__ = "action_activity"

    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("urgent_actions.id", ondelete="CASCADE"), primary_key=True
    )
    minute: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    sent: Mapped[int] = mapped_column(Integer, default=0)
    delivered: Mapped[int] = mapped_column(Integer, default=0)
    actions: Mapped[int] = mapped_column(Integer, default=0)


class TargetBounce(Base):
    """A target address that refused a subscriber's letter for good: shown to staff to fix."""

    __tablename__ = "action_target_bounces"

    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("urgent_actions.id", ondelete="CASCADE"), primary_key=True
    )
    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    target_name: Mapped[str] = mapped_column(String(300))
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    letters: Mapped[int] = mapped_column(Integer, default=0)
    first_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when staff replace the address (or it is no longer a target): the warning becomes a
    # note. fixed_to is the address letters go to instead (None: the target has no email now).
    fixed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    fixed_to: Mapped[str | None] = mapped_column(String(320), nullable=True)


class Outreach(Base):
    """A letter a subscriber wrote to an action's officials, as OSDI lists it (an outreach): whom
    it went to and when; who wrote it by subscriber id only, and not once they are erased.

    ``seq`` orders an action's outreaches as they arrived, so paging through them is stable."""

    __tablename__ = "osdi_outreaches"
    __table_args__ = (
        Index("ix_osdi_outreaches_action", "action_id", "seq"),
        Index("ix_osdi_outreaches_subscriber", "subscriber_id"),
    )

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    letter_id: Mapped[uuid.UUID] = mapped_column(Uuid, unique=True)
    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("urgent_actions.id", ondelete="CASCADE")
    )
    subscriber_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)
    language: Mapped[str] = mapped_column(String(8))
    # The officials it went to: name and title only.
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class OutreachTotal(Base):
    """How many outreaches an action has, and when the last one arrived (the campaign's
    ``total_outreaches`` and what moves its ``modified_date``), kept as they arrive."""

    __tablename__ = "osdi_outreach_totals"

    action_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("urgent_actions.id", ondelete="CASCADE"), primary_key=True
    )
    outreaches: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ErasedSubscriber(Base):
    """A subscriber erased in subscriptions, by id only (as the audit log names them): a letter
    of theirs that arrives after the erasure (a retried message) is kept without them, and a
    change of theirs becomes no webhook (``services/publisher/erasures.py``)."""

    __tablename__ = "osdi_erased_subscribers"

    subscriber_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    erased_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SignInFailure(Base):
    """A wrong staff sign-in, kept for the throttle's window when several publisher processes
    share the database (sign_in_store.py)."""

    __tablename__ = "sign_in_failures"
    __table_args__ = (
        Index("ix_sign_in_failures_email_at", "email_key", "at"),
        Index("ix_sign_in_failures_address_at", "address", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    email_key: Mapped[str] = mapped_column(String(320))
    address: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)


class SignInPair(Base):
    """One email from one address: where its failures count from, its lock-out, its turn."""

    __tablename__ = "sign_in_pairs"

    email_key: Mapped[str] = mapped_column(String(320), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    counted_from: Mapped[float] = mapped_column(Float, default=0.0)
    locked_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    turn_at: Mapped[float | None] = mapped_column(Float, nullable=True)
