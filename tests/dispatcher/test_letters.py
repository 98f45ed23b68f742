"""Letters to the officials through the real SMTP adapter and a real SMTP server on loopback:
one email per target, the right headers (no injection), once only, rate-limited per target,
stopped by a close or the deadline, and a bounce reported to the publisher."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email.utils import getaddresses

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.letters import RATE_WAIT, LetterDelivery, LetterDispatcher
from services.dispatcher.models import Outbox
from services.dispatcher.smtp_sender import SmtpEmailSender
from services.dispatcher.throttle import RateLimiter
from shared.events import ActionClosed, ActionTargetsChanged, LetterRequested, Target
from shared.messaging import Delivery as AmqpDelivery
from shared.messaging import Retry
from shared.settings import Settings
from tests.dispatcher.conftest import MAIL_FROM, action_published, make_dispatcher
from tests.support import SmtpRecorder

JUDGE, MINISTER = "judiciary@example.org", "minister@example.org"
TARGETS = [
    Target(name="Head of the Judiciary", email=JUDGE),
    Target(name="Minister of Justice", email=MINISTER),
    Target(name="Prison governor"),  # no email: not written to
]
LETTERS_QUEUE = AmqpDelivery("dispatcher.letters", "letter.requested", 0)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, 10, 0, 5, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def smtp() -> Iterator[SmtpRecorder]:
    server = SmtpRecorder()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def sender(smtp: SmtpRecorder) -> AsyncIterator[SmtpEmailSender]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, smtp_host="127.0.0.1", smtp_port=smtp.port, smtp_starttls=False
    )
    email = SmtpEmailSender(settings, pool_size=2)
    yield email
    await email.close()


def letters_of(
    sessionmaker: async_sessionmaker[AsyncSession],
    sender: SmtpEmailSender,
    clock: Clock,
    *,
    per_minute: int = 10,
    today: date = date(2026, 12, 1),
) -> LetterDispatcher:
    return LetterDispatcher(
        sessionmaker=sessionmaker,
        email=sender,
        mail_from=MAIL_FROM,
        email_rate=RateLimiter(Decimal(0)),
        per_target_per_minute=per_minute,
        clock=clock,
        today=lambda: today,
    )


async def published(
    sessionmaker: async_sessionmaker[AsyncSession], **overrides: object
) -> uuid.UUID:
    event = action_published(targets=TARGETS, deadline=date(2026, 12, 20), **overrides)
    await make_dispatcher(sessionmaker).handle_action_event(event, LETTERS_QUEUE)
    return event.action_id


def letter(action_id: uuid.UUID, **overrides: object) -> LetterRequested:
    values: dict[str, object] = {
        "letter_id": uuid.uuid4(),
        "action_id": action_id,
        "subscriber_id": uuid.uuid4(),
        "language": "fr",
        "sender_name": "Ana Lima",
        "sender_email": "ana@example.net",
        "body": "Je vous écris pour demander sa libération.",
    }
    values.update(overrides)
    return LetterRequested(**values)  # type: ignore[arg-type]


async def ledger(sessionmaker: async_sessionmaker[AsyncSession]) -> dict[str, str]:
    async with sessionmaker() as session:
        rows = (await session.execute(select(LetterDelivery))).scalars()
        return {f"{r.letter_id[:8]}:{r.target_email}": r.status for r in rows}


async def outbox(sessionmaker: async_sessionmaker[AsyncSession], key: str) -> list[dict[str, str]]:
    async with sessionmaker() as session:
        rows = (await session.execute(select(Outbox).where(Outbox.routing_key == key))).scalars()
        return [json.loads(row.body) for row in rows]


async def test_one_email_per_target_from_us_replying_to_the_subscriber_once_only(
    sessionmaker: async_sessionmaker[AsyncSession], sender: SmtpEmailSender, smtp: SmtpRecorder
) -> None:
    action_id = await published(sessionmaker)
    letters = letters_of(sessionmaker, sender, Clock())
    # A hostile name and body: neither may add a header or a recipient.
    command = letter(
        action_id,
        sender_name='Ana "Lima"\r\nBcc: everyone@example.org',
        body="Libérez-le.\r\nBcc: everyone@example.org\n\nCordialement",
    )

    await letters.handle_letter(command, LETTERS_QUEUE)
    await letters.handle_letter(command, LETTERS_QUEUE)  # redelivered: nothing goes twice

    assert sorted(m.to for m in smtp.messages) == [JUDGE, MINISTER]
    for mail in smtp.messages:
        assert mail.mail_from == "alerts@example.org"
        assert mail.rcpt_tos == [mail.to]
        [(from_name, from_address)] = getaddresses([mail.header("From")])
        assert from_address == "alerts@example.org"
        # One line, quoted, harmless; and never passing for the organisation's own word.
        assert from_name == 'Ana "Lima" Bcc: everyone@example.org via Urgent Action Network'
        assert getaddresses([mail.header("Reply-To")])[0][1] == "ana@example.net"
        assert getaddresses([mail.header("To")])[0][1] == mail.to
        assert mail.header("Subject") == "Action urgente : journaliste en danger"
        assert "Bcc" not in mail.message
        assert mail.message.get_content_type() == "text/plain"
        body = mail.message.get_content().replace("\r\n", "\n")
        assert body.startswith("Libérez-le.\nBcc: everyone@example.org\n\nCordialement")
        signed, closing = body.rstrip().rsplit("\n--\n", 1)
        assert signed.rstrip().endswith('Ana "Lima" Bcc: everyone@example.org')
        # The last line says who sent it and how, in the letter's language.
        assert closing == (
            "Envoyée par un sympathisant depuis la page d'action de Urgent Action Network."
        )
    assert set((await ledger(sessionmaker)).values()) == {"sent"}


async def test_a_target_over_its_rate_waits_in_the_delay_queue(
    sessionmaker: async_sessionmaker[AsyncSession], sender: SmtpEmailSender, smtp: SmtpRecorder
) -> None:
    action_id = await published(sessionmaker)
    clock = Clock()
    letters = letters_of(sessionmaker, sender, clock, per_minute=1)
    first, second = letter(action_id), letter(action_id)

    await letters.handle_letter(first, LETTERS_QUEUE)
    with pytest.raises(Retry) as held:
        await letters.handle_letter(second, LETTERS_QUEUE)

    # A wait, not a failure: it does not use up the letter's retries.
    assert (held.value.defer, held.value.delay) == (True, RATE_WAIT)
    assert len(smtp.to(JUDGE)) == 1 and len(smtp.to(MINISTER)) == 1
    clock.now += timedelta(minutes=1)
    await letters.handle_letter(second, LETTERS_QUEUE)  # back from the delay queue
    assert len(smtp.to(JUDGE)) == 2 and len(smtp.to(MINISTER)) == 2


async def test_nothing_goes_once_the_action_is_closed_or_past_its_deadline(
    sessionmaker: async_sessionmaker[AsyncSession], sender: SmtpEmailSender, smtp: SmtpRecorder
) -> None:
    action_id = await published(sessionmaker)
    late = letters_of(sessionmaker, sender, Clock(), today=date(2026, 12, 21))
    await late.handle_letter(letter(action_id), LETTERS_QUEUE)

    open_again = letters_of(sessionmaker, sender, Clock())
    closed = ActionClosed(
        action_id=action_id,
        update_id=uuid.uuid4(),
        reference="UA 12/26",
        outcome="released",
        default_language="en",
    )
    await make_dispatcher(sessionmaker).handle_action_event(closed, LETTERS_QUEUE)
    await open_again.handle_letter(letter(action_id), LETTERS_QUEUE)

    assert smtp.messages == []
    assert set((await ledger(sessionmaker)).values()) == {"cancelled"}


async def test_a_refused_target_is_reported_and_the_others_still_get_it(
    sessionmaker: async_sessionmaker[AsyncSession], sender: SmtpEmailSender, smtp: SmtpRecorder
) -> None:
    action_id = await published(sessionmaker)
    smtp.reply_for[MINISTER] = "550 5.1.1 No such mailbox"
    letters = letters_of(sessionmaker, sender, Clock())
    command = letter(action_id)

    await letters.handle_letter(command, LETTERS_QUEUE)
    await letters.handle_letter(command, LETTERS_QUEUE)

    assert [m.to for m in smtp.messages] == [JUDGE]
    [bounce] = await outbox(sessionmaker, "target.bounced")
    assert bounce["address"] == MINISTER
    assert bounce["target_name"] == "Minister of Justice"
    assert bounce["error_code"] == "smtp:550"
    assert bounce["letter_id"] == str(command.letter_id)
    # A target is not a subscriber: nobody is suppressed for it.
    assert await outbox(sessionmaker, "recipient.suppressed") == []
    statuses = await ledger(sessionmaker)
    assert sorted(statuses.values()) == ["failed", "sent"]


async def test_a_fixed_target_address_takes_the_letters_from_then_on(
    sessionmaker: async_sessionmaker[AsyncSession], sender: SmtpEmailSender, smtp: SmtpRecorder
) -> None:
    action_id = await published(sessionmaker)
    smtp.reply_for[MINISTER] = "550 5.1.1 No such mailbox"
    letters = letters_of(sessionmaker, sender, Clock())
    await letters.handle_letter(letter(action_id), LETTERS_QUEUE)

    fixed = "justice.minister@example.org"
    changed = ActionTargetsChanged(
        action_id=action_id,
        reference="UA 12/26",
        targets=[TARGETS[0], Target(name="Minister of Justice", email=fixed), TARGETS[2]],
    )
    dispatcher = make_dispatcher(sessionmaker)
    await dispatcher.handle_action_event(changed, LETTERS_QUEUE)
    await dispatcher.handle_action_event(changed, LETTERS_QUEUE)  # redelivered: the same
    await letters.handle_letter(letter(action_id), LETTERS_QUEUE)

    assert len(smtp.to(JUDGE)) == 2
    assert smtp.to(MINISTER) == []
    assert len(smtp.to(fixed)) == 1
    assert len(await outbox(sessionmaker, "target.bounced")) == 1


async def test_targets_changed_for_an_unknown_action_waits_for_it(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> None:
    early = ActionTargetsChanged(action_id=uuid.uuid4(), reference="UA 12/26", targets=TARGETS)
    with pytest.raises(Retry, match="action not known yet"):
        await make_dispatcher(sessionmaker).handle_action_event(early, LETTERS_QUEUE)


async def test_a_letter_waiting_on_the_rate_limit_goes_to_the_fixed_address(
    sessionmaker: async_sessionmaker[AsyncSession], sender: SmtpEmailSender, smtp: SmtpRecorder
) -> None:
    action_id = await published(sessionmaker)
    clock = Clock()
    letters = letters_of(sessionmaker, sender, clock, per_minute=1)
    first, second = letter(action_id), letter(action_id)
    await letters.handle_letter(first, LETTERS_QUEUE)
    with pytest.raises(Retry):
        await letters.handle_letter(second, LETTERS_QUEUE)  # waits in the delay queue

    fixed = "justice.minister@example.org"
    changed = ActionTargetsChanged(
        action_id=action_id,
        reference="UA 12/26",
        targets=[TARGETS[0], Target(name="Minister of Justice", email=fixed), TARGETS[2]],
    )
    dispatcher = make_dispatcher(sessionmaker)
    await dispatcher.handle_action_event(changed, LETTERS_QUEUE)
    clock.now += timedelta(minutes=1)
    await letters.handle_letter(second, LETTERS_QUEUE)  # back from the delay queue
    await dispatcher.handle_action_event(changed, LETTERS_QUEUE)  # redelivered: nothing more
    await letters.handle_letter(second, LETTERS_QUEUE)

    assert len(smtp.to(MINISTER)) == 1  # the first letter, sent before the fix
    assert len(smtp.to(fixed)) == 1 and len(smtp.to(JUDGE)) == 2
    statuses = await ledger(sessionmaker)
    first_id, second_id = str(first.letter_id)[:8], str(second.letter_id)[:8]
    assert statuses[f"{first_id}:{MINISTER}"] == "sent"  # history kept
    assert statuses[f"{second_id}:{MINISTER}"] == "cancelled"  # never to go there now
    assert statuses[f"{second_id}:{fixed}"] == "sent"
