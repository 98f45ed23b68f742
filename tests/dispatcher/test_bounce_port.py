"""The bounce port over real SMTP (aiosmtpd, aiosmtplib as the MTA handing mail on) on a real
database: DSNs as Postfix, Exim and Gmail write them, a plain Exim bounce, a feedback loop's
abuse report, and mail that reports nothing. Each changes the ledger and the outbox once."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import aiosmtplib
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.feedback.mail import read_bounce
from services.dispatcher.feedback.models import FeedbackEvent, UnmatchedFeedback
from services.dispatcher.feedback.port import BouncePort
from services.dispatcher.feedback.record import FeedbackRecorder
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
from shared.events import utcnow
from tests import feedback_samples as samples
from tests.conftest import SECRET

ANA = "ana@example.net"
JUDGE = "judiciary@example.org"
DSNS: dict[str, Callable[[str, str, str], bytes]] = {
    "postfix": samples.postfix_hard,
    "exim": samples.exim_dsn,
    "exim-plain": samples.exim_plain,
    "exchange": samples.exchange_ndr,
    "gmail": samples.gmail_dsn,
}


@dataclass
class Port:
    tags: MessageTags
    port: BouncePort
    sessionmaker: async_sessionmaker[AsyncSession]

    async def hand_on(self, raw: bytes, *, to: str) -> str:
        """What an MTA's transport does: one SMTP transaction with the null sender."""
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=self.port.port, start_tls=False)
        async with client:
            await client.mail("")
            await client.rcpt(to)
            reply = await client.data(raw)
        return reply.message


@pytest.fixture
async def port(sessionmaker: async_sessionmaker[AsyncSession]) -> AsyncIterator[Port]:
    tags = MessageTags(SECRET, domain="example.org", bounce_address="bounces@example.org")
    server = BouncePort(FeedbackRecorder(sessionmaker, tags), host="127.0.0.1", port=0)
    await server.start()
    try:
        yield Port(tags, server, sessionmaker)
    finally:
        await server.stop()


async def sent_alert(
    maker: async_sessionmaker[AsyncSession], *, status: str = SENT, kind: str = "alert"
) -> Delivery:
    async with maker() as session, session.begin():
        row = Delivery(
            action_id=str(uuid.uuid4()),
            message_kind=kind,
            subscriber_id=str(uuid.uuid4()),
            channel="email",
            status=status,
            attempts=1,
            sent_at=utcnow(),
        )
        session.add(row)
    return row


async def outbox(maker: async_sessionmaker[AsyncSession]) -> list[tuple[str, dict[str, Any]]]:
    async with maker() as session:
        rows = (await session.execute(select(Outbox).order_by(Outbox.created_at))).scalars()
        return [(row.routing_key, json.loads(row.body)) for row in rows]


async def status_of(maker: async_sessionmaker[AsyncSession], model: type[Any], row_id: int) -> str:
    async with maker() as session:
        row = await session.get(model, row_id)
        assert row is not None
        return str(row.status)


@pytest.mark.parametrize("mta", sorted(DSNS))
async def test_a_permanent_bounce_fails_the_alert_and_suppresses_the_subscriber(
    port: Port, mta: str
) -> None:
    row = await sent_alert(port.sessionmaker)
    ref = MessageRef.delivery(row.id)
    verp = port.tags.envelope_sender(ref)
    assert verp is not None
    raw = DSNS[mta](verp, port.tags.message_id(ref), ANA)

    assert (await port.hand_on(raw, to=verp)).startswith("2.0.0")
    assert await status_of(port.sessionmaker, Delivery, row.id) == FAILED
    events = await outbox(port.sessionmaker)
    assert events == [
        (
            "delivery.feedback",
            events[0][1] | {"action_id": row.action_id, "message_kind": "alert"},
        ),
        ("recipient.suppressed", events[1][1]),
    ]
    assert events[0][1]["kind"] == "hard_bounce" and events[0][1]["previous"] == "sent"
    suppression = events[1][1]
    assert suppression["subscriber_id"] == row.subscriber_id
    assert suppression["reason"] == "hard_bounce" and suppression["channel"] == "email"
    # The subscriber's own address, not one the mail claims (anyone can write to the port).
    assert suppression["address"] == ""

    # Handed on again (the MTA did not see our answer), then by another MTA's report: once.
    await port.hand_on(raw, to=verp)
    other = samples.gmail_dsn if mta != "gmail" else samples.postfix_hard
    await port.hand_on(other(verp, port.tags.message_id(ref), ANA), to=verp)
    assert len(await outbox(port.sessionmaker)) == 2


