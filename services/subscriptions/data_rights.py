"""A person's data rights: a copy of everything we keep about them, and erasure.

Erasure keeps the rows that counts rest on (who was sent which action, what was reported) but
strips them of everything personal: the subscriber row loses its addresses, name, time zone and
themes, and takes a new random id so every link and id it had stops working; the outbox rows
already published that named them (batches, confirmations, letters) are deleted at once, and the
rest once published (``shared.db.OUTBOX_RETENTION``). Suppressions of their
addresses are kept: they are what stops us contacting that address again (an import, a bounce
list), and they hold nothing but the address and why.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions import confirmations, store
from services.subscriptions.models import (
    ActionRecipient,
    Consent,
    KnownAction,
    Outbox,
    PendingLetter,
    Response,
    Subscriber,
    Suppression,
)
from shared.db import forget_published, outbox_row, utcnow
from shared.events import SubscriberErased
from shared.tokens import LinkSigner

log = logging.getLogger(__name__)


def _when(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


async def live_subscriber(session: AsyncSession, public_id: uuid.UUID) -> Subscriber | None:
    subscriber = await store.subscriber_by_public_id(session, public_id, for_update=True)
    if subscriber is None or subscriber.erased_at is not None:
        return None
    return subscriber


async def export_subscriber(session: AsyncSession, public_id: uuid.UUID) -> dict[str, Any] | None:
    """Everything we keep about one person, as JSON-ready data; None if we do not know them."""
    subscriber = await live_subscriber(session, public_id)
    if subscriber is None:
        return None
    consents = (
        await session.execute(
            select(Consent)
            .where(Consent.subscriber_id == subscriber.id)
            .order_by(Consent.at, Consent.id)
        )
    ).scalars()
    received = (
        await session.execute(
            select(ActionRecipient, KnownAction)
            .join(KnownAction, KnownAction.id == ActionRecipient.action_id)
            .where(ActionRecipient.subscriber_id == subscriber.id)
            .order_by(ActionRecipient.id)
        )
    ).tuples()
    responses = (
        await session.execute(
            select(Response, KnownAction.reference)
            .join(KnownAction, KnownAction.id == Response.action_id)
            .where(Response.subscriber_id == subscriber.id)
            .order_by(Response.created_at)
        )
    ).tuples()
    addresses = [a for a in (subscriber.email, subscriber.phone) if a is not None]
    suppressions: list[Suppression] = []
    if addresses:
        query = select(Suppression).where(Suppression.address.in_(addresses))
        suppressions = list((await session.execute(query.order_by(Suppression.at))).scalars())
    return {
        "id": str(subscriber.public_id),
        "exported_at": utcnow().isoformat(),
        "profile": {
            "email": subscriber.email,
            "phone": subscriber.phone,
            "name": subscriber.name,
            "country": subscriber.country,
            "language": subscriber.language,
            "timezone": subscriber.timezone,
            "themes": list(subscriber.themes or []),
            "frequency": subscriber.frequency,
            "created_at": _when(subscriber.created_at),
            "updated_at": _when(subscriber.updated_at),
        },
        "channels": {"email": subscriber.email_status, "sms": subscriber.sms_status},
        "consents": [
            {
                "channel": c.channel,
                "event": c.event,
                "source": c.source,
                "at": _when(c.at),
                "client_address": c.client_address,
                "reason": c.reason,
            }
            for c in consents
        ],
        "actions_received": [
            {
                "action_id": str(action.id),
                "reference": action.reference,
                "title": action.title,
                "channels": recipient.channels,
                "sent_at": _when(recipient.created_at),
            }
            for recipient, action in received
        ],
        "responses": [
            {
                "action_id": str(response.action_id),
                "reference": reference,
                "kind": response.kind,
                "count": response.count,
                "source": response.source,
                "reported_at": _when(response.created_at),
            }
            for response, reference in responses
        ],
        "suppressions": [
            {"channel": s.channel, "address": s.address, "reason": s.reason, "at": _when(s.at)}
            for s in suppressions
        ],
    }


async def erase_subscriber(
    session: AsyncSession,
    public_id: uuid.UUID,
    *,
    erased_by: str | None = None,
    signer: LinkSigner | None = None,
) -> bool:
    """Strip one person's data (in the caller's transaction); False if we do not know them.
    ``erased_by`` (the admin token's name) goes to the publisher's audit log; ``signer`` (the
    service's) finds their mailboxes' confirmation counts, forgotten too."""
    subscriber = await live_subscriber(session, public_id)
    if subscriber is None:
        return False
    now = utcnow()
    addresses = [a for a in (subscriber.email, subscriber.phone) if a]
    # Letters still waiting on their reply address: gone, with the email that asked for it.
    pending = select(PendingLetter.sender_email).where(PendingLetter.subscriber_id == subscriber.id)
    reply_addresses = list((await session.execute(pending)).scalars())
    await session.execute(delete(PendingLetter).where(PendingLetter.subscriber_id == subscriber.id))
    await forget_published(session, Outbox, [str(public_id), *addresses, *reply_addresses])
    if signer is not None:
        await confirmations.forget(session, signer, addresses)
    subscriber.public_id = uuid.uuid4()
    subscriber.email = None
    subscriber.phone = None
    subscriber.name = ""
    subscriber.timezone = "UTC"
    subscriber.themes = []
    subscriber.email_status = None
    subscriber.sms_status = None
    subscriber.confirmations_window_start = None
    subscriber.confirmations_in_window = 0
    subscriber.erased_at = now
    # Country and language stay: coarse, and what the per-country counts of their past actions
    # rest on. The consent history stays as events, without where they came from.
    await session.execute(
        update(Consent).where(Consent.subscriber_id == subscriber.id).values(client_address=None)
    )
    # The dispatcher forgets them too (its ledger's addresses); the publisher audits it.
    erased = SubscriberErased(subscriber_id=public_id, erased_by=erased_by, addresses=addresses)
    session.add(outbox_row(Outbox, erased))
    log.info("subscriber erased")
    return True
