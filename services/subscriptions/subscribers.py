"""Subscribers, their consent and their preferences.

Every function takes the caller's session and does not commit; the route or handler that called it
owns the transaction (and wakes the outbox relay after the commit).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions import confirmations, store
from services.subscriptions.links import ChannelRef, Links
from services.subscriptions.models import (
    CONFIRMED,
    PENDING,
    UNSUBSCRIBED,
    Consent,
    ConsentSource,
    Outbox,
    Subscriber,
    SuppressionReason,
)
from services.subscriptions.schemas import PreferencesUpdate, SubscriberCreate
from services.subscriptions.subscriber_events import (
    channel_stopped,
    last_confirmed_at,
    profile_changed,
)
from shared.db import outbox_row, utcnow
from shared.events import Channel, TransactionalMessage, UnsubscribeReason

log = logging.getLogger(__name__)

CHANNELS: tuple[Channel, ...] = ("email", "sms")


@dataclass(frozen=True)
class Origin:
    """Where a change came from, for the consent record."""

    source: ConsentSource
    client_address: str | None = None
    # Why, for the consent record, when the change was not the person's own (a complaint).
    reason: str | None = None


def record_consent(
    session: AsyncSession, subscriber: Subscriber, channel: Channel, event: str, origin: Origin
) -> None:
    session.add(
        Consent(
            subscriber_id=subscriber.id,
            channel=channel,
            event=event,
            source=origin.source,
            at=utcnow(),
            client_address=origin.client_address,
            reason=origin.reason,
        )
    )


def may_ask_to_confirm(channel: Channel, suppression_reason: str | None) -> bool:
    """Whether a confirmation may go to an address with this suppression (None: not suppressed).

    A number that said STOP gets nothing until START (it will not reach them anyway), and a
    mailbox that bounced for good is not worth a message. An address that merely unsubscribed
    may sign up again: the confirmation is what proves it is really them.
    """
    if suppression_reason is None:
        return True
    return channel != "sms" and suppression_reason != "hard_bounce"


def confirmation_message(
    links: Links,
    *,
    public_id: uuid.UUID,
    channel: Channel,
    address: str,
    name: str,
    language: str,
) -> TransactionalMessage:
    """The command that asks the dispatcher to send one channel's confirmation."""
    if channel == "email":
        return TransactionalMessage(
            template="confirm_email",
            channel="email",
            to=address,
            language=language,
            context={"name": name, "confirm_url": links.confirm(public_id, "email")},
            unsubscribe_url=links.unsubscribe(public_id, "email"),
        )
    return TransactionalMessage(
        template="confirm_sms", channel="sms", to=address, language=language
    )


async def request_confirmation(
    session: AsyncSession, links: Links, subscriber: Subscriber, channel: Channel
) -> bool:
    """Ask the dispatcher to send the confirmation for one channel; False if it was not sent
    (too many to this mailbox or number lately, or the address must not be contacted): a
    sign-up form must not be a way to flood someone's inbox or phone."""
    address = subscriber.address(channel)
    if address is None:
        return False
    suppression = await store.suppression_of(session, address)
    if not may_ask_to_confirm(channel, suppression.reason if suppression else None):
        return False
    if not await confirmations.take(session, links.signer, address, now=utcnow()):
        log.info("confirmation not sent: too many to this mailbox lately")
        return False
    message = confirmation_message(
        links,
        public_id=subscriber.public_id,
        channel=channel,
        address=address,
        name=subscriber.name,
        language=subscriber.language,
    )
    session.add(outbox_row(Outbox, message))
    return True


async def sign_up(
    *, session: AsyncSession, links: Links, sign_up: SubscriberCreate, origin: Origin
) -> None:
    """A new subscriber, pending on the channels they asked for, and the confirmations.

    For an address we already know nothing about the subscriber changes (the caller cannot
    prove who they are); a channel still waiting for confirmation gets it again.
    """
    wanted = sign_up.wanted_channels
    # Held until the sign-up commits: the confirmation cap is counted on these rows, and
    # concurrent sign-ups of one address must take turns to count it.
    existing = await store.subscribers_by_address(
        session, email=sign_up.email, phone=sign_up.phone, for_update=True
    )
    if existing:
        for subscriber in existing:
            for channel in wanted:
                given = sign_up.email if channel == "email" else sign_up.phone
                if given is not None and subscriber.address(channel) == given:
                    await _ask_again(session, links, subscriber, channel, origin)
        return
    subscriber = Subscriber(
        public_id=uuid.uuid4(),
        email=sign_up.email,
        phone=sign_up.phone,
        name=sign_up.name,
        country=sign_up.country,
        language=sign_up.language,
        timezone=sign_up.timezone or "UTC",
        themes=list(sign_up.themes),
        frequency=sign_up.frequency,
        email_status=PENDING if "email" in wanted else None,
        sms_status=PENDING if "sms" in wanted else None,
    )
    session.add(subscriber)
    await session.flush()
    for channel in wanted:
        record_consent(session, subscriber, channel, "given", origin)
        await request_confirmation(session, links, subscriber, channel)
    log.info("subscriber signed up", extra={"subscriber": str(subscriber.public_id)})


