"""Events of the other services that become webhooks: a subscriber confirmed, changed their
preferences, stopped a channel, was erased; a response was recorded (queue
``publisher.webhooks``). Each is recorded for the endpoints that want it in the same transaction
that marks the message handled, so a redelivery records nothing twice.

A message about a person handled after their erasure (the two queues that hear of it go at their
own pace; a delayed retry; ``uanet dead-letters replay``) records nothing: the erasure's
tombstone (``services/publisher/erasures.py``) is checked first.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from services.publisher.database import Database
from services.publisher.erasures import is_erased, mark_erased
from services.publisher.models import ProcessedMessage, UrgentAction
from services.publisher.webhooks.record import forget_subscriber, record_event
from shared import events
from shared.db import already_processed
from shared.messaging import Delivery, Reject

log = logging.getLogger(__name__)

WEBHOOKS_QUEUE = "publisher.webhooks"
WEBHOOK_EVENTS: tuple[type[events.Message], ...] = (
    events.SubscriberChanged,
    events.SubscriberUnsubscribed,
    events.SubscriberErased,
    events.ResponseRecorded,
)
# Their data is a person's: nothing of them once the person is erased.
_ABOUT_A_PERSON = (events.SubscriberChanged, events.SubscriberUnsubscribed, events.ResponseRecorded)
# The tally and the audit log take some of these messages too, with the same message id: this
# queue marks them handled under ids of its own.
_HANDLED_HERE = uuid.UUID("0d5b6d3e-5c43-4b57-8a38-5f0b7f0a9b21")


def _stamp(message: events.Message) -> str:
    return message.occurred_at.isoformat().replace("+00:00", "Z")


def _subscriber_data(event: events.SubscriberChanged) -> dict[str, Any]:
    return {
        "subscriber_id": str(event.subscriber_id),
        "email": event.email,
        "phone": event.phone,
        "name": event.name,
        "country": event.country,
        "language": event.language,
        "timezone": event.timezone,
        "channels": list(event.channels),
        "themes": list(event.themes),
        "frequency": event.frequency,
        "confirmed_at": event.confirmed_at.isoformat().replace("+00:00", "Z")
        if event.confirmed_at
        else None,
    }


class WebhookEventsConsumer:
    def __init__(self, database: Database, notify: Any) -> None:
        self.database = database
        self.notify = notify

    async def __call__(self, message: events.Message, delivery: Delivery | None = None) -> None:
        handled_id = uuid.uuid5(_HANDLED_HERE, str(message.message_id))
        # The same webhook-id whatever happens: derived from the message, not drawn anew.
        event_id = f"msg_{handled_id.hex}"
        async with self.database.write() as session:
            if await already_processed(session, ProcessedMessage, handled_id):
                return
            if isinstance(message, _ABOUT_A_PERSON) and await is_erased(
                session, message.subscriber_id
            ):
                log.info("webhook event of an erased subscriber not recorded")
                return
            if isinstance(message, events.SubscriberChanged):
                confirmed = message.change == "confirmed"
                await record_event(
                    session,
                    "subscriber.confirmed" if confirmed else "subscriber.updated",
                    _subscriber_data(message),
                    occurred_at=message.occurred_at,
                    subscriber_id=message.subscriber_id,
                    event_id=event_id,
                )
            elif isinstance(message, events.SubscriberUnsubscribed):
                await record_event(
                    session,
                    "subscriber.unsubscribed",
                    {
                        "subscriber_id": str(message.subscriber_id),
                        "channel": message.channel,
                        "reason": message.reason,
                        "at": _stamp(message),
                    },
                    occurred_at=message.occurred_at,
                    subscriber_id=message.subscriber_id,
                    event_id=event_id,
                )
            elif isinstance(message, events.SubscriberErased):
                await mark_erased(session, message.subscriber_id)
                dropped = await forget_subscriber(session, message.subscriber_id)
                # Kept until delivered (the CRM must hear it to erase them too), tied to no one.
                await record_event(
                    session,
                    "subscriber.erased",
                    {"subscriber_id": str(message.subscriber_id)},
                    occurred_at=message.occurred_at,
                    event_id=event_id,
                )
                log.info("webhook events of an erased subscriber dropped: %d", dropped)
            elif isinstance(message, events.ResponseRecorded):
                action = await session.get(UrgentAction, message.action_id)
                if action is None:
                    raise Reject(f"unknown urgent action {message.action_id}")
                await record_event(
                    session,
                    "response.recorded",
                    {
                        "action_id": str(message.action_id),
                        "reference": action.reference,
                        "subscriber_id": str(message.subscriber_id),
                        "kind": message.kind,
                        "count": message.count,
                        "source": message.source,
                        "country": message.country,
                        "at": _stamp(message),
                    },
                    occurred_at=message.occurred_at,
                    subscriber_id=message.subscriber_id,
                    event_id=event_id,
                )
            else:
                raise Reject(f"{WEBHOOKS_QUEUE} does not take {type(message).__name__}")
        self.notify()
