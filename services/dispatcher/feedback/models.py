"""The feedback ledger: every report on a message of ours, once (unique on its key); counts of
the reports that matched none (anyone can mail the bounce address: a row each would grow without
end); and the Mailgun tokens already seen (a token is good for one event only)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.dispatcher.models import Base
from shared.db import UTCDateTime, utcnow


class FeedbackEvent(Base):
    """One report on one message (no address: the ledger row it concerns, and what it said)."""

    __tablename__ = "dispatch_feedback_events"
    __table_args__ = (Index("ix_dispatch_feedback_row", "ledger", "row_key", "kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The provider's id of the event, or a digest of the report mail: the same event twice
    # (a webhook retried, a bounce handed on again) is applied once.
    event_key: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(String(16))  # smtp | sendgrid | mailgun | ses
    kind: Mapped[str] = mapped_column(
        String(16)
    )  # hard_bounce | soft_bounce | complaint | delivered
    # The message it concerns (MessageRef), or None when it matched none of ours.
    ledger: Mapped[str | None] = mapped_column(String(16), nullable=True)
    row_key: Mapped[str | None] = mapped_column(String(40), nullable=True)
    status_code: Mapped[str | None] = mapped_column(String(16), nullable=True)  # e.g. 5.1.1
    # Whether it changed anything (a count, a suppression): a repeat by another route does not.
    applied: Mapped[bool] = mapped_column(default=False)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookToken(Base):
    """A Mailgun webhook token already used (its SHA-256), and the event it came with."""

    __tablename__ = "dispatch_webhook_tokens"

    token: Mapped[str] = mapped_column(String(128), primary_key=True)
    event_key: Mapped[str] = mapped_column(String(200))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class UnmatchedFeedback(Base):
    """How many reports matched no message of ours, by route and kind (counts, not rows)."""

    __tablename__ = "dispatch_feedback_unmatched"

    source: Mapped[str] = mapped_column(String(16), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    last_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
