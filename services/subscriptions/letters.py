"""Letters to the officials (mail-to-target): a subscriber's letter, emailed by the dispatcher to
each target of the action that has an email address, with the subscriber as ``Reply-To``.

Accepting a letter writes, in one transaction: its record (the dedup key), the dispatcher's
command (``LetterRequested``) and the report the publisher counts (one ``email`` action per
target written to, ``ResponseRecorded`` with the letter id as its id).
"""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions import store
from services.subscriptions.models import ActionRecipient, KnownAction, Letter, Outbox, Subscriber
from services.subscriptions.responses import lock_subscriber, record_response
from services.subscriptions.schemas import LetterCreate
from shared.db import outbox_row, utcnow
from shared.events import LetterRequested

# One person may write several times (a better letter, a second official...), but the
# service must not become a way to flood officials' mailboxes.
MAX_LETTERS_PER_ACTION = 5

Refusal = Literal["closed", "deadline_passed", "no_targets"]
Outcome = Literal["accepted", "duplicate", "too_many"]


def email_targets(action: KnownAction) -> list[dict[str, Any]]:
    """The targets a letter can reach: those with an email address."""
    return [t for t in action.targets if isinstance(t, dict) and t.get("email")]


def deadline_passed(action: KnownAction, today: date) -> bool:
    """Letters may go until the end of the deadline's day."""
    return action.deadline is not None and today > action.deadline


def refusal(action: KnownAction, today: date) -> Refusal | None:
    """Why no letter can be sent for this action now, if none can."""
    if action.status == "closed":
        return "closed"
    if deadline_passed(action, today):
        return "deadline_passed"
    if not email_targets(action):
        return "no_targets"
    return None


async def request_letter(
    *,
    session: AsyncSession,
    recipient: ActionRecipient,
    subscriber: Subscriber,
    action: KnownAction,
    letter: LetterCreate,
    letter_id: uuid.UUID,
    language: str,
) -> Outcome:
    """Record the letter, its command and its report, in the caller's transaction.

    The caller checked ``refusal`` first."""
    # Counted with the subscriber's row held: concurrent letters cannot all pass the cap.
    await lock_subscriber(session, subscriber)
    written = await session.scalar(
        select(func.count())
        .select_from(Letter)
        .where(Letter.action_id == action.id, Letter.subscriber_id == subscriber.id)
    )
    if await session.get(Letter, letter_id) is not None:
        return "duplicate"
    if (written or 0) >= MAX_LETTERS_PER_ACTION:
        return "too_many"
    targets = len(email_targets(action))
    inserted = await store.insert_or_ignore(
        session,
        Letter,
        {
            "id": letter_id,
            "action_id": action.id,
            "subscriber_id": subscriber.id,
            "language": language,
            "targets": targets,
            "created_at": utcnow(),
        },
    )
    if not inserted:
        return "duplicate"  # the same form, submitted twice at once
    session.add(
        outbox_row(
            Outbox,
            LetterRequested(
                letter_id=letter_id,
                action_id=action.id,
                subscriber_id=subscriber.public_id,
                language=language,
                sender_name=letter.name,
                sender_email=letter.email,
                body=letter.letter,
            ),
        )
    )
    await record_response(
        session=session,
        recipient=recipient,
        subscriber=subscriber,
        report_id=letter_id,
        kind="email",
        # ResponseRecorded's bound: an action has rarely more than a handful of targets.
        count=min(targets, 50),
        source="letter",
    )
    return "accepted"
