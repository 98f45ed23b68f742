"""What the dispatcher consumes, and what handles each: the table of this service.

- ``dispatcher.actions``: ActionPublished, ActionUpdated, ActionClosed, ActionTargetsChanged,
  SubscriberErased -> ``actions``
- ``dispatcher.batches``: DeliveryBatch (alerts, follow-ups, outcomes) -> ``batches``, which
  sends through ``sending``; held rows that fall due (quiet hours) come from ``scheduler``,
  daily digests from ``digests``
- ``dispatcher.messages``: TransactionalMessage (confirmations, SMS answers) -> ``transactional``
- ``dispatcher.letters``: LetterRequested (letters to officials) -> ``letters``
- ``POST /webhooks/twilio/status``: Twilio status callbacks -> ``receipts``
- the bounce port and the ESP webhooks: late bounces, complaints, deliveries -> ``feedback``

It sends through ``senders`` (SMTP, Twilio) what ``sending`` claimed in the ledger, and emits,
through its outbox, ``DeliveriesReported``, ``DeliveryStatusChanged``, ``RecipientSuppressed``,
``TargetBounced`` and ``EmailFeedback``.

Handlers take a message and the adapters (``Dispatcher`` holds them); they never talk AMQP or HTTP
themselves. A temporary problem raises ``Retry`` (the message comes back through a delay queue), a
message that can never be handled raises ``Reject``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.dispatcher import actions, batches, receipts, transactional
from services.dispatcher.adapters import Adapters
from shared.events import DeliveryBatch, Message, Recipient, TransactionalMessage
from shared.messaging import Delivery as AmqpDelivery


@dataclass
class Dispatcher(Adapters):
    """The adapters, and an entry for each thing the dispatcher consumes."""

    async def handle_action_event(self, message: Message, delivery: AmqpDelivery) -> None:
        await actions.handle_action_event(self, message, delivery)

    async def handle_batch(self, batch: DeliveryBatch, delivery: AmqpDelivery) -> None:
        await batches.handle_batch(self, batch, delivery)

    async def send_held(
        self,
        *,
        action_id: str,
        message_kind: str,
        token: str,
        rows: Sequence[tuple[int, Recipient]],
        last_try: frozenset[int] = frozenset(),
    ) -> None:
        await batches.send_held(
            self,
            action_id=action_id,
            message_kind=message_kind,
            token=token,
            rows=rows,
            last_try=last_try,
        )

    async def handle_transactional(
        self, message: TransactionalMessage, delivery: AmqpDelivery
    ) -> None:
        await transactional.handle_transactional(self, message, delivery)

    async def record_receipt(self, message_sid: str, status: str, error_code: str | None) -> bool:
        return await receipts.record_receipt(self, message_sid, status, error_code)
