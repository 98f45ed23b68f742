"""Daily digests: one email a day, at 09:00 in the subscriber's time zone, listing the standard
urgent actions that came for them since their last digest.

A ``daily_digest`` subscriber's standard alert email is a ledger row in state ``digest`` (due at
their next 09:00, the recipient kept in ``held``). When rows are due, the scheduler sends each
subscriber one digest:

- Exactly once per subscriber and local date: a ``DigestDelivery`` row, unique on (subscriber,
  local date), is claimed (committed) before the send and marked after it, with the ledger rows
  it carries, in one transaction. Of two dispatchers only one claims it; alerts that become due
  once the day's digest is taken wait for the next one. A dispatcher that dies mid-send leaves the
  digest ``sending`` under a lease (``DIGEST_LEASE``); after it, the digest is tried again.
- Each action in it counts as ``sent`` (a ``DeliveriesReported`` per action) once SMTP accepts
  it; a permanent refusal counts each as ``failed`` (and suppresses a hard-bounced address); a
  temporary one tries again later.
- Closing an action cancels its rows still waiting (``ledger.cancel_pending_for_action``).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from rendering.i18n import STRINGS
from rendering.renderer import DigestEntry, InvalidAddress, RecipientFill, pick_language
from services.dispatcher import ledger, metrics
from services.dispatcher.identity import MessageRef
from services.dispatcher.models import (
    CANCELLED,
    DIGEST,
    FAILED,
    RETRY,
    SENDING,
    SENT,
    Delivery,
    DigestDelivery,
    DispatchAction,
    Outbox,
)
from services.dispatcher.schedule import (
    HELD_RETRY_DELAY,
    local_date,
    next_digest_at,
    recipient_of,
    zone_of,
)
from services.dispatcher.senders import SendResult
from shared.db import outbox_row, utcnow
from shared.events import ActionContent, DeliveriesReported, Recipient, RecipientSuppressed

if TYPE_CHECKING:
    from services.dispatcher.handlers import Dispatcher

log = logging.getLogger(__name__)

# One send, no renewal: the lease covers the SMTP timeout, as for a transactional message.
DIGEST_LEASE = ledger.TRANSACTIONAL_LEASE


@dataclass(frozen=True)
class _Item:
    row_id: int
    action_id: str
    recipient: Recipient


@dataclass(frozen=True)
class _Claimed:
    digest_id: int
    token: str
    items: list[_Item]


async def release_digests(dispatcher: Dispatcher, *, page_size: int) -> int:
    """Send every digest due now, ``page_size`` subscribers per query; returns digests sent."""
    now = dispatcher.clock()
    async with dispatcher.sessionmaker() as session, session.begin():
        await _take_back_abandoned(session)
    sent = 0
    while not dispatcher.stopping:  # a graceful stop: the rest are due for the next process
        async with dispatcher.sessionmaker() as session:
            # By due time, through the index of waiting rows (grouped by subscriber in SQL,
            # SQLite walked the ledger's whole unique index for the order instead).
            subscribers = sorted(
                set(
                    (
                        await session.execute(
                            select(Delivery.subscriber_id)
                            .where(Delivery.status == DIGEST, Delivery.not_before <= now)
                            .order_by(Delivery.not_before, Delivery.id)
                            .limit(page_size)
                        )
                    ).scalars()
                )
            )
        if not subscribers:
            return sent
        for subscriber_id in subscribers:
            if dispatcher.stopping:
                break
            # Each call moves every due row of this subscriber out of the due set, so the
            # loop ends.
            sent += await send_digest(dispatcher, subscriber_id, now=now)
    return sent


async def send_digest(dispatcher: Dispatcher, subscriber_id: str, *, now: datetime) -> int:
    """This subscriber's digest, if it is theirs to send now: 1 if it went out."""
    async with dispatcher.sessionmaker() as session, session.begin():
        claimed = await _claim(session, subscriber_id, now)
    if claimed is None:
        return 0
    async with dispatcher.sessionmaker() as session:
        actions = {
            a.id: a
            for a in (
                await session.scalars(
                    select(DispatchAction).where(
                        DispatchAction.id.in_({i.action_id for i in claimed.items})
                    )
                )
            )
        }
    latest = claimed.items[-1].recipient  # the newest address, name and links
    try:
        message = _render(dispatcher, claimed, actions, now=utcnow())
    except InvalidAddress:
        result = SendResult.failed("invalid_address")
    else:
        await dispatcher.email_rate.acquire(1)
        sender = dispatcher.envelope_for(MessageRef.digest(claimed.digest_id))
        result = await dispatcher.email.send(sender, latest.address, message)
    async with dispatcher.sessionmaker() as session, session.begin():
        await _record(session, claimed, result, latest, retry_at=dispatcher.clock())
    dispatcher.notify()
    log.info(
        "digest handled",
        extra={
            "digest_id": claimed.digest_id,
            "items": len(claimed.items),
            "outcome": result.outcome,
        },
    )
    return 1 if result.outcome == "sent" else 0


