"""Applying a report to the message it concerns, once.

The message is found by its signed tag: the VERP address first (the relay returned the mail to
it, nothing to guess), else a Message-ID or tag the report quotes. Each report is recorded under
its key in the same transaction as what it changes, so a repeat changes nothing; the ledger row's
state makes the same bounce by a second route (a DSN and the ESP's webhook) change nothing twice.

- permanent bounce: the row goes ``sent`` (or ``delivered``) -> ``failed``, the tally moves its
  count (``EmailFeedback``), the address is suppressed (``RecipientSuppressed``); for a letter
  to an official the target is flagged (``TargetBounced``), as an immediate refusal does.
- temporary bounce: recorded and counted as a soft bounce; no delivery count moves.
- complaint: counted, and the subscriber is unsubscribed from email and suppressed.
- delivered (an ESP's receipt): ``sent`` -> ``delivered``.

A row is tied to a subscriber, so its suppression names the subscriber, not an address the
report claims (anyone can mail the bounce address). Only a signed ESP event's address is
believed when the event matches no row of ours.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.feedback.models import FeedbackEvent, UnmatchedFeedback
from services.dispatcher.feedback.reports import Feedback
from services.dispatcher.identity import MessageRef, MessageTags
from services.dispatcher.letters import LetterDelivery
from services.dispatcher.models import (
    DELIVERED,
    FAILED,
    SENT,
    Delivery,
    DigestDelivery,
    DispatchAction,
    Outbox,
)
from shared.db import outbox_row, utcnow
from shared.events import EmailFeedback, Message, RecipientSuppressed, TargetBounced

log = logging.getLogger(__name__)

FEEDBACK = Counter(
    "uanet_dispatcher_feedback_total",
    "Late reports on sent email (bounces, complaints, deliveries), by route and what they did",
    ["source", "kind", "outcome"],
)


@dataclass
class FeedbackRecorder:
    sessionmaker: async_sessionmaker[AsyncSession]
    tags: MessageTags
    # Wakes the outbox relay after a commit.
    notify: Callable[[], None] = lambda: None

    def resolve(self, feedback: Feedback) -> MessageRef | None:
        """The message a report concerns: its VERP address, else a quoted Message-ID or tag."""
        if feedback.bounce_address:
            ref = self.tags.from_bounce_address(feedback.bounce_address)
            if ref is not None:
                return ref
        for candidate in feedback.message_ids:
            if "@" in candidate:
                ref = self.tags.from_message_id(candidate)
            else:
                ref = self.tags.read(candidate)
            if ref is not None:
                return ref
        return None

    async def record_all(self, reports: Sequence[Feedback]) -> int:
        """Each report in its own transaction; returns how many were new."""
        new = 0
        for feedback in reports:
            new += await self.record(feedback)
        return new

    async def record(self, feedback: Feedback) -> bool:
        """Apply one report; False when it was seen before (nothing changes)."""
        ref = self.resolve(feedback)
        if ref is None and not _suppress_reported(feedback):
            return await self._unmatched(feedback)
        async with self.sessionmaker() as session, session.begin():
            event_id = await _first_time(session, feedback, ref)
            if event_id is None:
                outcome = "repeat"
            else:
                emitted = await self._apply(session, feedback, ref, event_id)
                for event in emitted:
                    session.add(outbox_row(Outbox, event))
                if emitted:
                    row = await session.get(FeedbackEvent, event_id)
                    assert row is not None
                    row.applied = True
                outcome = "applied" if emitted else ("matched" if ref else "unmatched")
        FEEDBACK.labels(feedback.source, feedback.kind, outcome).inc()
        log.info(
            "email feedback",
            extra={
                "source": feedback.source,
                "kind": feedback.kind,
                "ledger": ref.ledger if ref else None,
                "outcome": outcome,
            },
        )
        if event_id is not None:
            self.notify()
        return event_id is not None

    async def _unmatched(self, feedback: Feedback) -> bool:
        """A report on no message of ours that changes nothing: counted, not kept (anyone can
        mail the bounce address; a row each would grow without end). A signed ESP event that
        suppresses an address is kept like any other, so a retried one changes nothing twice."""
        async with self.sessionmaker() as session, session.begin():
            await _count_unmatched(session, feedback)
        FEEDBACK.labels(feedback.source, feedback.kind, "unmatched").inc()
        log.info(
            "email feedback",
            extra={"source": feedback.source, "kind": feedback.kind, "outcome": "unmatched"},
        )
        return True

    async def _apply(
        self, session: AsyncSession, feedback: Feedback, ref: MessageRef | None, event_id: int
    ) -> list[Message]:
        if ref is None or ref.ledger == "transactional":
            # No subscriber to name: only a signed ESP's word on the address can be acted on.
            return _suppress_reported(feedback)
        if ref.ledger == "letter":
            return await _letter(session, feedback, int(ref.key))
        if ref.ledger == "delivery":
            row = await _locked(session, Delivery, int(ref.key))
            if row is None or row.channel != "email":
                return []
            return await _deliveries(session, feedback, [row], row.subscriber_id, event_id, ref)
        digest = await _locked(session, DigestDelivery, int(ref.key))
        if digest is None:
            return []
        items = (
            (
                await session.execute(
                    select(Delivery)
                    .where(Delivery.digest_id == digest.id, Delivery.channel == "email")
                    .order_by(Delivery.id)
                    .with_for_update()
                )
            )
            .scalars()
            .all()
        )
        return await _deliveries(
            session, feedback, list(items), digest.subscriber_id, event_id, ref
        )


async def _first_time(
    session: AsyncSession, feedback: Feedback, ref: MessageRef | None
) -> int | None:
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    inserted = await session.execute(
        module.insert(FeedbackEvent)
        .values(
            event_key=feedback.event_key[:200],
            source=feedback.source,
            kind=feedback.kind,
            ledger=ref.ledger if ref else None,
            row_key=ref.key if ref else None,
            status_code=feedback.status_code,
            applied=False,
            received_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["event_key"])
        .returning(FeedbackEvent.id)
    )
    found: int | None = inserted.scalar_one_or_none()
    return found


async def _count_unmatched(session: AsyncSession, feedback: Feedback) -> None:
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    now = utcnow()
    insert = module.insert(UnmatchedFeedback).values(
        source=feedback.source, kind=feedback.kind, count=1, last_at=now
    )
    await session.execute(
        insert.on_conflict_do_update(
            index_elements=["source", "kind"],
            set_={"count": UnmatchedFeedback.count + 1, "last_at": now},
        )
    )


async def _locked(session: AsyncSession, model: type[Any], row_id: int) -> Any:
    # Locked (PostgreSQL) so two routes reporting the same message at once take turns.
    return await session.get(model, row_id, with_for_update=True)


async def _seen_before(session: AsyncSession, ref: MessageRef, kind: str, event_id: int) -> bool:
    found = await session.execute(
        select(FeedbackEvent.id)
        .where(
            FeedbackEvent.ledger == ref.ledger,
            FeedbackEvent.row_key == ref.key,
            FeedbackEvent.kind == kind,
            FeedbackEvent.applied.is_(True),
            FeedbackEvent.id != event_id,
        )
        .limit(1)
    )
    return found.first() is not None


async def _deliveries(
    session: AsyncSession,
    feedback: Feedback,
    rows: Sequence[Delivery],
    subscriber_id: str,
    event_id: int,
    ref: MessageRef,
) -> list[Message]:
    """An alert or follow-up (one row), or a digest (the rows of every action it carried)."""
    now = utcnow()
    emitted: list[Message] = []
    if feedback.kind == "hard_bounce":
        for row in rows:
            if row.status not in (SENT, DELIVERED):
                continue  # already failed (another route said so first), or never sent
            previous = "sent" if row.status == SENT else "delivered"
            row.status = FAILED
            row.error_code = f"bounce:{feedback.status_code or '5'}"[:32]
            row.updated_at = now
            emitted.append(_feedback_event(row, "hard_bounce", previous))
        if emitted:
            emitted.append(_suppression(subscriber_id, "hard_bounce"))
    elif feedback.kind == "delivered":
        for row in rows:
            if row.status == SENT:
                row.status = DELIVERED
                row.receipt_at = row.updated_at = now
                emitted.append(_feedback_event(row, "delivered", "sent"))
    elif not await _seen_before(session, ref, feedback.kind, event_id):
        # A soft bounce or a complaint counts once per message, however many reports say so.
        emitted = [_feedback_event(row, feedback.kind, None) for row in rows]
        if feedback.kind == "complaint":
            emitted.append(_suppression(subscriber_id, "complaint"))
    return emitted


async def _letter(session: AsyncSession, feedback: Feedback, row_id: int) -> list[Message]:
    row = await _locked(session, LetterDelivery, row_id)
    if row is None or feedback.kind != "hard_bounce" or row.status != SENT:
        return []  # an official's complaint or delay is not ours to act on
    row.status = FAILED
    row.error_code = f"bounce:{feedback.status_code or '5'}"[:32]
    row.updated_at = utcnow()
    action = await session.get(DispatchAction, row.action_id)
    name = next(
        (
            str(t.get("name") or "")
            for t in (action.targets if action else [])
            if str(t.get("email") or "").strip().lower() == row.target_email
        ),
        "",
    )
    return [
        TargetBounced(
            action_id=uuid.UUID(row.action_id),
            letter_id=uuid.UUID(row.letter_id),
            target_name=name,
            address=row.target_email,
            error_code=row.error_code,
        )
    ]


def _feedback_event(row: Delivery, kind: str, previous: str | None) -> EmailFeedback:
    return EmailFeedback.model_validate(
        {
            "action_id": row.action_id,
            "message_kind": row.message_kind,
            "kind": kind,
            "previous": previous,
        }
    )


def _suppression(subscriber_id: str, reason: str) -> RecipientSuppressed:
    # No address: subscriptions suppresses the subscriber's own (the report's could be forged).
    return RecipientSuppressed.model_validate(
        {"subscriber_id": subscriber_id, "channel": "email", "address": "", "reason": reason}
    )


def _suppress_reported(feedback: Feedback) -> list[Message]:
    if not (feedback.trusted and feedback.recipient):
        return []
    if feedback.kind not in ("hard_bounce", "complaint"):
        return []
    return [
        RecipientSuppressed.model_validate(
            {
                "subscriber_id": None,
                "channel": "email",
                "address": feedback.recipient.strip().lower(),
                "reason": feedback.kind,
            }
        )
    ]