async def test_the_message_id_finds_the_alert_without_verp(port: Port) -> None:
    """A relay that rewrote the envelope sender: the returned headers still name the message."""
    row = await sent_alert(port.sessionmaker, status=DELIVERED)
    raw = samples.postfix_hard(
        "alerts@example.org", port.tags.message_id(MessageRef.delivery(row.id)), ANA
    )
    await port.hand_on(raw, to="bounces@example.org")
    assert await status_of(port.sessionmaker, Delivery, row.id) == FAILED
    [(key, moved), _] = await outbox(port.sessionmaker)
    assert key == "delivery.feedback" and moved["previous"] == "delivered"


async def test_a_delay_warning_moves_no_count(port: Port) -> None:
    row = await sent_alert(port.sessionmaker)
    ref = MessageRef.delivery(row.id)
    verp = port.tags.envelope_sender(ref)
    assert verp is not None
    raw = samples.postfix_delayed(verp, port.tags.message_id(ref), ANA)
    assert [f.kind for f in read_bounce(raw, envelope_recipients=[verp])] == ["soft_bounce"]

    await port.hand_on(raw, to=verp)
    assert await status_of(port.sessionmaker, Delivery, row.id) == SENT
    [(key, body)] = await outbox(port.sessionmaker)
    assert key == "delivery.feedback"
    assert body["kind"] == "soft_bounce" and body["previous"] is None
    # A second warning about the same message is recorded, not counted again.
    await port.hand_on(raw.replace(b"08:20:11", b"12:20:11"), to=verp)
    assert len(await outbox(port.sessionmaker)) == 1


@pytest.mark.parametrize("redacted", [False, True], ids=["full", "redacted"])
async def test_an_abuse_report_unsubscribes_the_subscriber(port: Port, redacted: bool) -> None:
    row = await sent_alert(port.sessionmaker)
    ref = MessageRef.delivery(row.id)
    verp = port.tags.envelope_sender(ref)
    assert verp is not None
    raw = samples.arf_complaint(verp, port.tags.message_id(ref), ANA, redacted=redacted)

    # Feedback loops write to the abuse address, not to the VERP one.
    await port.hand_on(raw, to="bounces@example.org")
    assert await status_of(port.sessionmaker, Delivery, row.id) == SENT
    [(key, counted), (suppressed_key, suppressed)] = await outbox(port.sessionmaker)
    assert (key, counted["kind"]) == ("delivery.feedback", "complaint")
    assert suppressed_key == "recipient.suppressed"
    assert suppressed["reason"] == "complaint"
    assert suppressed["subscriber_id"] == row.subscriber_id


async def test_a_late_bounce_of_a_letter_flags_the_target(port: Port) -> None:
    action_id, letter_id = str(uuid.uuid4()), str(uuid.uuid4())
    async with port.sessionmaker() as session, session.begin():
        session.add(
            DispatchAction(
                id=action_id,
                reference="UA 1/26",
                title="t",
                urgency="urgent",
                channels=["email"],
                default_language="en",
                content={},
                targets=[{"name": "Head of the Judiciary", "email": JUDGE}],
                published_at=utcnow(),
            )
        )
        letter = LetterDelivery(
            letter_id=letter_id, action_id=action_id, target_email=JUDGE, status=SENT
        )
        session.add(letter)
    ref = MessageRef.letter(letter.id)
    verp = port.tags.envelope_sender(ref)
    assert verp is not None
    await port.hand_on(samples.exim_dsn(verp, port.tags.message_id(ref), JUDGE), to=verp)

    assert await status_of(port.sessionmaker, LetterDelivery, letter.id) == FAILED
    [(key, body)] = await outbox(port.sessionmaker)
    assert key == "target.bounced"
    assert body["address"] == JUDGE and body["target_name"] == "Head of the Judiciary"
    assert body["letter_id"] == letter_id and body["error_code"] == "bounce:5.0.0"


