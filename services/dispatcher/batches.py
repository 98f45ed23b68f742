"""dispatcher.batches: a page of an urgent action's audience (or a follow-up's). Who gets it now,
who waits (quiet hours, digests, an alert still on its way), who never; claim, then send."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from rendering.renderer import FollowUpText, UrgentActionText
from services.dispatcher import ledger, metrics
from services.dispatcher.adapters import Adapters
from services.dispatcher.models import (
    ACTION_CLOSED,
    CANCELLED,
    FAILED,
    HELD_STATES,
    RETRY,
    SCHEDULED,
    SENDING,
    ActionMessage,
    DispatchAction,
)
from services.dispatcher.schedule import FOLLOW_UP_GAP, held_until
from services.dispatcher.sending import BatchContext, send_all
from shared.events import (
    ActionContent,
    DeliveryBatch,
    Recipient,
    Target,
    UpdateContent,
)
from shared.messaging import Delivery as AmqpDelivery
from shared.messaging import Reject, Retry, queue_spec

log = logging.getLogger(__name__)


MESSAGE_KIND = re.compile(r"^(alert|closed|update:[0-9a-fA-F-]{36})$")


BATCH_RETRIES = queue_spec("dispatcher.batches").retry_delays


async def handle_batch(dispatcher: Adapters, batch: DeliveryBatch, delivery: AmqpDelivery) -> None:
    kind = batch.message_kind
    if not MESSAGE_KIND.match(kind):
        raise Reject(f"unknown message kind {kind[:40]!r}")
    if dispatcher.stopping:
        raise Retry("dispatcher stopping", delay=ledger.STOPPING_DELAY, defer=True)
    action_id = str(batch.action_id)
    recipients = ledger.unique_recipients(batch.recipients)
    if not recipients:
        return
    async with dispatcher.sessionmaker() as session, session.begin():
        action = await session.get(DispatchAction, action_id)
        if action is None:
            raise Retry("action not known yet")
        alert, follow_up = await _texts(session, action, kind)
        nothing_to_say = follow_up is not None and not follow_up.content
        if (action.status == ACTION_CLOSED and kind != "closed") or nothing_to_say:
            cancelled = await ledger.cancel(
                session, action_id=action_id, message_kind=kind, recipients=recipients
            )
            for r in recipients:
                metrics.CANCELLED.labels(r.channel).inc()
            log.info(
                "batch cancelled",
                extra={"action_id": action_id, "kind": kind, "pending_cancelled": cancelled},
            )
            return
        alerts = None
        behind = 0
        if kind != "alert":
            alerts = await ledger.alert_states(
                session, action_id=action_id, keys=map(ledger.key_of, recipients)
            )
            # An alert still being sent or waiting for a retry goes first: this batch comes
            # back (through the delay queue) for those recipients, as for rows held elsewhere.
            pending = {k for k, (state, _) in alerts.items() if state in (SENDING, RETRY)}
            if pending:
                before = len(recipients)
                recipients = [r for r in recipients if ledger.key_of(r) not in pending]
                behind = before - len(recipients)
        recipients, holds, unreached = _split_held(dispatcher, action, kind, recipients, alerts)
        if unreached:
            await ledger.cancel(
                session, action_id=action_id, message_kind=kind, recipients=unreached
            )
        held_busy = 0
        if holds:
            held_busy = await ledger.hold(
                session, action_id=action_id, message_kind=kind, holds=holds
            )
        claim = await ledger.claim(
            session, action_id=action_id, message_kind=kind, recipients=recipients
        )
        claim.busy += held_busy + behind
    # The claims are committed: from here a crash leaves rows ``sending`` (lease), never
    # a second copy sent by a redelivered batch.
    mine = [r for r in recipients if ledger.key_of(r) in claim.mine]
    context = BatchContext(
        action_id,
        kind,
        alert,
        follow_up,
        claim,
        reference=action.reference,
        batch_id=str(batch.message_id),
        created_at=batch.occurred_at,
    )
    retrying = await send_all(dispatcher, context, mine)
    if context.released:
        # Stopping: the rest is for the next process (or another dispatcher), at once.
        raise Retry(
            f"dispatcher stopping: {context.released} left to send",
            delay=ledger.STOPPING_DELAY,
            defer=True,
        )
    temporary = sum(retrying.values())
    log.info(
        "batch handled",
        extra={
            "action": action.reference,
            "action_id": action_id,
            "kind": kind,
            "batch_id": context.batch_id,
            "attempt": delivery.attempt,
            "claimed": len(mine),
            "already_done": claim.done,
            "held": len(holds),
            "held_elsewhere": claim.busy,
            "temporary": temporary,
        },
    )
    if temporary or claim.busy:
        if delivery.attempt >= len(BATCH_RETRIES):
            # The broker dead-letters it now; its rows stay ``retry`` for a replay.
            for channel, count in retrying.items():
                metrics.DEAD_LETTERED.labels(channel).inc(count)
        raise Retry(f"{temporary} temporary failures, {claim.busy} held elsewhere")


def _split_held(
    dispatcher: Adapters,
    action: DispatchAction,
    kind: str,
    recipients: Sequence[Recipient],
    alerts: dict[ledger.Key, tuple[str, datetime | None]] | None = None,
) -> tuple[list[Recipient], list[ledger.Hold], list[Recipient]]:
    """Who gets it now, who waits (quiet hours, daily digest: see ``schedule``), and who
    never gets it.

    A follow-up goes only where its alert went (``alerts``: the alert rows' states). One
    whose alert is still held (tonight's SMS, tomorrow's digest) waits until just after
    it; one whose alert was cancelled or failed is not sent: that person never had the
    action, so an update or outcome about it would make no sense to them.
    """
    now = dispatcher.clock()
    at_once: list[Recipient] = []
    holds: list[ledger.Hold] = []
    unreached: list[Recipient] = []
    for recipient in recipients:
        wait = held_until(recipient, urgency=action.urgency, message_kind=kind, now=now)
        status, alert_due = (alerts or {}).get(ledger.key_of(recipient), (None, None))
        if status in (CANCELLED, FAILED):
            unreached.append(recipient)
        elif status in HELD_STATES:
            due = max(alert_due or now, wait[1] if wait else now) + FOLLOW_UP_GAP
            holds.append(ledger.Hold(recipient, SCHEDULED, due))
        elif wait is None:
            at_once.append(recipient)
        else:
            holds.append(ledger.Hold(recipient, *wait))
    return at_once, holds, unreached


async def send_held(
    dispatcher: Adapters,
    *,
    action_id: str,
    message_kind: str,
    token: str,
    rows: Sequence[tuple[int, Recipient]],
    last_try: frozenset[int] = frozenset(),
) -> None:
    """Send held rows the scheduler has claimed (with ``token``) like a batch would;
    ``last_try``: the row ids whose temporary failure now counts as failed."""
    async with dispatcher.sessionmaker() as session:
        action = await session.get(DispatchAction, action_id)
        assert action is not None  # held rows are only made for known actions
        alert, follow_up = await _texts(session, action, message_kind)
    claim = ledger.Claim(token, mine={ledger.key_of(r): row_id for row_id, r in rows})
    context = BatchContext(
        action_id,
        message_kind,
        alert,
        follow_up,
        claim,
        reference=action.reference,
        batch_id=f"held:{token}",
        closed=action.status == ACTION_CLOSED and message_kind != "closed",
        held=True,
        last_try=last_try,
    )
    await send_all(dispatcher, context, [r for _, r in rows])


async def _texts(
    session: AsyncSession, action: DispatchAction, kind: str
) -> tuple[UrgentActionText | None, FollowUpText | None]:
    """What to render for ``kind`` of this action: the alert, or a follow-up."""
    if kind == "alert":
        return _alert_text(action), None
    message = await session.get(ActionMessage, (action.id, kind))
    if message is None:
        raise Retry("follow-up not known yet")
    return None, _follow_up_text(action, message)


def _alert_text(action: DispatchAction) -> UrgentActionText:
    return UrgentActionText(
        reference=action.reference,
        default_language=action.default_language,
        content={lang: ActionContent.model_validate(c) for lang, c in action.content.items()},
        targets=[Target.model_validate(t) for t in action.targets],
        deadline=action.deadline,
    )


def _follow_up_text(action: DispatchAction, message: ActionMessage) -> FollowUpText:
    return FollowUpText(
        reference=action.reference,
        default_language=message.default_language,
        content={lang: UpdateContent.model_validate(c) for lang, c in message.content.items()},
    )
