"""What the subscriptions service does with the messages it consumes.

Queues: ``subscriptions.actions`` (ActionPublished, ActionUpdated, ActionClosed) and
``subscriptions.suppressions`` (RecipientSuppressed). Emits, through its outbox: DeliveryBatch,
AudienceCounted, TransactionalMessage and ResponseRecorded.

Long fan-outs span many transactions, so a message id is recorded as processed only once the work
is finished; until then a redelivery resumes from the progress rows.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions import audience, store
from services.subscriptions.links import Links
from services.subscriptions.models import (
    ActionUpdate,
    KnownAction,
    ProcessedMessage,
    Subscriber,
)
from services.subscriptions.pacing import Pacer, Unpaced
from services.subscriptions.subscriber_events import channel_stopped
from services.subscriptions.subscribers import Origin, unsubscribe
from shared import events
from shared.db import already_processed, utcnow
from shared.messaging import Delivery, Reject, Retry

log = logging.getLogger(__name__)


async def _seen(session: AsyncSession, message_id: uuid.UUID) -> bool:
    return await session.get(ProcessedMessage, str(message_id)) is not None


@dataclass
class SubscriptionHandlers:
    sessionmaker: async_sessionmaker[AsyncSession]
    links: Links
    notify: audience.Notify
    page_size: int = audience.PAGE_SIZE
    # The dispatchers' pace (pacing.py); unpaced where no broker is (tests of the loop alone).
    pace: Pacer = field(default_factory=Unpaced)

    async def on_action_event(self, message: events.Message, delivery: Delivery) -> None:
        if isinstance(message, events.ActionPublished):
            await self.action_published(message)
        elif isinstance(message, events.ActionUpdated):
            await self.action_updated(message)
        elif isinstance(message, events.ActionClosed):
            await self.action_closed(message)
        elif isinstance(message, events.ActionTargetsChanged):
            await self.action_targets_changed(message)
        else:
            raise Reject(f"unexpected {type(message).__name__} on {delivery.queue}")

    async def _mark_processed(self, message_id: uuid.UUID) -> None:
        async with self.sessionmaker() as session, session.begin():
            await already_processed(session, ProcessedMessage, message_id)

    async def action_published(self, event: events.ActionPublished) -> None:
        async with self.sessionmaker() as session, session.begin():
            if await _seen(session, event.message_id):
                return
            if await session.get(KnownAction, event.action_id) is None:
                session.add(
                    KnownAction(
                        id=event.action_id,
                        reference=event.reference,
                        title=event.title,
                        status="published",
                        urgency=event.urgency,
                        channels=list(event.channels),
                        default_language=event.default_language,
                        audience=event.audience.model_dump(mode="json"),
                        targets=[t.model_dump(mode="json") for t in event.targets],
                        content={k: v.model_dump(mode="json") for k, v in event.content.items()},
                        deadline=event.deadline,
                        published_at=event.published_at,
                    )
                )
                await session.flush()
            await audience.start_progress(session, event.action_id, audience.ALERT)
        await audience.resolve_audience(
            sessionmaker=self.sessionmaker,
            links=self.links,
            action_id=event.action_id,
            notify=self.notify,
            page_size=self.page_size,
            pace=self.pace,
        )
        await self._mark_processed(event.message_id)

    async def _store_update(
        self,
        session: AsyncSession,
        *,
        update_id: uuid.UUID,
        action_id: uuid.UUID,
        message_kind: str,
        kind: str,
        outcome: str | None,
        content: dict[str, events.UpdateContent],
        default_language: str,
    ) -> None:
        if await session.get(ActionUpdate, update_id) is None:
            session.add(
                ActionUpdate(
                    id=update_id,
                    action_id=action_id,
                    message_kind=message_kind,
                    kind=kind,
                    outcome=outcome,
                    content={k: v.model_dump(mode="json") for k, v in content.items()},
                    default_language=default_language,
                    created_at=utcnow(),
                )
            )

    async def action_updated(self, event: events.ActionUpdated) -> None:
        kind = audience.update_kind(event.update_id)
        async with self.sessionmaker() as session, session.begin():
            if await _seen(session, event.message_id):
                return
            if await session.get(KnownAction, event.action_id) is None:
                raise Retry("action not known yet")
            if not await audience.is_finished(session, event.action_id, audience.ALERT):
                # A follow-up goes to everyone who got the alert: wait until all of them have.
                raise Retry("alert still going out")
            await self._store_update(
                session,
                update_id=event.update_id,
                action_id=event.action_id,
                message_kind=kind,
                kind=event.kind,
                outcome=event.outcome,
                content=event.content,
                default_language=event.default_language,
            )
        await audience.send_follow_up(
            sessionmaker=self.sessionmaker,
            links=self.links,
            action_id=event.action_id,
            message_kind=kind,
            languages=event.content,
            default_language=event.default_language,
            notify=self.notify,
            page_size=self.page_size,
            pace=self.pace,
        )
        await self._mark_processed(event.message_id)

    async def action_targets_changed(self, event: events.ActionTargetsChanged) -> None:
        """The action page shows the targets as staff last set them."""
        async with self.sessionmaker() as session, session.begin():
            action = await session.get(KnownAction, event.action_id)
            if action is None:
                raise Retry("action not known yet")  # checked before marking it processed
            if await already_processed(session, ProcessedMessage, event.message_id):
                return
            action.targets = [t.model_dump(mode="json") for t in event.targets]

    async def action_closed(self, event: events.ActionClosed) -> None:
        async with self.sessionmaker() as session, session.begin():
            if await _seen(session, event.message_id):
                return
            action = await session.get(KnownAction, event.action_id)
            if action is None:
                raise Retry("action not known yet")
            if action.status != "closed":
                action.status = "closed"
                action.outcome = event.outcome
                action.closed_at = event.occurred_at
            if event.content:
                await self._store_update(
                    session,
                    update_id=event.update_id,
                    action_id=event.action_id,
                    message_kind=audience.CLOSED,
                    kind="outcome",
                    outcome=event.outcome,
                    content=event.content,
                    default_language=event.default_language,
                )
        if event.content:
            async with self.sessionmaker() as session:
                alert_done = await audience.is_finished(session, event.action_id, audience.ALERT)
            if not alert_done:
                # The close is committed: the alert's fan-out stops at its next page.
                raise Retry("alert still stopping")
            await audience.send_follow_up(
                sessionmaker=self.sessionmaker,
                links=self.links,
                action_id=event.action_id,
                message_kind=audience.CLOSED,
                languages=event.content,
                default_language=event.default_language,
                notify=self.notify,
                page_size=self.page_size,
                pace=self.pace,
            )
        await self._mark_processed(event.message_id)

    async def on_recipient_suppressed(
        self, event: events.RecipientSuppressed, delivery: Delivery
    ) -> None:
        async with self.sessionmaker() as session, session.begin():
            if await already_processed(session, ProcessedMessage, event.message_id):
                return
            subscriber: Subscriber | None = None
            if event.subscriber_id is not None:
                subscriber = await store.subscriber_by_public_id(session, event.subscriber_id)
            # No address: a late bounce or complaint tied to its message, so the subscriber's
            # own address (the report's could be anyone's). Erased since: nothing to suppress.
            address = event.address or (subscriber.address(event.channel) if subscriber else None)
            if not address:
                log.info("suppression without an address to apply it to")
                return
            event = event.model_copy(update={"address": address})
            await store.suppress(
                session, channel=event.channel, address=event.address, reason=event.reason
            )
            # The address now reads as bouncing (or unsubscribed) to OSDI clients.
            await store.touch_subscribers_with(session, [event.address])
            if subscriber is None:
                found = await store.subscribers_by_address(
                    session,
                    email=event.address if event.channel == "email" else None,
                    phone=event.address if event.channel == "sms" else None,
                )
                subscriber = found[0] if found else None
            if (
                subscriber is not None
                and subscriber.address(event.channel) == event.address
                and event.reason == "complaint"
            ):
                # They reported our mail as spam: no more email, and the consent record says why.
                await unsubscribe(
                    session=session,
                    subscriber=subscriber,
                    channel=event.channel,
                    origin=Origin("feedback", reason="complaint"),
                    reason="complaint",
                )
            elif (
                subscriber is not None
                and subscriber.address(event.channel) == event.address
                and event.reason == "opted_out"
            ):
                # The person said STOP (or complained): that channel is off until they opt in.
                await unsubscribe(
                    session=session,
                    subscriber=subscriber,
                    channel=event.channel,
                    origin=Origin("sms" if event.channel == "sms" else "api"),
                    reason="opted_out",
                )
            elif (
                subscriber is not None
                and subscriber.address(event.channel) == event.address
                and event.reason == "hard_bounce"
            ):
                # A hard bounce leaves consent as it was: the suppression alone keeps it quiet.
                # A CRM still hears that the channel no longer reaches them.
                channel_stopped(session, subscriber, event.channel, "hard_bounce")
        log.info(
            "recipient suppressed",
            extra={"channel": event.channel, "reason": event.reason, "known": bool(subscriber)},
        )
