"""Shared pieces of the dispatcher tests: sample events, fake senders, a migrated database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rendering.renderer import Renderer
from services.dispatcher.handlers import Dispatcher
from services.dispatcher.schedule import system_clock
from services.dispatcher.senders import SendResult
from services.dispatcher.throttle import RateLimiter
from shared.db import make_engine, make_sessionmaker
from shared.events import (
    ActionContent,
    ActionPublished,
    ActionUpdated,
    Audience,
    DeliveryBatch,
    Recipient,
    Target,
    UpdateContent,
)
from shared.messaging import Delivery as AmqpDelivery
from shared.migrations import upgrade

MAIL_FROM = "Urgent Action Network <alerts@example.org>"
AMQP_DELIVERY = AmqpDelivery("dispatcher.batches", "dispatch.batch", 0)


def action_published(**overrides: object) -> ActionPublished:
    values: dict[str, object] = {
        "action_id": uuid.uuid4(),
        "reference": "UA 12/26",
        "title": "Journalist held incommunicado",
        "country": "IR",
        "themes": ["torture"],
        "urgency": "urgent",
        "channels": ["email", "sms"],
        "deadline": date(2026, 12, 20),
        "default_language": "en",
        "audience": Audience(),
        "targets": [Target(name="Head of the Judiciary", title="Head of the Judiciary")],
        "content": {
            "en": ActionContent(
                subject="Urgent Action: journalist at risk of torture",
                summary="Short case summary.",
                body="Full case text with **Markdown**.",
                sms="Journalist at risk of torture in Iran. Act now:",
            ),
            "fr": ActionContent(
                subject="Action urgente : journaliste en danger",
                summary="Résumé.",
                body="Texte complet.",
                sms="Journaliste en danger en Iran. Agissez :",
            ),
        },
        "published_at": datetime.now(UTC),
    }
    values.update(overrides)
    return ActionPublished(**values)


def action_updated(action: ActionPublished) -> ActionUpdated:
    """A follow-up of ``action`` with English text ("New information")."""
    return ActionUpdated(
        action_id=action.action_id,
        update_id=uuid.uuid4(),
        reference=action.reference,
        kind="further_information",
        content={"en": UpdateContent(subject="New information", body="Details")},
        default_language="en",
    )


def outcome(row_id: int, status: str, now: datetime, **columns: Any) -> dict[str, Any]:
    """One row's outcome as ``ledger.commit_outcomes`` takes it (``columns`` override)."""
    return {
        "row_id": row_id,
        "status": status,
        "claim_token": None,
        "updated_at": now,
        "error_code": None,
        "segments": None,
        "provider_message_id": None,
        "sent_at": now if status == "sent" else None,
        "not_before": None,
        "held": None,
    } | columns


def recipient(
    channel: str = "email",
    *,
    address: str | None = None,
    language: str = "en",
    name: str = "Ana",
    timezone: str | None = None,
    frequency: str = "immediate",
) -> Recipient:
    sid = uuid.uuid4()
    if address is None:
        address = f"{sid.hex[:8]}@example.net" if channel == "email" else "+447700900123"
    return Recipient(
        subscriber_id=sid,
        channel=channel,
        address=address,
        language=language,
        name=name,
        act_url=f"http://localhost:8002/act/{sid.hex[:10]}",
        unsubscribe_url=f"http://localhost:8002/unsubscribe/{sid.hex[:12]}",
        preferences_url=f"http://localhost:8002/preferences/{sid.hex[:12]}",
        timezone=timezone,
        frequency=frequency,
    )


def batch(
    action: ActionPublished, recipients: list[Recipient], kind: str = "alert"
) -> DeliveryBatch:
    return DeliveryBatch(action_id=action.action_id, message_kind=kind, recipients=recipients)


@dataclass
class FakeEmailSender:
    """Records what it was asked to send; ``script`` answers an address with queued results."""

    sent: list[tuple[str, str, bytes]] = field(default_factory=list)
    script: dict[str, list[SendResult]] = field(default_factory=dict)

    async def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
        queued = self.script.get(recipient)
        if queued:
            result = queued.pop(0)
            if result.outcome != "sent":
                return result
        self.sent.append((sender, recipient, message))
        return SendResult.sent()

    async def close(self) -> None:
        return None

    def to(self, address: str) -> list[bytes]:
        return [m for _, r, m in self.sent if r == address]


@dataclass
class FakeSmsSender:
    sent: list[tuple[str, str]] = field(default_factory=list)
    script: dict[str, list[SendResult]] = field(default_factory=dict)

    async def send(self, to: str, body: str) -> SendResult:
        queued = self.script.get(to)
        if queued:
            result = queued.pop(0)
            if result.outcome != "sent":
                return result
        self.sent.append((to, body))
        return SendResult.sent(f"SM{uuid.uuid4().hex}")

    async def close(self) -> None:
        return None


async def migrated(url: str) -> async_sessionmaker[AsyncSession]:
    # upgrade() calls asyncio.run, so it cannot run on this loop.
    await asyncio.to_thread(upgrade, "dispatcher", url)
    return make_sessionmaker(make_engine(url))


@pytest.fixture
async def sessionmaker(
    database_url: Callable[[str], str],
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    maker = await migrated(database_url("dispatcher"))
    yield maker
    bind = maker.kw["bind"]
    await bind.dispose()


@dataclass
class ManualClock:
    """The dispatcher's clock in tests: it says what the test set, and moves only when told."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment.astimezone(UTC)


def make_dispatcher(
    sessionmaker: async_sessionmaker[AsyncSession],
    email: object | None = None,
    sms: object | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Dispatcher:
    return Dispatcher(
        sessionmaker=sessionmaker,
        email=email or FakeEmailSender(),  # type: ignore[arg-type]
        sms=sms or FakeSmsSender(),  # type: ignore[arg-type]
        renderer=Renderer(mail_from=MAIL_FROM),
        email_rate=RateLimiter(Decimal(0)),
        sms_rate=RateLimiter(Decimal(0)),
        clock=clock or system_clock,
    )
