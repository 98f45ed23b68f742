"""What the tools a campaign already runs (a CRM) hear of a subscriber: a channel confirmed,
preferences changed, a channel stopped. Written to the outbox in the caller's transaction, so
the event exists exactly when the change does; the publisher turns each into a signed webhook
(``subscriber.confirmed``, ``subscriber.updated``, ``subscriber.unsubscribed``).

Imports (``uanet subscribers import --confirmed``) send none: they move a list that a CRM
already has, and OSDI's ``people`` serves a full sync.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions.models import CONFIRMED, Consent, Outbox, Subscriber
from shared.db import outbox_row
from shared.events import (
    Channel,
    SubscriberChanged,
    SubscriberUnsubscribed,
    UnsubscribeReason,
)

CHANNELS: tuple[Channel, ...] = ("email", "sms")


async def last_confirmed_at(session: AsyncSession, subscriber: Subscriber) -> datetime | None:
    query = (
        select(Consent.at)
        .where(Consent.subscriber_id == subscriber.id, Consent.event == "confirmed")
        .order_by(Consent.at.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


def profile_changed(
    session: AsyncSession,
    subscriber: Subscriber,
    change: Literal["confirmed", "updated"],
    *,
    confirmed_at: datetime | None,
) -> None:
    """``subscriber.confirmed`` right after a channel's confirmation, ``subscriber.updated``
    after the preference centre (``confirmed_at``: see ``last_confirmed_at``)."""
    session.add(
        outbox_row(
            Outbox,
            SubscriberChanged(
                change=change,
                subscriber_id=subscriber.public_id,
                email=subscriber.email,
                phone=subscriber.phone,
                name=subscriber.name,
                country=subscriber.country,
                language=subscriber.language,
                timezone=subscriber.timezone,
                channels=[c for c in CHANNELS if subscriber.channel_status(c) == CONFIRMED],
                themes=[str(t) for t in subscriber.themes],
                frequency="daily_digest" if subscriber.frequency == "daily_digest" else "immediate",
                confirmed_at=confirmed_at,
            ),
        )
    )


def channel_stopped(
    session: AsyncSession, subscriber: Subscriber, channel: Channel, reason: UnsubscribeReason
) -> None:
    session.add(
        outbox_row(
            Outbox,
            SubscriberUnsubscribed(
                subscriber_id=subscriber.public_id, channel=channel, reason=reason
            ),
        )
    )