def _render(
    dispatcher: Dispatcher,
    claimed: _Claimed,
    actions: dict[str, DispatchAction],
    *,
    now: datetime,
) -> bytes:
    items = claimed.items
    latest = items[-1].recipient
    language = digest_language([i.recipient.language for i in items])
    entries: list[DigestEntry] = []
    for item in items:
        action = actions.get(item.action_id)
        if action is None:
            continue
        content_language = pick_language(
            item.recipient.language, action.content, action.default_language
        )
        content = ActionContent.model_validate(action.content[content_language])
        entries.append(
            DigestEntry(
                reference=action.reference,
                subject=content.subject,
                summary=content.summary,
                act_url=item.recipient.act_url,
                language=content_language,
            )
        )
    prepared = dispatcher.renderer.digest_email(
        language, entries, has_preferences=latest.preferences_url is not None
    )
    fill = RecipientFill(
        to=latest.address,
        greeting=dispatcher.renderer.greeting(language, latest.name),
        unsubscribe_url=latest.unsubscribe_url,
        preferences_url=latest.preferences_url,
    )
    message_id = dispatcher.message_tags.message_id(MessageRef.digest(claimed.digest_id))
    return prepared.build(fill, now=now, message_id=message_id)


def digest_language(languages: Sequence[str]) -> str:
    """The digest's own words: the language most of its alerts came in (we only know the
    subscriber's language through them), the newest on a tie, English if we do not speak it."""
    spoken = [lang for lang in languages if lang in STRINGS]
    if not spoken:
        return "en"
    counts = Counter(spoken)
    best = max(counts.values())
    return next(lang for lang in reversed(spoken) if counts[lang] == best)


async def _take_back_abandoned(session: AsyncSession) -> None:
    """Digests whose sender died (lease run out) are tried again, with their rows."""
    expired = utcnow() - DIGEST_LEASE
    await session.execute(
        update(DigestDelivery)
        .where(DigestDelivery.status == SENDING, DigestDelivery.updated_at < expired)
        .values(status=RETRY, claim_token=None)
        .execution_options(synchronize_session=False)
    )
    await session.execute(
        update(Delivery)
        .where(
            Delivery.status == SENDING,
            Delivery.digest_id.is_not(None),
            Delivery.updated_at < expired,
        )
        .values(status=DIGEST, claim_token=None)
        .execution_options(synchronize_session=False)
    )


def _insert_digest(session: AsyncSession) -> Any:
    module: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return module.insert(DigestDelivery).on_conflict_do_nothing(
        index_elements=["subscriber_id", "local_date"]
    )