async def _ask_again(
    session: AsyncSession, links: Links, subscriber: Subscriber, channel: Channel, origin: Origin
) -> None:
    status = subscriber.channel_status(channel)
    if status == CONFIRMED:
        return
    if status != PENDING:
        # Signing up again after leaving: consent is given anew, and confirmed by the link.
        subscriber.set_channel_status(channel, PENDING)
        record_consent(session, subscriber, channel, "given", origin)
    await request_confirmation(session, links, subscriber, channel)


ConfirmOutcome = Literal["confirmed", "already_confirmed", "not_pending", "unknown"]


async def confirm_channel(
    *, session: AsyncSession, ref: ChannelRef, origin: Origin
) -> ConfirmOutcome:
    subscriber = await store.subscriber_by_public_id(session, ref.subscriber, for_update=True)
    if subscriber is None or subscriber.address(ref.channel) is None:
        return "unknown"
    status = subscriber.channel_status(ref.channel)
    if status == CONFIRMED:
        return "already_confirmed"
    if status != PENDING:
        # An old link clicked after unsubscribing does not sign them up again.
        return "not_pending"
    mark_confirmed(session, subscriber, ref.channel, origin)
    address = subscriber.address(ref.channel)
    if address is not None:
        # They just proved the address works and that they want our messages.
        await store.lift_suppression(session, address)
    return "confirmed"


def mark_confirmed(
    session: AsyncSession, subscriber: Subscriber, channel: Channel, origin: Origin
) -> None:
    subscriber.set_channel_status(channel, CONFIRMED)
    record_consent(session, subscriber, channel, "confirmed", origin)
    profile_changed(session, subscriber, "confirmed", confirmed_at=utcnow())


def _why_stopped(origin: Origin, reason: SuppressionReason) -> UnsubscribeReason:
    """The reason a CRM hears (contract §8) for a channel stopped from ``origin``."""
    if reason == "complaint":
        return "complaint"
    if reason == "hard_bounce":
        return "hard_bounce"
    if origin.source == "sms":
        return "sms_stop"
    if origin.source == "page":
        return "one_click" if origin.reason == "one_click" else "link"
    return "admin"


async def unsubscribe(
    *,
    session: AsyncSession,
    subscriber: Subscriber,
    channel: Channel,
    origin: Origin,
    reason: SuppressionReason = "unsubscribed",
) -> None:
    """Stop a channel for good (idempotent); the address is suppressed so nothing slips out."""
    address = subscriber.address(channel)
    if address is None:
        return
    if subscriber.channel_status(channel) != UNSUBSCRIBED:
        subscriber.set_channel_status(channel, UNSUBSCRIBED)
        record_consent(session, subscriber, channel, "withdrawn", origin)
        channel_stopped(session, subscriber, channel, _why_stopped(origin, reason))
    await store.suppress(session, channel=channel, address=address, reason=reason)


async def update_preferences(
    *,
    session: AsyncSession,
    links: Links,
    subscriber: Subscriber,
    update: PreferencesUpdate,
    origin: Origin,
) -> list[Channel]:
    """Apply the preference centre; returns channels that now wait for a confirmation."""
    awaiting = await _apply_preferences(
        session=session, links=links, subscriber=subscriber, update=update, origin=origin
    )
    profile_changed(
        session,
        subscriber,
        "updated",
        confirmed_at=await last_confirmed_at(session, subscriber),
    )
    return awaiting


async def _apply_preferences(
    *,
    session: AsyncSession,
    links: Links,
    subscriber: Subscriber,
    update: PreferencesUpdate,
    origin: Origin,
) -> list[Channel]:
    if update.themes is not None:
        subscriber.themes = list(update.themes)
    if update.language is not None:
        subscriber.language = update.language
    if update.timezone is not None:
        subscriber.timezone = update.timezone
    if update.frequency is not None:
        subscriber.frequency = update.frequency
    if update.name:  # empty: kept (the page does not show the name it has, so sends none)
        subscriber.name = update.name
    awaiting: list[Channel] = []
    if update.channels is None:
        return awaiting
    for channel in CHANNELS:
        if subscriber.address(channel) is None:
            continue
        status = subscriber.channel_status(channel)
        if channel in update.channels and status in (None, UNSUBSCRIBED):
            # Turning a channel back on needs the owner of the address to confirm it.
            subscriber.set_channel_status(channel, PENDING)
            record_consent(session, subscriber, channel, "given", origin)
            await request_confirmation(session, links, subscriber, channel)
            awaiting.append(channel)
        elif channel in update.channels and status == PENDING:
            awaiting.append(channel)
        elif channel not in update.channels and status in (PENDING, CONFIRMED):
            await unsubscribe(
                session=session, subscriber=subscriber, channel=channel, origin=origin
            )
    return awaiting
