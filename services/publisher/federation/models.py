"""Federation's tables: on a hub, its sections and the counts each reports per action."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from services.publisher.models import Base
from shared.db import UTCDateTime, utcnow


class Section(Base):
    """A national section registered on the hub (``uanet sections add``)."""

    __tablename__ = "publisher_sections"

    code: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    url: Mapped[str] = mapped_column(String(2000))
    # The section's key, sealed with UANET_SECRET_KEY: it signs both ways.
    key_sealed: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set by `uanet sections remove`: nothing more goes to it or is taken from it.
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_heard_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The inbox endpoint (a webhook endpoint of kind "section") that carries actions to it.
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, nullable=True)


class SectionCounts(Base):
    """A hub action sent to a section (status ``sent`` until it reports), then the newest
    counts it reported: numbers only."""

    __tablename__ = "publisher_section_counts"

    section_code: Mapped[str] = mapped_column(String(16), primary_key=True)
    action_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    reference: Mapped[str | None] = mapped_column(String(40), nullable=True)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The section's snapshot version (microseconds): an older one never replaces a newer.
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # When the hub sent it the action (none: reported before the hub kept that).
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # When the section published it to its members (from its report).
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