async def _claim(session: AsyncSession, subscriber_id: str, now: datetime) -> _Claimed | None:
    rows = (
        await session.execute(
            select(Delivery.id, Delivery.action_id, Delivery.held)
            .where(
                Delivery.subscriber_id == subscriber_id,
                Delivery.status == DIGEST,
                Delivery.not_before <= now,
            )
            .order_by(Delivery.id)
        )
    ).all()
    due: list[_Item] = []
    for row_id, action_id, held in rows:
        recipient = recipient_of(held)
        if recipient is None:
            log.error("held digest row unreadable; cancelled", extra={"delivery_id": row_id})
            await session.execute(
                update(Delivery)
                .where(Delivery.id == row_id)
                .values(
                    status=CANCELLED,
                    held=None,
                    not_before=None,
                    error_code="unreadable",
                    updated_at=utcnow(),
                )
            )
            continue
        due.append(_Item(row_id, action_id, recipient))
    if not due:
        return None
    zone = zone_of(due[-1].recipient.timezone)
    day = local_date(now, zone)
    token = str(uuid.uuid4())
    stamp = utcnow()
    await session.execute(
        _insert_digest(session).values(
            subscriber_id=subscriber_id,
            local_date=day,
            status=SENDING,
            claim_token=token,
            attempts=1,
            items=0,
            created_at=stamp,
            updated_at=stamp,
        )
    )
    # One that failed temporarily before (or whose sender died) is taken over.
    await session.execute(
        update(DigestDelivery)
        .where(
            DigestDelivery.subscriber_id == subscriber_id,
            DigestDelivery.local_date == day,
            DigestDelivery.status == RETRY,
        )
        .values(
            status=SENDING,
            claim_token=token,
            attempts=DigestDelivery.attempts + 1,
            updated_at=stamp,
        )
        .execution_options(synchronize_session=False)
    )
    digest_id, digest_token = (
        await session.execute(
            select(DigestDelivery.id, DigestDelivery.claim_token).where(
                DigestDelivery.subscriber_id == subscriber_id, DigestDelivery.local_date == day
            )
        )
    ).one()
    ids = [item.row_id for item in due]
    if digest_token != token:
        # Today's digest is sent or being sent: these wait for tomorrow's.
        await session.execute(
            update(Delivery)
            .where(Delivery.id.in_(ids), Delivery.status == DIGEST)
            .values(not_before=next_digest_at(now, zone, after=True))
            .execution_options(synchronize_session=False)
        )
        return None
    taken = set(
        (
            await session.execute(
                update(Delivery)
                .where(Delivery.id.in_(ids), Delivery.status == DIGEST)
                .values(
                    status=SENDING,
                    claim_token=token,
                    digest_id=digest_id,
                    attempts=Delivery.attempts + 1,
                    updated_at=stamp,
                )
                .returning(Delivery.id)
                .execution_options(synchronize_session=False)
            )
        ).scalars()
    )
    items = [item for item in due if item.row_id in taken]
    await session.execute(
        update(DigestDelivery)
        .where(DigestDelivery.id == digest_id)
        .values(items=len(items), status=SENDING if items else RETRY)
    )
    return _Claimed(digest_id, token, items) if items else None


async def _record(
    session: AsyncSession,
    claimed: _Claimed,
    result: SendResult,
    latest: Recipient,
    *,
    retry_at: datetime,
) -> None:
    stamp = utcnow()
    ids = [item.row_id for item in claimed.items]
    mine = (Delivery.id.in_(ids), Delivery.claim_token == claimed.token)
    digest = update(DigestDelivery).where(
        DigestDelivery.id == claimed.digest_id, DigestDelivery.claim_token == claimed.token
    )
    if result.outcome == "temporary":
        await session.execute(
            digest.values(status=RETRY, claim_token=None, error_code=result.error_code)
        )
        await session.execute(
            update(Delivery)
            .where(*mine)
            .values(status=DIGEST, claim_token=None, not_before=retry_at + HELD_RETRY_DELAY)
            .execution_options(synchronize_session=False)
        )
        metrics.RETRIED.labels("email").inc()
        return
    sent = result.outcome == "sent"
    final = SENT if sent else FAILED
    await session.execute(
        digest.values(
            status=final,
            claim_token=None,
            error_code=result.error_code,
            sent_at=stamp if sent else None,
            updated_at=stamp,
        )
    )
    await session.execute(
        update(Delivery)
        .where(*mine)
        .values(
            status=final,
            claim_token=None,
            held=None,
            not_before=None,
            error_code=result.error_code,
            sent_at=stamp if sent else None,
            updated_at=stamp,
        )
        .execution_options(synchronize_session=False)
    )
    # Each action in the digest is one alert sent (or failed) for that action's counts.
    for item in sorted(claimed.items, key=lambda i: i.action_id):
        session.add(
            outbox_row(
                Outbox,
                DeliveriesReported(
                    action_id=uuid.UUID(item.action_id),
                    message_kind="alert",
                    channel="email",
                    sent=1 if sent else 0,
                    failed=0 if sent else 1,
                ),
            )
        )
    (metrics.SENT if sent else metrics.FAILED).labels("email").inc(len(claimed.items))
    if result.suppress:
        session.add(
            outbox_row(
                Outbox,
                RecipientSuppressed(
                    subscriber_id=latest.subscriber_id,
                    channel="email",
                    address=latest.address,
                    reason=result.suppress,
                ),
            )
        )
