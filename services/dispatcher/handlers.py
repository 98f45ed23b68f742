"""What the dispatcher does with each message it consumes, and with each delivery receipt.

Handlers take a message and the adapters (``Dispatcher`` holds them); they never talk AMQP or HTTP
themselves. A temporary problem raises ``Retry`` (the message comes back through a delay queue), a
message that can never be handled raises ``Reject``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parseaddr
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rendering.renderer import (
    FollowUpText,
    InvalidAddress,
    PreparedEmail,
    RecipientFill,
    Renderer,
    UrgentActionText,
    clean_text,
    header_safe,
    pick_language,
)
from rendering.segments import segment_count
from services.dispatcher import ledger, metrics
from services.dispatcher.identity import MessageRef, MessageTags
from services.dispatcher.letters import retarget
from services.dispatcher.models import (
    ACTION_CLOSED,
    ACTION_OPEN,
    CANCELLED,
    DELIVERED,
    FAILED,
    FINAL_STATES,
    HELD_STATES,
    RETRY,
    SCHEDULED,
    SENDING,
    SENT,
    ActionMessage,
    Delivery,
    DispatchAction,
    Outbox,
    ProcessedMessage,
    TransactionalDelivery,
)
from services.dispatcher.schedule import (
    FOLLOW_UP_GAP,
    HELD_RETRY_DELAY,
    Clock,
    held_until,
    system_clock,
)
from services.dispatcher.senders import EmailSender, SendResult, SmsSender
from services.dispatcher.throttle import RateLimiter
from shared.db import already_processed, outbox_row, utcnow
from shared.events import (
    ActionClosed,
    ActionContent,
    ActionPublished,
    ActionTargetsChanged,
    ActionUpdated,
    Channel,
    DeliveriesReported,
    DeliveryBatch,
    DeliveryStatusChanged,
    Message,
    Recipient,
    RecipientSuppressed,
    SubscriberErased,
    Target,
    TransactionalMessage,
    UpdateContent,
)
from shared.messaging import Delivery as AmqpDelivery
from shared.messaging import Reject, Retry, queue_spec

log = logging.getLogger(__name__)

MESSAGE_KIND = re.compile(r"^(alert|closed|update:[0-9a-fA-F-]{36})$")
# Tries to record outcomes that already happened before giving up on the batch.
RECORD_ATTEMPTS = 5
BATCH_RETRIES = queue_spec("dispatcher.batches").retry_delays
# Twilio's final statuses and what they mean for the ledger.
RECEIPT_STATUS = {"delivered": DELIVERED, "undelivered": FAILED, "failed": FAILED}
# Which channel each transactional template goes by.
TEMPLATE_CHANNEL: dict[str, Channel] = {
    "confirm_email": "email",
    "confirm_sms": "sms",
    "sms_reply": "sms",
}


class _Stopped(Exception):
    """Raised before a send that must not start because the process is stopping."""


@dataclass(frozen=True)
class SendOutcome:
    recipient: Recipient
    result: SendResult
    segments: int | None = None


@dataclass
class _BatchContext:
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


@dataclass
class Dispatcher:
    sessionmaker: async_sessionmaker[AsyncSession]
    email: EmailSender
    sms: SmsSender
    renderer: Renderer
    email_rate: RateLimiter
    sms_rate: RateLimiter
    # Wakes the outbox relay after a commit.
    notify: Callable[[], None] = lambda: None
    # Sends in flight per batch (the SMTP pool bounds the whole process): UANET_SMTP_CONCURRENCY.
    concurrency: int = 16
    # "Now" for quiet hours and digests (tests set it); leases and stamps use the real time.
    clock: Clock = system_clock
    # Message-IDs and VERP senders (the app passes the secret and UANET_BOUNCE_ADDRESS).
    tags: MessageTags | None = None

    # Set on SIGTERM: no new batch, no new send; what is in flight finishes and is recorded.
    stopping: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.tags is None:
            self.tags = MessageTags(None, domain=self.renderer.message_id_domain)

    def stop_taking_work(self) -> None:
        """A graceful stop begins: sends under way finish and are recorded; the recipients not
        yet sent to go back to the ledger (and their batch to the queue) for the next process."""
        self.stopping = True

    @property
    def message_tags(self) -> MessageTags:
        assert self.tags is not None  # set in __post_init__
        return self.tags

    def envelope_for(self, ref: MessageRef) -> str:
        """MAIL FROM of this message: its VERP address, else the address of UANET_MAIL_FROM."""
        return self.message_tags.envelope_sender(ref) or self.envelope_sender

    @functools.cached_property
    def envelope_sender(self) -> str:
        # Parsed once: parseaddr per message was a visible share of the send path.
        return parseaddr(self.renderer.mail_from)[1] or self.renderer.mail_from

    # ---- dispatcher.actions -------------------------------------------------------------------

    async def handle_action_event(self, message: Message, delivery: AmqpDelivery) -> None:
        async with self.sessionmaker() as session, session.begin():
            if isinstance(message, (ActionClosed, ActionTargetsChanged)):
                # Checked before marking the message processed: a retry must find it unmarked.
                if await session.get(DispatchAction, str(message.action_id)) is None:
                    raise Retry("action not known yet")
            if await already_processed(session, ProcessedMessage, message.message_id):
                return
            if isinstance(message, ActionPublished):
                await self._action_published(session, message)
            elif isinstance(message, ActionUpdated):
                await self._action_updated(session, message)
            elif isinstance(message, ActionClosed):
                await self._action_closed(session, message)
            elif isinstance(message, ActionTargetsChanged):
                await self._action_targets_changed(session, message)
            elif isinstance(message, SubscriberErased):
                await ledger.forget_subscriber(session, str(message.subscriber_id))
            else:
                raise Reject(f"unexpected message {type(message).__name__}")

    async def _action_published(self, session: AsyncSession, event: ActionPublished) -> None:
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

    async def _action_targets_changed(
        self, session: AsyncSession, event: ActionTargetsChanged
    ) -> None:
        action = await session.get(DispatchAction, str(event.action_id))
        assert action is not None  # checked by the caller
        cancelled = await retarget(session, action, [t.model_dump() for t in event.targets])
        log.info(
            "action targets changed",
            extra={"action_id": action.id, "letters_readdressed": cancelled},
        )

    async def _action_updated(self, session: AsyncSession, event: ActionUpdated) -> None:
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

    async def _action_closed(self, session: AsyncSession, event: ActionClosed) -> None:
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
            log.info(
                "cancelled pending deliveries", extra={"action_id": action.id, "count": cancelled}
            )

    # ---- dispatcher.batches -------------------------------------------------------------------

    async def handle_batch(self, batch: DeliveryBatch, delivery: AmqpDelivery) -> None:
        kind = batch.message_kind
        if not MESSAGE_KIND.match(kind):
            raise Reject(f"unknown message kind {kind[:40]!r}")
        if self.stopping:
            raise Retry("dispatcher stopping", delay=ledger.STOPPING_DELAY, defer=True)
        action_id = str(batch.action_id)
        recipients = ledger.unique_recipients(batch.recipients)
        if not recipients:
            return
        async with self.sessionmaker() as session, session.begin():
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
            recipients, holds, unreached = self._split_held(action, kind, recipients, alerts)
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
        context = _BatchContext(
            action_id,
            kind,
            alert,
            follow_up,
            claim,
            reference=action.reference,
            batch_id=str(batch.message_id),
            created_at=batch.occurred_at,
        )
        retrying = await self._send_all(context, mine)
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
        self,
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
        now = self.clock()
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
        self,
        *,
        action_id: str,
        message_kind: str,
        token: str,
        rows: Sequence[tuple[int, Recipient]],
        last_try: frozenset[int] = frozenset(),
    ) -> None:
        """Send held rows the scheduler has claimed (with ``token``) like a batch would;
        ``last_try``: the row ids whose temporary failure now counts as failed."""
        async with self.sessionmaker() as session:
            action = await session.get(DispatchAction, action_id)
            assert action is not None  # held rows are only made for known actions
            alert, follow_up = await _texts(session, action, message_kind)
        claim = ledger.Claim(token, mine={ledger.key_of(r): row_id for row_id, r in rows})
        context = _BatchContext(
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
        await self._send_all(context, [r for _, r in rows])

    async def _send_all(
        self, context: _BatchContext, recipients: Sequence[Recipient]
    ) -> Counter[str]:
        """Send to every claimed recipient and record each outcome right after it; count the
        temporary failures.

        Outcomes are committed back to back (group commit): each commit takes what was accepted
        while the previous one ran, so a crash leaves at most the sends of one commit's duration
        accepted but still ``sending`` (the one unavoidable ambiguity), whatever the rate. The
        rows still held keep their lease renewed until their outcome is written.
        """
        temporary: Counter[str] = Counter()
        if not recipients:
            return temporary
        results: asyncio.Queue[SendOutcome | None] = asyncio.Queue()
        pending = iter(recipients)

        async def worker() -> None:
            try:
                for recipient in pending:
                    if context.closed or self.stopping:
                        # The action closed meanwhile: what has not gone out stays home.
                        # Stopping: it is left, claimed, for release_claimed below.
                        break
                    try:
                        outcome = await self._send_one(context, recipient)
                    except _Stopped:
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
            asyncio.create_task(worker()) for _ in range(min(self.concurrency, len(recipients)))
        ]
        renewal = asyncio.create_task(self._renew_lease(context))
        finished = 0
        try:
            while finished < len(workers):
                taken = [await results.get()]
                while not results.empty():
                    taken.append(results.get_nowait())
                outcomes = [o for o in taken if o is not None]
                finished += len(taken) - len(outcomes)
                if outcomes:
                    temporary.update(await self._record_surely(context, outcomes))
        finally:
            renewal.cancel()
            for task in workers:
                task.cancel()
            await asyncio.gather(renewal, *workers, return_exceptions=True)
        if self.stopping and not context.closed:
            async with context.writing, self.sessionmaker() as session, session.begin():
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
            async with self.sessionmaker() as session, session.begin():
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
        self, context: _BatchContext, outcomes: Sequence[SendOutcome]
    ) -> Counter[str]:
        """Record outcomes that already happened: a database hiccup (a deadlock, a failover)
        must not turn messages that went out into rows that get sent again."""
        for attempt in range(RECORD_ATTEMPTS):
            try:
                async with context.writing:
                    return await self._record(context, outcomes)
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

    async def _renew_lease(self, context: _BatchContext) -> None:
        """Keep this handling's claims alive while it sends (see ``ledger.CLAIM_LEASE``), and
        notice when the action is closed (by whichever dispatcher heard of it)."""
        ids = list(context.claim.mine.values())
        while True:
            await asyncio.sleep(ledger.LEASE_RENEWAL)
            try:
                # Never beside a record of the same rows: two transactions of one handling
                # locking the same rows in different orders deadlock on PostgreSQL.
                async with context.writing, self.sessionmaker() as session, session.begin():
                    await ledger.renew(session, token=context.claim.token, ids=ids)
                    if context.message_kind != "closed":
                        status = await session.scalar(
                            select(DispatchAction.status).where(
                                DispatchAction.id == context.action_id
                            )
                        )
                        context.closed = status == ACTION_CLOSED
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the lease has slack
                log.warning(
                    "lease renewal failed",
                    extra={"action": context.reference, "batch_id": context.batch_id},
                )

    async def _send_one(self, context: _BatchContext, recipient: Recipient) -> SendOutcome:
        if recipient.channel == "email":
            ref = MessageRef.delivery(context.claim.mine[ledger.key_of(recipient)])
            try:
                message = self._email_for(context, recipient, ref)
            except InvalidAddress:
                return SendOutcome(recipient, SendResult.failed("invalid_address"))
            await self.email_rate.acquire(1)
            if self.stopping:
                raise _Stopped  # the rate limit held it back until after SIGTERM: not sent
            result = await self.email.send(self.envelope_for(ref), recipient.address, message)
            return SendOutcome(recipient, result)
        if context.alert is not None:
            body = self.renderer.alert_sms(context.alert, recipient.language, recipient.act_url)
        else:
            assert context.follow_up is not None
            body = self.renderer.follow_up_sms(
                context.follow_up, recipient.language, recipient.act_url
            )
        segments = segment_count(body)
        await self.sms_rate.acquire(segments)
        if self.stopping:
            raise _Stopped
        return SendOutcome(recipient, await self.sms.send(recipient.address, body), segments)

    def _email_for(self, context: _BatchContext, recipient: Recipient, ref: MessageRef) -> bytes:
        text = context.alert or context.follow_up
        assert text is not None
        language = pick_language(recipient.language, text.content, text.default_language)
        key = (language, recipient.act_url is not None, recipient.preferences_url is not None)
        prepared = context.emails.get(key)
        if prepared is None:
            # Rendered once per language and link shape, then shared by the whole batch.
            if context.alert is not None:
                prepared = self.renderer.alert_email(
                    context.alert, language, has_act=key[1], has_preferences=key[2]
                )
            else:
                assert context.follow_up is not None
                prepared = self.renderer.follow_up_email(
                    context.follow_up, language, has_act=key[1], has_preferences=key[2]
                )
            context.emails[key] = prepared
        fill = RecipientFill(
            to=recipient.address,
            greeting=self.renderer.greeting(language, recipient.name),
            act_url=recipient.act_url,
            unsubscribe_url=recipient.unsubscribe_url,
            preferences_url=recipient.preferences_url,
        )
        return prepared.build(fill, now=utcnow(), message_id=self.message_tags.message_id(ref))

    async def _record(
        self, context: _BatchContext, outcomes: Sequence[SendOutcome]
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
                    "not_before": self.clock() + HELD_RETRY_DELAY,
                    "held": recipient.model_dump(mode="json"),
                }
                metrics.RETRIED.labels(recipient.channel).inc()
            else:
                row["status"] = RETRY
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
        async with self.sessionmaker() as session, session.begin():
            # In id order, like every other writer: no lock-order deadlock on PostgreSQL.
            updates.sort(key=lambda row: int(row["row_id"]))
            await session.execute(ledger.RECORD_OUTCOME, updates)
            for channel, (sent, failed) in sorted(counts.items()):
                if sent or failed:
                    session.add(
                        outbox_row(
                            Outbox,
                            DeliveriesReported(
                                action_id=context.action_id,
                                message_kind=context.message_kind,
                                channel=channel,
                                sent=sent,
                                failed=failed,
                            ),
                        )
                    )
            for event in suppressions:
                session.add(outbox_row(Outbox, event))
        self.notify()
        return temporary

    # ---- dispatcher.messages ------------------------------------------------------------------

    async def handle_transactional(
        self, message: TransactionalMessage, delivery: AmqpDelivery
    ) -> None:
        channel = TEMPLATE_CHANNEL.get(message.template)
        if channel is None:
            raise Reject(f"unknown template {message.template[:40]!r}")
        if channel != message.channel:
            raise Reject(f"template {message.template} goes by {channel}, not {message.channel}")
        rendered = self._render_transactional(message)  # a Reject before anything is claimed
        key = str(message.message_id)
        now = utcnow()
        try:
            async with self.sessionmaker() as session, session.begin():
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
            await self.email_rate.acquire(1)
            ref = MessageRef.transactional(key)
            result = await self.email.send(self.envelope_for(ref), message.to, rendered)
        else:
            assert isinstance(rendered, str)
            await self.sms_rate.acquire(segment_count(rendered))
            result = await self.sms.send(message.to, rendered)
        async with self.sessionmaker() as session, session.begin():
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
        self.notify()
        if result.outcome == "temporary":
            raise Retry(f"temporary failure {result.error_code}")

    def _render_transactional(self, message: TransactionalMessage) -> bytes | str:
        context = message.context
        if message.template == "confirm_sms":
            return self.renderer.confirm_sms(message.language)
        if message.template == "sms_reply":
            text = context.get("text")
            if not isinstance(text, str) or not text.strip():
                raise Reject("sms_reply needs context.text")
            # A plain answer (HELP, YES/STOP/START acknowledgements), sent as written.
            return clean_text(text).strip()[:1600]
        confirm_url = context.get("confirm_url")
        if not isinstance(confirm_url, str) or not confirm_url.startswith(("http://", "https://")):
            raise Reject("confirm_email needs context.confirm_url")
        name = context.get("name")
        prepared = self.renderer.confirm_email(
            message.language, has_unsubscribe=message.unsubscribe_url is not None
        )
        fill = RecipientFill(
            to=message.to,
            greeting=self.renderer.greeting(
                message.language, name if isinstance(name, str) else ""
            ),
            confirm_url=confirm_url,
            unsubscribe_url=message.unsubscribe_url,
        )
        ref = MessageRef.transactional(str(message.message_id))
        try:
            return prepared.build(fill, now=utcnow(), message_id=self.message_tags.message_id(ref))
        except InvalidAddress:
            raise Reject("address not fit for an email header") from None

    # ---- Twilio status callbacks ----------------------------------------------------------------

    async def record_receipt(self, message_sid: str, status: str, error_code: str | None) -> bool:
        """A delivery receipt: True if it moved a sent SMS to delivered or failed."""
        new_status = RECEIPT_STATUS.get(status)
        if new_status is None or not message_sid:
            return False  # an intermediate status (queued, sent...) changes nothing
        code = f"twilio:{header_safe(error_code, 20)}" if error_code else None
        now = utcnow()
        async with self.sessionmaker() as session, session.begin():
            # Conditional update: of two copies of one callback, only one finds the row ``sent``.
            moved = await session.execute(
                update(Delivery)
                .where(Delivery.provider_message_id == message_sid, Delivery.status == SENT)
                .values(status=new_status, receipt_at=now, updated_at=now, error_code=code)
                .returning(Delivery.action_id, Delivery.message_kind, Delivery.channel)
            )
            row = moved.first()
            if row is None:
                await session.execute(
                    update(TransactionalDelivery)
                    .where(
                        TransactionalDelivery.provider_message_id == message_sid,
                        TransactionalDelivery.status == SENT,
                    )
                    .values(status=new_status, receipt_at=now, updated_at=now, error_code=code)
                )
                return False
            action_id, message_kind, channel = row
            session.add(
                outbox_row(
                    Outbox,
                    DeliveryStatusChanged(
                        action_id=action_id,
                        message_kind=message_kind,
                        channel=channel,
                        status="delivered" if new_status == DELIVERED else "failed",
                    ),
                )
            )
        metrics.RECEIPTS.labels(new_status).inc()
        self.notify()
        return True


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