async def test_mail_that_reports_nothing_is_accepted_and_dropped(port: Port) -> None:
    row = await sent_alert(port.sessionmaker)
    ref = MessageRef.delivery(row.id)
    verp = port.tags.envelope_sender(ref)
    assert verp is not None
    assert "Nothing" in await port.hand_on(samples.auto_reply(verp), to=verp)
    assert (await port.hand_on(samples.MALFORMED, to=verp)).startswith("2.0.0")
    # A report whose tag is forged (signature changed) finds no message.
    forged = verp.replace(verp.split("-")[-1].split("@")[0], "aaaaaaaaaa")
    mid = port.tags.message_id(ref).replace(verp.split("-")[-1].split("@")[0], "aaaaaaaaaa")
    await port.hand_on(samples.postfix_hard(forged, mid, ANA), to=forged)
    assert await status_of(port.sessionmaker, Delivery, row.id) == SENT
    assert await outbox(port.sessionmaker) == []


async def test_reports_that_match_no_message_are_counted_not_kept(port: Port) -> None:
    """Anyone can mail the bounce address: reports on no message of ours, each different, leave
    two counts and no row each (the table would grow without end)."""
    for n in range(30):
        bogus = f"bounces+d{n}-aaaaaaaaaa@example.org"
        await port.hand_on(samples.postfix_hard(bogus, f"<{n}@elsewhere.example>", ANA), to=bogus)
    for n in range(5):
        bogus = f"bounces+d{n}-bbbbbbbbbb@example.org"
        await port.hand_on(samples.arf_complaint(bogus, f"<c{n}@elsewhere.example>", ANA), to=bogus)

    async with port.sessionmaker() as session:
        assert (await session.execute(select(FeedbackEvent))).scalars().all() == []
        counts = {
            (row.source, row.kind): row.count
            for row in (await session.execute(select(UnmatchedFeedback))).scalars()
        }
    assert counts == {("smtp", "hard_bounce"): 30, ("smtp", "complaint"): 5}
    assert await outbox(port.sessionmaker) == []  # a mailed report's address is not believed


async def test_a_bounced_digest_fails_every_alert_it_carried(port: Port) -> None:
    subscriber = str(uuid.uuid4())
    async with port.sessionmaker() as session, session.begin():
        digest = DigestDelivery(
            subscriber_id=subscriber, local_date=date(2026, 12, 2), status=SENT, items=2
        )
        session.add(digest)
        await session.flush()
        carried = [
            Delivery(
                action_id=str(uuid.uuid4()),
                message_kind="alert",
                subscriber_id=subscriber,
                channel="email",
                status=SENT,
                attempts=1,
                digest_id=digest.id,
            )
            for _ in range(2)
        ]
        session.add_all(carried)
    ref = MessageRef.digest(digest.id)
    verp = port.tags.envelope_sender(ref)
    assert verp is not None
    await port.hand_on(samples.gmail_dsn(verp, port.tags.message_id(ref), ANA), to=verp)

    assert [await status_of(port.sessionmaker, Delivery, row.id) for row in carried] == [
        FAILED,
        FAILED,
    ]
    emitted = await outbox(port.sessionmaker)
    assert sorted(body["action_id"] for key, body in emitted if key == "delivery.feedback") == (
        sorted(row.action_id for row in carried)
    )
    [suppression] = [body for key, body in emitted if key == "recipient.suppressed"]
    assert suppression["subscriber_id"] == subscriber


async def test_a_bounced_confirmation_by_mail_suppresses_nobody(port: Port) -> None:
    """A confirmation's row names no subscriber, and the address in a mailed report could be
    anyone's: recorded, nothing suppressed (a signed ESP event would be believed)."""
    ref = MessageRef.transactional(str(uuid.uuid4()))
    verp = port.tags.envelope_sender(ref)
    assert verp is not None
    await port.hand_on(samples.postfix_hard(verp, port.tags.message_id(ref), ANA), to=verp)
    assert await outbox(port.sessionmaker) == []
    async with port.sessionmaker() as session:
        [event] = (await session.execute(select(FeedbackEvent))).scalars().all()
    assert (event.ledger, event.kind, event.status_code) == (
        "transactional",
        "hard_bounce",
        "5.1.1",
    )
