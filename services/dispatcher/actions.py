"""dispatcher.actions: what the dispatcher keeps of each urgent action (content, targets,
follow-ups, its close) and of each erasure, so that sending needs no other service."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncSession

from services.dispatcher import ledger
from services.dispatcher.adapters import Adapters
from services.dispatcher.letters import retarget
from services.dispatcher.models import (
    ACTION_CLOSED,
    ACTION_OPEN,
    ActionMessage,
    DispatchAction,
    ProcessedMessage,
)
from shared.db import already_processed
from shared.events import (
    ActionClosed,
    ActionPublished,
    ActionTargetsChanged,
    ActionUpdated,
    Message,
    SubscriberErased,
)
from shared.messaging import Delivery as AmqpDelivery
from shared.messaging import Reject, Retry

log = logging.getLogger(__name__)


async def handle_action_event(
    dispatcher: Adapters, message: Message, delivery: AmqpDelivery
) -> None:
    async with dispatcher.sessionmaker() as session, session.begin():
        if isinstance(message, (ActionClosed, ActionTargetsChanged)):
            # Checked before marking the message processed: a retry must find it unmarked.
            if await session.get(DispatchAction, str(message.action_id)) is None:
                raise Retry("action not known yet")
        if await already_processed(session, ProcessedMessage, message.message_id):
            return
        if isinstance(message, ActionPublished):
            await _action_published(session, message)
        elif isinstance(message, ActionUpdated):
            await _action_updated(session, message)
        elif isinstance(message, ActionClosed):
            await _action_closed(session, message)
        elif isinstance(message, ActionTargetsChanged):
            await _action_targets_changed(session, message)
        elif isinstance(message, SubscriberErased):
            await ledger.forget_subscriber(session, str(message.subscriber_id), message.addresses)
        else:
            raise Reject(f"unexpected message {type(message).__name__}")


async def _action_published(session: AsyncSession, event: ActionPublished) -> None:
    if await session.get(DispatchAction, str(event.action_id)) is not None:
        return
    session.add(
        DispatchAction(
            id=str(event.action_id),
            reference=event.reference,
            title=event.title,
            urgency=event.urgency,
            channels=list(event.channels),
            default_language=event.default_language,
            content={lang: c.model_dump() for lang, c in event.content.items()},
            targets=[t.model_dump() for t in event.targets],
            deadline=event.deadline,
            status=ACTION_OPEN,
            published_at=event.published_at,
        )
    )


async def _action_updated(session: AsyncSession, event: ActionUpdated) -> None:
    kind = f"update:{event.update_id}"
    if await session.get(ActionMessage, (str(event.action_id), kind)) is not None:
        return
    session.add(
        ActionMessage(
            action_id=str(event.action_id),
            message_kind=kind,
            kind=event.kind,
            outcome=event.outcome,
            default_language=event.default_language,
            content={lang: c.model_dump() for lang, c in event.content.items()},
        )
    )


async def _action_closed(session: AsyncSession, event: ActionClosed) -> None:
    action = await session.get(DispatchAction, str(event.action_id))
    assert action is not None  # checked by the caller
    action.status = ACTION_CLOSED
    action.closed_at = event.occurred_at
    if await session.get(ActionMessage, (action.id, "closed")) is None:
        session.add(
            ActionMessage(
                action_id=action.id,
                message_kind="closed",
                kind="outcome",
                outcome=event.outcome,
                default_language=event.default_language,
                content={lang: c.model_dump() for lang, c in (event.content or {}).items()},
            )
        )
    cancelled = await ledger.cancel_pending_for_action(session, action.id)
    if cancelled:
        log.info("cancelled pending deliveries", extra={"action_id": action.id, "count": cancelled})


async def _action_targets_changed(session: AsyncSession, event: ActionTargetsChanged) -> None:
    action = await session.get(DispatchAction, str(event.action_id))
    assert action is not None  # checked by the caller
    cancelled = await retarget(session, action, [t.model_dump() for t in event.targets])
    log.info(
        "action targets changed",
        extra={"action_id": action.id, "letters_readdressed": cancelled},
    )
