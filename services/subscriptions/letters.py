"""Letters to the officials (mail-to-target): a subscriber's letter, emailed by the dispatcher to
each target of the action that has an email address, with the writer's address as ``Reply-To``.

Whoever holds a forwarded act link can write, so the reply address is believed only when it is
the subscriber's confirmed email. Any other address first gets one email with a link (signed,
7 days); the letter goes when that link's button is pressed, with that address as
``Reply-To`` (it has shown it is theirs). Until then the letter waits in ``pending_letters``.
That email goes to an address no one has shown is theirs, with a name the writer chose, so it is
counted as a sign-up's confirmation is: at most three an hour to one mailbox however its address
is written (``confirmations``), none to a mailbox that bounced for good.

Sending a letter writes, in one transaction: its record (the dedup key, written when it was
first posted), the dispatcher's command (``LetterRequested``), the publisher's OSDI outreach
(``LetterWritten``) and the report the publisher counts (one ``email`` action per target written
to, ``ResponseRecorded`` with the letter id as its id).
"""

from __future__ import annotations

import uuid
from datetime import date, timedelta
from typing import Any, Literal

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions import confirmations, store
from services.subscriptions.links import Links
from services.subscriptions.models import (
    CONFIRMED,
    ActionRecipient,
    KnownAction,
    Letter,
    Outbox,
    PendingLetter,
    Subscriber,
)
from services.subscriptions.responses import lock_subscriber, record_response
from services.subscriptions.schemas import LetterCreate
from services.subscriptions.subscribers import may_ask_to_confirm
from shared.db import insert_or_ignore, outbox_row, utcnow
from shared.events import LetterRequested, LetterWritten, Target, TransactionalMessage
from shared.tokens import CONFIRM_MAX_AGE

# One person may write several times (a better letter, a second official...), but the
# service must not become a way to flood officials' mailboxes.
MAX_LETTERS_PER_ACTION = 5

PENDING_LIFETIME = timedelta(seconds=CONFIRM_MAX_AGE)  # as long as the link works

Refusal = Literal["closed", "deadline_passed", "no_targets"]
Outcome = Literal["accepted", "duplicate", "too_many", "confirm_email", "check_refused"]


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


def is_confirmed_email(subscriber: Subscriber, address: str) -> bool:
    """Whether ``address`` is the subscriber's own email, confirmed by them."""
    own = subscriber.email
    return (
        own is not None
        and subscriber.email_status == CONFIRMED
        and own.strip().lower() == address.strip().lower()
    )


async def request_letter(
    *,
    session: AsyncSession,
    links: Links,
    recipient: ActionRecipient,
    subscriber: Subscriber,
    action: KnownAction,
    letter: LetterCreate,
    letter_id: uuid.UUID,
    language: str,
) -> Outcome:
    """Record the letter, and either send it (its command and its report) or, for a reply
    address that is not the subscriber's confirmed email, ask that address first; in the
    caller's transaction. The caller checked ``refusal`` first."""
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
    asking = not is_confirmed_email(subscriber, letter.email)
    if asking and not await _may_ask(session, links, letter.email):
        return "check_refused"
    targets = len(email_targets(action))
    inserted = await insert_or_ignore(
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
    if asking:
        await _ask_reply_address(session, links, recipient, subscriber, letter, letter_id, language)
        return "confirm_email"
    await _send(
        session,
        recipient=recipient,
        subscriber=subscriber,
        action=action,
        letter_id=letter_id,
        language=language,
        sender=(letter.name, letter.email, letter.letter),
    )
    return "accepted"


async def _may_ask(session: AsyncSession, links: Links, address: str) -> bool:
    """Whether the reply address may get its check now (counted when it may)."""
    suppression = await store.suppression_of(session, address)
    if not may_ask_to_confirm("email", suppression.reason if suppression else None):
        return False
    return await confirmations.take(session, links.signer, address, now=utcnow())


async def _ask_reply_address(
    session: AsyncSession,
    links: Links,
    recipient: ActionRecipient,
    subscriber: Subscriber,
    letter: LetterCreate,
    letter_id: uuid.UUID,
    language: str,
) -> None:
    """Keep the letter and email its reply address one link that sends it."""
    await session.execute(
        delete(PendingLetter).where(PendingLetter.created_at < utcnow() - PENDING_LIFETIME)
    )
    session.add(
        PendingLetter(
            letter_id=letter_id,
            recipient_id=recipient.id,
            subscriber_id=subscriber.id,
            sender_name=letter.name,
            sender_email=letter.email,
            body=letter.letter,
            created_at=utcnow(),
        )
    )
    ask = TransactionalMessage(
        # One email per letter (the dispatcher's dedup key), apart from the letter's own ids.
        message_id=uuid.uuid5(letter_id, "letter_check"),
        template="letter_check",
        channel="email",
        to=letter.email,
        language=language,
        context={"confirm_url": links.letter(letter_id), "name": letter.name},
    )
    session.add(outbox_row(Outbox, ask))


SendOutcome = Literal["sent", "already_sent"] | Refusal


async def send_pending(session: AsyncSession, letter_id: uuid.UUID) -> SendOutcome:
    """Its reply address followed the link: send the letter (once), in the caller's transaction."""
    letter = await session.get(Letter, letter_id)
    if letter is None:
        return "already_sent"  # its subscriber was erased, or it never was: nothing to send
    subscriber = await session.get(Subscriber, letter.subscriber_id)
    if subscriber is None or subscriber.erased_at is not None:
        return "already_sent"
    await lock_subscriber(session, subscriber)  # two presses at once: one sends
    pending = await session.get(PendingLetter, letter_id, populate_existing=True)
    if pending is None:
        return "already_sent"
    action = await session.get(KnownAction, letter.action_id)
    recipient = await session.get(ActionRecipient, pending.recipient_id)
    if action is None or recipient is None:
        return "already_sent"
    refused = refusal(action, utcnow().date())
    if refused is not None:
        return refused
    await _send(
        session,
        recipient=recipient,
        subscriber=subscriber,
        action=action,
        letter_id=letter_id,
        language=letter.language,
        sender=(pending.sender_name, pending.sender_email, pending.body),
    )
    await session.delete(pending)
    return "sent"


async def _send(
    session: AsyncSession,
    *,
    recipient: ActionRecipient,
    subscriber: Subscriber,
    action: KnownAction,
    letter_id: uuid.UUID,
    language: str,
    sender: tuple[str, str, str],
) -> None:
    """The dispatcher's command and the count, for a letter whose reply address is proven."""
    name, email, body = sender
    targets = len(email_targets(action))
    session.add(
        outbox_row(
            Outbox,
            LetterRequested(
                letter_id=letter_id,
                action_id=action.id,
                subscriber_id=subscriber.public_id,
                language=language,
                sender_name=name,
                sender_email=email,
                body=body,
            ),
        )
    )
    # The publisher's OSDI outreach: whom it went to, nothing of what it said or who wrote it.
    session.add(
        outbox_row(
            Outbox,
            LetterWritten(
                letter_id=letter_id,
                action_id=action.id,
                subscriber_id=subscriber.public_id,
                language=language,
                targets=[
                    Target(name=str(t.get("name") or ""), title=t.get("title") or None)
                    for t in email_targets(action)
                ],
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
