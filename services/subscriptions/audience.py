"""Who gets an urgent action, and handing them to the dispatcher page by page.

Resolution streams through confirmed subscribers in primary-key order, ``PAGE_SIZE`` at a time.
Each page is one transaction: the ``ActionRecipient`` rows, one ``DeliveryBatch`` and one
``AudienceCounted`` in the outbox, and the progress row that says where to go on. A crash loses at
most the page in flight, which is rolled back and done again; nothing is sent twice.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, and_, false, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions import store
from services.subscriptions.links import Links
from services.subscriptions.models import (
    CONFIRMED,
    ActionRecipient,
    AudienceProgress,
    KnownAction,
    Outbox,
    Subscriber,
)
from services.subscriptions.pacing import Pacer, Unpaced
from services.subscriptions.schemas import Frequency
from shared.db import insert_or_ignore, outbox_row, utcnow
from shared.events import Audience, AudienceCounted, Channel, DeliveryBatch, Recipient

log = logging.getLogger(__name__)

PAGE_SIZE = 500
# SMS go at the deployment's rate (a US long code: one segment a second), so a page's SMS are
# split into batches this small: every dispatcher takes a share, and a dispatcher stopped hands
# back little. Emails go fast and stay in one batch per page.
SMS_BATCH = 50


def delivery_batches(recipients: list[Recipient]) -> list[list[Recipient]]:
    """A page's recipients as batches: its emails with its first SMS_BATCH SMS, then the rest
    of its SMS in parts of SMS_BATCH (a small audience is one batch)."""
    emails = [r for r in recipients if r.channel != "sms"]
    texts = [r for r in recipients if r.channel == "sms"]
    parts = [texts[i : i + SMS_BATCH] for i in range(SMS_BATCH, len(texts), SMS_BATCH)]
    return [emails + texts[:SMS_BATCH], *parts]


# Core, not the ORM's bulk insert: its per-row bookkeeping was a tenth of a page's cost.
_RECIPIENTS = cast(Table, ActionRecipient.__table__)
ALERT = "alert"
CLOSED = "closed"
CHANNELS: tuple[Channel, ...] = ("email", "sms")

Notify = Callable[[], None]


def update_kind(update_id: uuid.UUID) -> str:
    return f"update:{update_id}"


# ---- the rule, in plain Python (the SQL below pushes down what it can of it) -------------------


def in_audience(*, country: str, language: str, themes: Sequence[str], audience: Audience) -> bool:
    """Every filter given applies; an empty one means everyone. A subscriber with no themes takes
    every theme."""
    if audience.countries and country not in audience.countries:
        return False
    if audience.languages and language not in audience.languages:
        return False
    if audience.themes and themes and not set(themes) & set(audience.themes):
        return False
    return True


def usable_channels(
    subscriber: Subscriber, wanted: Iterable[str], suppressed: set[str]
) -> list[Channel]:
    """Channels of ``wanted`` confirmed for this subscriber whose address may be contacted."""
    usable: list[Channel] = []
    for channel in CHANNELS:
        address = subscriber.address(channel)
        if (
            channel in wanted
            and address is not None
            and subscriber.channel_status(channel) == CONFIRMED
            and address not in suppressed
        ):
            usable.append(channel)
    return usable


def content_language(language: str, available: Iterable[str], default: str) -> str:
    """The subscriber's language if the text exists in it, else the action's default."""
    return language if language in set(available) else default


# ---- building recipients ------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageContext:
    """What every recipient of one message shares."""

    languages: frozenset[str]
    default_language: str
    # Standard SMS wait for the recipient's daytime; urgent ones go at once.
    local_time: bool


def recipients_for(
    *,
    links: Links,
    subscriber: Subscriber,
    recipient_id: int,
    channels: Sequence[Channel],
    context: MessageContext,
) -> list[Recipient]:
    language = content_language(subscriber.language, context.languages, context.default_language)
    preferences_url = links.preferences(subscriber.public_id)
    act_url = links.act(recipient_id)
    out: list[Recipient] = []
    for channel in channels:
        address = subscriber.address(channel)
        assert address is not None  # usable_channels checked it
        out.append(
            Recipient(
                subscriber_id=subscriber.public_id,
                channel=channel,
                address=address,
                language=language,
                name=subscriber.name,
                act_url=act_url,
                unsubscribe_url=links.unsubscribe(subscriber.public_id, channel),
                preferences_url=preferences_url,
                timezone=subscriber.timezone if context.local_time else None,
                frequency=_frequency(subscriber.frequency),
            )
        )
    return out


def _frequency(value: str) -> Frequency:
    return "daily_digest" if value == "daily_digest" else "immediate"


# ---- progress -----------------------------------------------------------------------------------


async def start_progress(session: AsyncSession, action_id: uuid.UUID, message_kind: str) -> None:
    await insert_or_ignore(
        session,
        AudienceProgress,
        {
            "action_id": action_id,
            "message_kind": message_kind,
            "last_subscriber_id": 0,
            "pages": 0,
            "finished": False,
            "updated_at": utcnow(),
        },
    )


async def _locked_progress(
    session: AsyncSession, action_id: uuid.UUID, message_kind: str
) -> AudienceProgress:
    await start_progress(session, action_id, message_kind)
    query = select(AudienceProgress).where(
        AudienceProgress.action_id == action_id, AudienceProgress.message_kind == message_kind
    )
    if store.is_postgres(session):
        # Two consumers on the same action (a redelivery racing the original) take turns.
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one()


async def is_finished(session: AsyncSession, action_id: uuid.UUID, message_kind: str) -> bool:
    progress = await session.get(AudienceProgress, (action_id, message_kind))
    return progress is not None and progress.finished


# ---- the alert ---------------------------------------------------------------------------------


def _alert_query(action: KnownAction, audience: Audience, after: int, limit: int) -> Any:
    channel_clauses = []
    if "email" in action.channels:
        channel_clauses.append(
            and_(Subscriber.email_status == CONFIRMED, Subscriber.email.is_not(None))
        )
    if "sms" in action.channels:
        channel_clauses.append(
            and_(Subscriber.sms_status == CONFIRMED, Subscriber.phone.is_not(None))
        )
    query = select(Subscriber).where(
        Subscriber.id > after, or_(*channel_clauses) if channel_clauses else false()
    )
    if audience.countries:
        query = query.where(Subscriber.country.in_(audience.countries))
    if audience.languages:
        query = query.where(Subscriber.language.in_(audience.languages))
    # Themes live in a JSON list: filtered in Python, page by page.
    return query.order_by(Subscriber.id).limit(limit)


async def resolve_audience(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    links: Links,
    action_id: uuid.UUID,
    notify: Notify,
    page_size: int = PAGE_SIZE,
    pace: Pacer | None = None,
) -> int:
    """Hand the action's whole audience to the dispatcher, at its pace (pacing.py); resumes
    where it stopped.

    Returns the number of batches written by this call.
    """
    pace = pace or Unpaced()
    batches = 0
    while True:
        await pace.wait()
        async with sessionmaker() as session, session.begin():
            written = await _alert_page(session, links, action_id, page_size)
        if written is None:
            break
        if written:
            batches += 1
            notify()
    log.info("audience resolved", extra={"action_id": str(action_id), "batches": batches})
    return batches


async def _alert_page(
    session: AsyncSession, links: Links, action_id: uuid.UUID, page_size: int
) -> bool | None:
    """One page; True if it wrote a batch, False for a page with nobody in it, None when done."""
    progress = await _locked_progress(session, action_id, ALERT)
    if progress.finished:
        return None
    action = await session.get(KnownAction, action_id)
    if action is None or action.status == "closed":
        # Closed while going out: the rest is not sent (the dispatcher cancels what is queued).
        progress.finished = True
        return None
    audience = Audience.model_validate(action.audience)
    subscribers = list(
        (
            await session.execute(
                _alert_query(action, audience, progress.last_subscriber_id, page_size)
            )
        ).scalars()
    )
    if not subscribers:
        progress.finished = True
        return None
    progress.last_subscriber_id = subscribers[-1].id
    progress.pages += 1
    suppressed = await store.suppressed_among(
        session, (a for s in subscribers for a in (s.email, s.phone) if a is not None)
    )
    chosen: list[tuple[Subscriber, list[Channel]]] = []
    for subscriber in subscribers:
        if not in_audience(
            country=subscriber.country,
            language=subscriber.language,
            themes=subscriber.themes or [],
            audience=audience,
        ):
            continue
        channels = usable_channels(subscriber, action.channels, suppressed)
        if channels:
            chosen.append((subscriber, channels))
    if not chosen:
        return False
    now = utcnow()
    # One bulk INSERT … RETURNING, ids in row order: the recipient ids the act links carry
    # (building 500 ORM objects and flushing them cost more than the insert itself).
    recipient_ids = list(
        await session.scalars(
            insert(_RECIPIENTS).returning(_RECIPIENTS.c.id, sort_by_parameter_order=True),
            [
                {
                    "action_id": action.id,
                    "subscriber_id": subscriber.id,
                    "via_email": "email" in channels,
                    "via_sms": "sms" in channels,
                    "created_at": now,
                }
                for subscriber, channels in chosen
            ],
        )
    )
    context = MessageContext(
        languages=frozenset(action.content),
        default_language=action.default_language,
        local_time=action.urgency == "standard",
    )
    recipients: list[Recipient] = []
    for recipient_id, (subscriber, channels) in zip(recipient_ids, chosen, strict=True):
        recipients.extend(
            recipients_for(
                links=links,
                subscriber=subscriber,
                recipient_id=recipient_id,
                channels=channels,
                context=context,
            )
        )
    for part in delivery_batches(recipients):
        session.add(
            outbox_row(
                Outbox, DeliveryBatch(action_id=action.id, message_kind=ALERT, recipients=part)
            )
        )
    per_channel = Counter(r.channel for r in recipients)
    by_country = Counter(subscriber.country for subscriber, _ in chosen)
    session.add(
        outbox_row(
            Outbox,
            AudienceCounted(
                action_id=action.id,
                recipients={c: per_channel.get(c, 0) for c in CHANNELS},
                by_country=dict(by_country),
            ),
        )
    )
    return True


# ---- follow-ups (updates and the closing outcome) ---------------------------------------------


async def send_follow_up(
    *,
    sessionmaker: async_sessionmaker[AsyncSession],
    links: Links,
    action_id: uuid.UUID,
    message_kind: str,
    languages: Iterable[str],
    default_language: str,
    notify: Notify,
    page_size: int = PAGE_SIZE,
    pace: Pacer | None = None,
) -> int:
    """Send ``message_kind`` to exactly those who received the alert, on the channels they got
    it on that are still confirmed and not suppressed. Resumable and paced like the alert."""
    pace = pace or Unpaced()
    languages = frozenset(languages)
    batches = 0
    while True:
        await pace.wait()
        async with sessionmaker() as session, session.begin():
            written = await _follow_up_page(
                session, links, action_id, message_kind, languages, default_language, page_size
            )
        if written is None:
            break
        if written:
            batches += 1
            notify()
    log.info(
        "follow-up handed over",
        extra={"action_id": str(action_id), "message_kind": message_kind, "batches": batches},
    )
    return batches


async def _follow_up_page(
    session: AsyncSession,
    links: Links,
    action_id: uuid.UUID,
    message_kind: str,
    languages: frozenset[str],
    default_language: str,
    page_size: int,
) -> bool | None:
    progress = await _locked_progress(session, action_id, message_kind)
    if progress.finished:
        return None
    action = await session.get(KnownAction, action_id)
    if action is None:
        progress.finished = True
        return None
    query = (
        select(ActionRecipient, Subscriber)
        .join(Subscriber, Subscriber.id == ActionRecipient.subscriber_id)
        .where(
            ActionRecipient.action_id == action_id,
            ActionRecipient.subscriber_id > progress.last_subscriber_id,
        )
        .order_by(ActionRecipient.subscriber_id)
        .limit(page_size)
    )
    rows = list((await session.execute(query)).tuples())
    if not rows:
        progress.finished = True
        return None
    progress.last_subscriber_id = rows[-1][1].id
    progress.pages += 1
    suppressed = await store.suppressed_among(
        session, (a for _, s in rows for a in (s.email, s.phone) if a is not None)
    )
    context = MessageContext(
        languages=languages,
        default_language=default_language,
        local_time=action.urgency == "standard",
    )
    recipients: list[Recipient] = []
    for recipient, subscriber in rows:
        channels = usable_channels(subscriber, recipient.channels, suppressed)
        recipients.extend(
            recipients_for(
                links=links,
                subscriber=subscriber,
                recipient_id=recipient.id,
                channels=channels,
                context=context,
            )
        )
    if not recipients:
        return False
    for part in delivery_batches(recipients):
        session.add(
            outbox_row(
                Outbox,
                DeliveryBatch(action_id=action_id, message_kind=message_kind, recipients=part),
            )
        )
    return True
