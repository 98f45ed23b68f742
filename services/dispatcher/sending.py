"""Sending what a batch (or the scheduler) claimed: workers, one send each, outcomes committed as
they come (group commit), the claim lease kept alive, a close or a stop noticed mid-way."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select

from rendering.renderer import (
    FollowUpText,
    InvalidAddress,
    PreparedEmail,
    RecipientFill,
    UrgentActionText,
    pick_language,
)
from rendering.segments import segment_count
from services.dispatcher import ledger, metrics
from services.dispatcher.adapters import Adapters
from services.dispatcher.identity import MessageRef
from services.dispatcher.models import (
    ACTION_CLOSED,
    FAILED,
    RETRY,
    SCHEDULED,
    SENT,
    DispatchAction,
)
from services.dispatcher.schedule import HELD_RETRY_DELAY
from services.dispatcher.senders import SendResult
from shared.db import utcnow
from shared.events import (
    Channel,
    DeliveriesReported,
    Message,
    Recipient,
    RecipientSuppressed,
)

log = logging.getLogger(__name__)


# Tries to record outcomes that already happened before giving up on the batch.
RECORD_ATTEMPTS = 5


class _Stopped(Exception):
    """Raised before a send that must not start because the process is stopping."""


@dataclass(frozen=True)
class SendOutcome:
    recipient: Recipient
    result: SendResult
    segments: int | None = None


@dataclass
class BatchContext:
    """One handling of one batch: what to render, and the messages rendered so far."""

    action_id: str
    message_kind: str
    alert: UrgentActionText | None
    follow_up: FollowUpText | None
    claim: ledger.Claim
    # For logs and the lag metric: the action's reference, the batch's message id (the
    # delivery id that ties log lines together) and when subscriptions created the batch.
    reference: str = ""
    batch_id: str = ""
    created_at: datetime | None = None
    # Set when the action is found closed mid-batch: the claimed rest is cancelled.
    closed: bool = False
    # Held rows released by the scheduler: a temporary failure goes back to it (no batch will).
    held: bool = False
    # Of those held rows, the ones on their last try: a temporary failure now is final.
    last_try: frozenset[int] = frozenset()
    # Serializes this handling's own writes to its rows (records, lease renewals).
    writing: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Claimed rows given back unsent because the process is stopping.
    released: int = 0
    emails: dict[tuple[str, bool, bool], PreparedEmail] = field(default_factory=dict)
    # Ledger ids whose outcome is committed: their lease needs no renewal any more.
    recorded: set[int] = field(default_factory=set)


async def send_all(
    dispatcher: Adapters, context: BatchContext, recipients: Sequence[Recipient]
) -> Counter[str]:
    """Send to every claimed recipient and record each outcome right after it; count the
    temporary failures.

    Outcomes are committed back to back (group commit): each commit takes what was accepted
    while the previous one ran. A send holds a slot of the process's in-doubt window from
    before it starts until its outcome is committed, so a crash leaves at most
    ``IN_DOUBT_LIMIT`` messages accepted but still ``sending`` (the one unavoidable ambiguity),
    whatever the rate or the distance to the relay. The rows still held keep their lease
    renewed until their outcome is written.
    """
    temporary: Counter[str] = Counter()
    if not recipients:
        return temporary
    results: asyncio.Queue[SendOutcome | None] = asyncio.Queue()
    pending = iter(recipients)

    in_doubt = dispatcher.in_doubt
    holding = 0  # slots of the in-doubt window this handling holds (released once recorded)

    def release(count: int) -> None:
        nonlocal holding
        holding -= count
        for _ in range(count):
            in_doubt.release()

    async def worker() -> None:
        nonlocal holding
        try:
            for recipient in pending:
                if context.closed or dispatcher.stopping:
                    # The action closed meanwhile: what has not gone out stays home.
                    # Stopping: it is left, claimed, for release_claimed below.
                    break
                await in_doubt.acquire()
                holding += 1
                try:
                    outcome = await _send_one(dispatcher, context, recipient)
                except _Stopped:
                    release(1)
                    break
                except Exception:  # noqa: BLE001 - one bad recipient must not stall the rest
                    log.exception(
                        "sending failed unexpectedly",
                        extra={"action": context.reference, "batch_id": context.batch_id},
                    )
                    outcome = SendOutcome(recipient, SendResult.temporary("internal"))
                await results.put(outcome)
        finally:
            await results.put(None)  # this worker is done

    workers = [
        asyncio.create_task(worker()) for _ in range(min(dispatcher.concurrency, len(recipients)))
    ]
    renewal = asyncio.create_task(_renew_lease(dispatcher, context))
    finished = 0
    try:
        while finished < len(workers):
            taken = [await results.get()]
            while not results.empty():
                taken.append(results.get_nowait())
            outcomes = [o for o in taken if o is not None]
            finished += len(taken) - len(outcomes)
            if outcomes:
                try:
                    temporary.update(await _record_surely(dispatcher, context, outcomes))
                finally:
                    release(len(outcomes))
    finally:
        renewal.cancel()
        for task in workers:
            task.cancel()
        await asyncio.gather(renewal, *workers, return_exceptions=True)
        release(holding)  # cancelled mid-way: the process is going; never starve the others
    if dispatcher.stopping and not context.closed:
        async with context.writing, dispatcher.sessionmaker() as session, session.begin():
            context.released = await ledger.release_claimed(session, token=context.claim.token)
        if context.released:
            log.info(
                "stopping: unsent recipients left for the next process",
                extra={
                    "action": context.reference,
                    "batch_id": context.batch_id,
                    "released": context.released,
                },
            )
    if context.closed:
        async with dispatcher.sessionmaker() as session, session.begin():
            cancelled = await ledger.cancel_claimed(session, token=context.claim.token)
        for channel in cancelled:
            metrics.CANCELLED.labels(channel).inc()
        log.info(
            "action closed while sending: the rest cancelled",
            extra={
                "action": context.reference,
                "batch_id": context.batch_id,
                "cancelled": len(cancelled),
            },
        )
    return temporary


async def _record_surely(
    dispatcher: Adapters, context: BatchContext, outcomes: Sequence[SendOutcome]
) -> Counter[str]:
    """Record outcomes that already happened: a database hiccup (a deadlock, a failover)
    must not turn messages that went out into rows that get sent again."""
    for attempt in range(RECORD_ATTEMPTS):
        try:
            async with context.writing:
                return await _record(dispatcher, context, outcomes)
        except asyncio.CancelledError:
            raise
        except Exception:
            if attempt == RECORD_ATTEMPTS - 1:
                raise
            log.warning(
                "recording outcomes failed; trying again",
                extra={"action": context.reference, "batch_id": context.batch_id},
                exc_info=True,
            )
            await asyncio.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


async def _renew_lease(dispatcher: Adapters, context: BatchContext) -> None:
    """Keep this handling's claims alive while it sends (see ``ledger.CLAIM_LEASE``), and
    notice when the action is closed (by whichever dispatcher heard of it)."""
    while True:
        await asyncio.sleep(ledger.LEASE_RENEWAL)
        try:
            # Never beside a record of the same rows: two transactions of one handling
            # locking the same rows in different orders deadlock on PostgreSQL.
            async with context.writing, dispatcher.sessionmaker() as session, session.begin():
                # Only the rows still out: a batch in flight for seconds has most of its
                # outcomes written, and renewing all 500 every second was 6% of the dispatcher.
                ids = [i for i in context.claim.mine.values() if i not in context.recorded]
                if ids:
                    await ledger.renew(session, token=context.claim.token, ids=ids)
                if context.message_kind != "closed":
                    status = await session.scalar(
                        select(DispatchAction.status).where(DispatchAction.id == context.action_id)
                    )
                    context.closed = status == ACTION_CLOSED
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - a missed renewal is retried; the lease has slack
            log.warning(
                "lease renewal failed",
                extra={"action": context.reference, "batch_id": context.batch_id},
            )


async def _send_one(
    dispatcher: Adapters, context: BatchContext, recipient: Recipient
) -> SendOutcome:
    if recipient.channel == "email":
        ref = MessageRef.delivery(context.claim.mine[ledger.key_of(recipient)])
        try:
            message = _email_for(dispatcher, context, recipient, ref)
        except InvalidAddress:
            return SendOutcome(recipient, SendResult.failed("invalid_address"))
        await dispatcher.email_rate.acquire(1)
        if dispatcher.stopping:
            raise _Stopped  # the rate limit held it back until after SIGTERM: not sent
        result = await dispatcher.email.send(
            dispatcher.envelope_for(ref), recipient.address, message
        )
        return SendOutcome(recipient, result)
    if context.alert is not None:
        body = dispatcher.renderer.alert_sms(context.alert, recipient.language, recipient.act_url)
    else:
        assert context.follow_up is not None
        body = dispatcher.renderer.follow_up_sms(
            context.follow_up, recipient.language, recipient.act_url
        )
    segments = segment_count(body)
    await dispatcher.sms_lane.alert(segments)
    if dispatcher.stopping:
        raise _Stopped
    return SendOutcome(recipient, await dispatcher.sms.send(recipient.address, body), segments)


def _email_for(
    dispatcher: Adapters, context: BatchContext, recipient: Recipient, ref: MessageRef
) -> bytes:
    text = context.alert or context.follow_up
    assert text is not None
    language = pick_language(recipient.language, text.content, text.default_language)
    key = (language, recipient.act_url is not None, recipient.preferences_url is not None)
    prepared = context.emails.get(key)
    if prepared is None:
        # Rendered once per language and link shape, then shared by the whole batch.
        if context.alert is not None:
            prepared = dispatcher.renderer.alert_email(
                context.alert, language, has_act=key[1], has_preferences=key[2]
            )
        else:
            assert context.follow_up is not None
            prepared = dispatcher.renderer.follow_up_email(
                context.follow_up, language, has_act=key[1], has_preferences=key[2]
            )
        context.emails[key] = prepared
    fill = RecipientFill(
        to=recipient.address,
        greeting=dispatcher.renderer.greeting(language, recipient.name),
        act_url=recipient.act_url,
        unsubscribe_url=recipient.unsubscribe_url,
        preferences_url=recipient.preferences_url,
    )
    return prepared.build(fill, now=utcnow(), message_id=dispatcher.message_tags.message_id(ref))


async def _record(
    dispatcher: Adapters, context: BatchContext, outcomes: Sequence[SendOutcome]
) -> Counter[str]:
    """Write these outcomes and their events in one transaction; temporary ones by channel."""
    now = utcnow()
    updates: list[dict[str, Any]] = []
    counts: dict[Channel, list[int]] = {}
    suppressions: list[RecipientSuppressed] = []
    temporary: Counter[str] = Counter()
    for outcome in outcomes:
        recipient, result = outcome.recipient, outcome.result
        # Every row has the same keys: one executemany of one cached statement.
        row: dict[str, Any] = {
            "row_id": context.claim.mine[ledger.key_of(recipient)],
            "claim_token": None,
            "updated_at": now,
            "error_code": result.error_code,
            "segments": outcome.segments,
            "provider_message_id": None,
            "sent_at": None,
            # A held row keeps its recipient only while it waits.
            "not_before": None,
            "held": None,
        }
        tally = counts.setdefault(recipient.channel, [0, 0])
        if result.outcome == "sent":
            row |= {
                "status": SENT,
                "provider_message_id": result.provider_message_id,
                "sent_at": now,
            }
            tally[0] += 1
        elif result.outcome == "failed":
            row["status"] = FAILED
            tally[1] += 1
            if result.suppress:
                suppressions.append(
                    RecipientSuppressed(
                        subscriber_id=recipient.subscriber_id,
                        channel=recipient.channel,
                        address=recipient.address,
                        reason=result.suppress,
                    )
                )
        elif context.held and row["row_id"] in context.last_try:
            # Held SMS have no dead-letter queue behind them: give up here, counted failed.
            row["status"] = FAILED
            row["error_code"] = result.error_code or "gave_up"
            tally[1] += 1
        elif context.held:
            # Back to the scheduler, which checks the quiet hours again when it is due.
            row |= {
                "status": SCHEDULED,
                "not_before": dispatcher.clock() + HELD_RETRY_DELAY,
                "held": recipient.model_dump(mode="json"),
            }
            metrics.RETRIED.labels(recipient.channel).inc()
        else:
            # With a due time, like every row that waits: a close finds it by its index.
            row |= {"status": RETRY, "not_before": now}
            temporary[recipient.channel] += 1
            metrics.RETRIED.labels(recipient.channel).inc()
        updates.append(row)
    # Once per channel, not per message (labels() is a lock and a lookup). Every message of
    # one record has the same lag: its batch's age now.
    lag = max((now - context.created_at).total_seconds(), 0.0) if context.created_at else None
    for channel, (sent, failed) in counts.items():
        metrics.SENT.labels(channel).inc(sent)
        metrics.FAILED.labels(channel).inc(failed)
        if lag is not None:
            observe = metrics.LAG.labels(channel).observe
            for _ in range(sent):
                observe(lag)
    reports: list[Message] = [
        DeliveriesReported(
            action_id=context.action_id,
            message_kind=context.message_kind,
            channel=channel,
            sent=sent,
            failed=failed,
        )
        for channel, (sent, failed) in sorted(counts.items())
        if sent or failed
    ]
    # In id order, like every other writer: no lock-order deadlock on PostgreSQL.
    updates.sort(key=lambda row: int(row["row_id"]))
    # With the outcomes other batches hand in meanwhile, in one commit.
    await dispatcher.outcomes.commit(updates, [*reports, *suppressions])
    context.recorded.update(int(row["row_id"]) for row in updates)
    return temporary
