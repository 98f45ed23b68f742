"""dispatcher.messages: one message to one address that another service asked for (a sign-up's
confirmation link or SMS, an SMS answer), sent once whatever the redeliveries."""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy.exc import IntegrityError

from rendering.renderer import InvalidAddress, RecipientFill, clean_text
from rendering.segments import segment_count
from services.dispatcher import ledger, metrics
from services.dispatcher.adapters import Adapters
from services.dispatcher.identity import MessageRef
from services.dispatcher.models import (
    CANCELLED,
    FAILED,
    FINAL_STATES,
    RETRY,
    SENDING,
    SENT,
    Outbox,
    TransactionalDelivery,
)
from services.dispatcher.sms_lane import (
    BUDGET_MAX_WAIT,
    BUDGET_SPENT_DELAY,
    LANE_BUSY_DELAY,
    take_confirmation_budget,
)
from shared.db import outbox_row, utcnow
from shared.events import Channel, RecipientSuppressed, TransactionalMessage
from shared.messaging import Delivery as AmqpDelivery
from shared.messaging import Reject, Retry

log = logging.getLogger(__name__)


# Which channel each transactional template goes by.
TEMPLATE_CHANNEL: dict[str, Channel] = {
    "confirm_email": "email",
    "letter_check": "email",  # the link that sends a letter with this reply address
    "confirm_sms": "sms",
    "sms_reply": "sms",
}


def _expired(key: str, template: str, channel: str, now: datetime) -> TransactionalDelivery:
    """The ledger row of a message given up on before it was sent (once: a redelivery finds it)."""
    return TransactionalDelivery(
        message_id=key,
        template=template,
        channel=channel,
        status=CANCELLED,
        attempts=0,
        error_code="expired",
        created_at=now,
        updated_at=now,
    )


async def handle_transactional(
    dispatcher: Adapters, message: TransactionalMessage, delivery: AmqpDelivery
) -> None:
    channel = TEMPLATE_CHANNEL.get(message.template)
    if channel is None:
        raise Reject(f"unknown template {message.template[:40]!r}")
    if channel != message.channel:
        raise Reject(f"template {message.template} goes by {channel}, not {message.channel}")
    rendered = _render_transactional(dispatcher, message)  # a Reject before anything is claimed
    key = str(message.message_id)
    now = utcnow()
    try:
        async with dispatcher.sessionmaker() as session, session.begin():
            row = await session.get(TransactionalDelivery, key)
            if row is not None and row.status in FINAL_STATES:
                return
            if (
                row is not None
                and row.status == SENDING
                and row.updated_at > now - ledger.TRANSACTIONAL_LEASE
            ):
                raise Retry("being sent by another handling")
            if row is None:
                if (
                    message.template == "confirm_sms"
                    and now - message.occurred_at > BUDGET_MAX_WAIT
                ):
                    session.add(_expired(key, message.template, channel, now))
                    log.warning("confirmation SMS not sent: no budget for a day")
                    return
                # Counted once per message, when first claimed (a retry is not a new one).
                if message.template == "confirm_sms" and not await take_confirmation_budget(
                    session, now=now, per_hour=dispatcher.confirmation_sms_per_hour
                ):
                    raise Retry(
                        "the confirmation SMS budget of this hour is spent",
                        delay=BUDGET_SPENT_DELAY,
                        defer=True,
                    )
                session.add(
                    TransactionalDelivery(
                        message_id=key,
                        template=message.template,
                        channel=channel,
                        status=SENDING,
                        attempts=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
            else:
                row.status = SENDING
                row.attempts += 1
                row.updated_at = now
    except IntegrityError:
        raise Retry("claimed concurrently") from None
    if channel == "email":
        assert isinstance(rendered, bytes)
        await dispatcher.email_rate.acquire(1)
        ref = MessageRef.transactional(key)
        result = await dispatcher.email.send(dispatcher.envelope_for(ref), message.to, rendered)
    else:
        assert isinstance(rendered, str)
        # Alerts first: a confirmation or an answer takes only a slot no alert wants.
        if not await dispatcher.sms_lane.confirmation(segment_count(rendered)):
            async with dispatcher.sessionmaker() as session, session.begin():
                row = await session.get(TransactionalDelivery, key)
                assert row is not None
                row.status = RETRY
                row.updated_at = utcnow()
            raise Retry("alert SMS going out first", delay=LANE_BUSY_DELAY, defer=True)
        result = await dispatcher.sms.send(message.to, rendered)
    async with dispatcher.sessionmaker() as session, session.begin():
        row = await session.get(TransactionalDelivery, key)
        assert row is not None
        row.updated_at = utcnow()
        row.error_code = result.error_code
        if result.outcome == "sent":
            row.status = SENT
            row.provider_message_id = result.provider_message_id
            metrics.SENT.labels(channel).inc()
        elif result.outcome == "failed":
            row.status = FAILED
            metrics.FAILED.labels(channel).inc()
            if result.suppress:
                session.add(
                    outbox_row(
                        Outbox,
                        RecipientSuppressed(
                            subscriber_id=None,
                            channel=channel,
                            address=message.to,
                            reason=result.suppress,
                        ),
                    )
                )
        else:
            row.status = RETRY
            metrics.RETRIED.labels(channel).inc()
    dispatcher.notify()
    if result.outcome == "temporary":
        raise Retry(f"temporary failure {result.error_code}")


def _render_transactional(dispatcher: Adapters, message: TransactionalMessage) -> bytes | str:
    context = message.context
    if message.template == "confirm_sms":
        return dispatcher.renderer.confirm_sms(message.language)
    if message.template == "sms_reply":
        text = context.get("text")
        if not isinstance(text, str) or not text.strip():
            raise Reject("sms_reply needs context.text")
        # A plain answer (HELP, YES/STOP/START acknowledgements), sent as written.
        return clean_text(text).strip()[:1600]
    confirm_url = context.get("confirm_url")
    if not isinstance(confirm_url, str) or not confirm_url.startswith(("http://", "https://")):
        raise Reject(f"{message.template} needs context.confirm_url")
    name = context.get("name")
    if message.template == "letter_check":
        prepared = dispatcher.renderer.letter_check_email(message.language)
    else:
        prepared = dispatcher.renderer.confirm_email(
            message.language, has_unsubscribe=message.unsubscribe_url is not None
        )
    fill = RecipientFill(
        to=message.to,
        greeting=dispatcher.renderer.greeting(
            message.language, name if isinstance(name, str) else ""
        ),
        confirm_url=confirm_url,
        unsubscribe_url=message.unsubscribe_url,
    )
    ref = MessageRef.transactional(str(message.message_id))
    try:
        return prepared.build(
            fill, now=utcnow(), message_id=dispatcher.message_tags.message_id(ref)
        )
    except InvalidAddress:
        raise Reject("address not fit for an email header") from None
