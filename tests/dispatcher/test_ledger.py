"""The handlers over a real database (SQLite and PostgreSQL), with fake senders."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher import ledger
from services.dispatcher.adapters import IN_DOUBT_LIMIT
from services.dispatcher.models import Delivery, DispatchAction, Outbox, TransactionalDelivery
from services.dispatcher.senders import SendResult
from shared.events import (
    ActionClosed,
    SubscriberErased,
    TransactionalMessage,
    UpdateContent,
)
from shared.messaging import Reject, Retry

from .conftest import (
    AMQP_DELIVERY,
    FakeEmailSender,
    FakeSmsSender,
    action_published,
    action_updated,
    batch,
    make_dispatcher,
    outcome,
    recipient,
)

Maker = async_sessionmaker[AsyncSession]


async def outbox(maker: Maker, routing_key: str) -> list[dict[str, object]]:
    async with maker() as session:
        rows = await session.scalars(
            select(Outbox).where(Outbox.routing_key == routing_key).order_by(Outbox.created_at)
        )
        return [json.loads(row.body) for row in rows]


async def statuses(maker: Maker) -> dict[tuple[str, str], str]:
    async with maker() as session:
        rows = await session.scalars(select(Delivery))
        return {(row.subscriber_id, row.channel): row.status for row in rows}


async def test_batch_before_its_action_is_retried(sessionmaker: Maker) -> None:
    dispatcher = make_dispatcher(sessionmaker)
    action = action_published()
    with pytest.raises(Retry, match="action not known yet"):
        await dispatcher.handle_batch(batch(action, [recipient()]), AMQP_DELIVERY)


async def test_each_recipient_gets_exactly_one_message(sessionmaker: Maker) -> None:
    email, sms = FakeEmailSender(), FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, email, sms)
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)  # redelivered: no change
    people = [recipient(), recipient(language="fr"), recipient("sms", language="es")]
    command = batch(action, people)
    await dispatcher.handle_batch(command, AMQP_DELIVERY)
    await dispatcher.handle_batch(command, AMQP_DELIVERY)  # the same batch again
    assert len(email.sent) == 2 and len(sms.sent) == 1
    assert b"Subject: Action urgente" in email.to(people[1].address)[0]
    assert sms.sent[0][1].endswith("Responde STOP para darte de baja")
    assert set((await statuses(sessionmaker)).values()) == {"sent"}
    reports = await outbox(sessionmaker, "delivery.reported")
    assert sorted((r["channel"], r["sent"], r["failed"]) for r in reports) == [
        ("email", 2, 0),
        ("sms", 1, 0),
    ]


async def test_temporary_failure_retries_only_whom_it_missed(sessionmaker: Maker) -> None:
    email, sms = FakeEmailSender(), FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, email, sms)
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    ok, flaky, phone = recipient(), recipient(), recipient("sms")
    email.script[flaky.address] = [SendResult.temporary("smtp:451")]
    sms.script[phone.address] = [SendResult.temporary("twilio:20429")]
    command = batch(action, [ok, flaky, phone])
    with pytest.raises(Retry):
        await dispatcher.handle_batch(command, AMQP_DELIVERY)
    assert len(email.sent) == 1
    assert (await statuses(sessionmaker))[(str(flaky.subscriber_id), "email")] == "retry"
    await dispatcher.handle_batch(command, AMQP_DELIVERY)  # back from the delay queue
    assert sorted(r for _, r, _ in email.sent) == sorted([ok.address, flaky.address])
    assert len(sms.sent) == 1
    reports = await outbox(sessionmaker, "delivery.reported")
    assert sum(int(r["sent"]) for r in reports) == 3  # type: ignore[call-overload]


async def test_permanent_failures_are_counted_and_suppressed(sessionmaker: Maker) -> None:
    email, sms = FakeEmailSender(), FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, email, sms)
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    bounced, stopped = recipient(), recipient("sms", address="+447700900999")
    email.script[bounced.address] = [SendResult.failed("smtp:550", "hard_bounce")]
    sms.script[stopped.address] = [SendResult.failed("twilio:21610", "opted_out")]
    await dispatcher.handle_batch(batch(action, [bounced, stopped]), AMQP_DELIVERY)
    suppressed = await outbox(sessionmaker, "recipient.suppressed")
    assert sorted((s["channel"], s["reason"], s["subscriber_id"]) for s in suppressed) == sorted(
        [
            ("email", "hard_bounce", str(bounced.subscriber_id)),
            ("sms", "opted_out", str(stopped.subscriber_id)),
        ]
    )
    reports = await outbox(sessionmaker, "delivery.reported")
    assert sorted((r["channel"], r["sent"], r["failed"]) for r in reports) == [
        ("email", 0, 1),
        ("sms", 0, 1),
    ]
    # Erasure removes the address that the suppression event carried.
    await dispatcher.handle_action_event(
        SubscriberErased(subscriber_id=stopped.subscriber_id), AMQP_DELIVERY
    )
    left = await outbox(sessionmaker, "recipient.suppressed")
    assert [s["subscriber_id"] for s in left] == [str(bounced.subscriber_id)]


async def test_closed_action_cancels_alerts_but_sends_the_outcome(sessionmaker: Maker) -> None:
    email = FakeEmailSender()
    dispatcher = make_dispatcher(sessionmaker, email)
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    early, late, flaky = recipient(), recipient(), recipient()
    email.script[flaky.address] = [SendResult.temporary("smtp:451")]
    with pytest.raises(Retry):
        await dispatcher.handle_batch(batch(action, [early, flaky]), AMQP_DELIVERY)
    closed = ActionClosed(
        action_id=action.action_id,
        update_id=uuid.uuid4(),
        reference=action.reference,
        outcome="released",
        default_language="en",
        content={"en": UpdateContent(subject="Released", body="Good news", sms="Released!")},
    )
    await dispatcher.handle_action_event(closed, AMQP_DELIVERY)
    # The retried batch and a late one send nothing more.
    await dispatcher.handle_batch(batch(action, [early, flaky]), AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [late]), AMQP_DELIVERY)
    assert [r for _, r, _ in email.sent] == [early.address]
    rows = await statuses(sessionmaker)
    assert rows[(str(flaky.subscriber_id), "email")] == "cancelled"
    assert rows[(str(late.subscriber_id), "email")] == "cancelled"
    await dispatcher.handle_batch(batch(action, [early], kind="closed"), AMQP_DELIVERY)
    outcome = email.to(early.address)[-1]
    assert b"Subject: Released" in outcome
    async with sessionmaker() as session:
        stored = await session.get(DispatchAction, str(action.action_id))
        assert stored is not None and stored.status == "closed"


async def test_follow_up_waits_for_its_text_then_goes_out(sessionmaker: Maker) -> None:
    email = FakeEmailSender()
    dispatcher = make_dispatcher(sessionmaker, email)
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    update = action_updated(action)
    person = recipient()
    follow_up = batch(action, [person], kind=f"update:{update.update_id}")
    with pytest.raises(Retry, match="follow-up not known yet"):
        await dispatcher.handle_batch(follow_up, AMQP_DELIVERY)
    await dispatcher.handle_action_event(update, AMQP_DELIVERY)
    await dispatcher.handle_batch(follow_up, AMQP_DELIVERY)
    assert b"Subject: New information" in email.to(person.address)[0]


async def test_unknown_message_kind_is_rejected(sessionmaker: Maker) -> None:
    dispatcher = make_dispatcher(sessionmaker)
    with pytest.raises(Reject):
        await dispatcher.handle_batch(
            batch(action_published(), [recipient()], kind="spam"), AMQP_DELIVERY
        )


async def test_status_receipt_moves_sent_to_delivered_once(sessionmaker: Maker) -> None:
    sms = FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, sms=sms)
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [recipient("sms")]), AMQP_DELIVERY)
    async with sessionmaker() as session:
        sid = await session.scalar(select(Delivery.provider_message_id))
    assert sid
    assert await dispatcher.record_receipt(sid, "sent", None) is False
    assert await dispatcher.record_receipt(sid, "delivered", None) is True
    assert await dispatcher.record_receipt(sid, "delivered", None) is False
    assert await dispatcher.record_receipt("SMunknown", "delivered", None) is False
    changes = await outbox(sessionmaker, "delivery.status")
    assert [(c["status"], c["channel"], c["message_kind"]) for c in changes] == [
        ("delivered", "sms", "alert")
    ]


async def test_transactional_message_is_sent_once(sessionmaker: Maker) -> None:
    email, sms = FakeEmailSender(), FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, email, sms)
    confirm = TransactionalMessage(
        template="confirm_email",
        channel="email",
        to="ana@example.net",
        language="fr",
        context={"name": "Ana", "confirm_url": "http://localhost:8002/confirm/TOKEN"},
        unsubscribe_url="http://localhost:8002/unsubscribe/U",
    )
    email.script["ana@example.net"] = [SendResult.temporary("smtp:421")]
    with pytest.raises(Retry):
        await dispatcher.handle_transactional(confirm, AMQP_DELIVERY)
    await dispatcher.handle_transactional(confirm, AMQP_DELIVERY)
    await dispatcher.handle_transactional(confirm, AMQP_DELIVERY)
    assert len(email.sent) == 1
    raw = email.sent[0][2]
    assert b"List-Unsubscribe: <http://localhost:8002/unsubscribe/U>" in raw
    assert b"http://localhost:8002/confirm/TOKEN" in raw
    reply = TransactionalMessage(
        template="sms_reply",
        channel="sms",
        to="+447700900123",
        language="en",
        context={"text": "Thanks, you are confirmed."},
    )
    await dispatcher.handle_transactional(reply, AMQP_DELIVERY)
    confirm_sms = TransactionalMessage(
        template="confirm_sms", channel="sms", to="+447700900123", language="fr"
    )
    await dispatcher.handle_transactional(confirm_sms, AMQP_DELIVERY)
    assert [body for _, body in sms.sent] == [
        "Thanks, you are confirmed.",
        "Répondez YES pour confirmer vos alertes Actions urgentes. "
        "Répondez STOP pour vous désabonner",
    ]
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(TransactionalDelivery)) == 3
    with pytest.raises(Reject):
        await dispatcher.handle_transactional(
            TransactionalMessage(template="nope", channel="sms", to="+1", language="en"),
            AMQP_DELIVERY,
        )


async def test_a_follow_up_waits_for_an_alert_still_being_retried(sessionmaker: Maker) -> None:
    email = FakeEmailSender()
    dispatcher = make_dispatcher(sessionmaker, email)
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    slow, prompt = recipient(), recipient()
    email.script[slow.address] = [SendResult.temporary("smtp:451")]
    with pytest.raises(Retry):
        await dispatcher.handle_batch(batch(action, [slow, prompt]), AMQP_DELIVERY)
    update = action_updated(action)
    await dispatcher.handle_action_event(update, AMQP_DELIVERY)
    follow_up = batch(action, [slow, prompt], kind=f"update:{update.update_id}")

    with pytest.raises(Retry, match="1 held elsewhere"):
        await dispatcher.handle_batch(follow_up, AMQP_DELIVERY)
    assert len(email.to(prompt.address)) == 2  # the alert, then the update
    assert email.to(slow.address) == []  # the update never overtakes the alert

    await dispatcher.handle_batch(batch(action, [slow, prompt]), AMQP_DELIVERY)  # retried
    await dispatcher.handle_batch(follow_up, AMQP_DELIVERY)  # back from the delay queue
    subjects = [m.split(b"Subject: ")[1].split(b"\r\n")[0] for m in email.to(slow.address)]
    assert len(subjects) == 2 and subjects[1] == b"New information"
    assert len(email.to(prompt.address)) == 2  # nothing twice


async def test_claims_take_new_retry_and_abandoned_rows_and_leave_the_rest(
    sessionmaker: Maker,
) -> None:
    """The ledger's claim on its own (one set-based statement on each database): a row held
    by a live handling is busy, one whose lease ran out or left ``retry``
    is taken back, a final one is done."""
    action_id, kind = str(uuid.uuid4()), "alert"
    people = [recipient(), recipient(), recipient("sms")]
    now = datetime.now(UTC)
    async with sessionmaker() as session, session.begin():
        first = await ledger.claim(
            session, action_id=action_id, message_kind=kind, recipients=people, now=now
        )
    assert len(first.mine) == 3 and (first.busy, first.done) == (0, 0)
    async with sessionmaker() as session, session.begin():
        rival = await ledger.claim(
            session, action_id=action_id, message_kind=kind, recipients=people, now=now
        )
    assert (len(rival.mine), rival.busy, rival.done) == (0, 3, 0)
    sent_id, retry_id = first.mine[ledger.key_of(people[0])], first.mine[ledger.key_of(people[1])]
    rows = sorted(
        [outcome(sent_id, "sent", now), outcome(retry_id, "retry", now, not_before=now)],
        key=lambda row: row["row_id"],
    )
    await ledger.commit_outcomes(sessionmaker, rows)
    # The SMS row is still ``sending`` with the first token: abandoned once the lease ran out.
    later = now + ledger.CLAIM_LEASE + timedelta(seconds=1)
    async with sessionmaker() as session, session.begin():
        again = await ledger.claim(
            session, action_id=action_id, message_kind=kind, recipients=people, now=later
        )
    assert set(again.mine) == {ledger.key_of(people[1]), ledger.key_of(people[2])}
    assert (again.busy, again.done) == (0, 1)
    async with sessionmaker() as session:
        attempts = dict((await session.execute(select(Delivery.id, Delivery.attempts))).all())
    assert attempts == {sent_id: 1, retry_id: 2, first.mine[ledger.key_of(people[2])]: 2}


async def test_sends_in_doubt_never_exceed_the_window_and_all_slots_come_back(
    sessionmaker: Maker,
) -> None:
    """However many workers a batch runs, at most IN_DOUBT_LIMIT sends are between their start
    and their recorded outcome: what a SIGKILL could leave accepted but looking unsent."""

    class SlowRelay(FakeEmailSender):
        in_flight = 0
        most = 0

        async def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
            SlowRelay.in_flight += 1
            SlowRelay.most = max(SlowRelay.most, SlowRelay.in_flight)
            try:
                await asyncio.sleep(0.005)  # a relay some distance away
                return await super().send(sender, recipient, message)
            finally:
                SlowRelay.in_flight -= 1

    email = SlowRelay()
    dispatcher = make_dispatcher(sessionmaker, email)
    dispatcher.concurrency = 300
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    people = [recipient() for _ in range(400)]
    await dispatcher.handle_batch(batch(action, people), AMQP_DELIVERY)
    assert len(email.sent) == 400
    assert 1 < SlowRelay.most <= IN_DOUBT_LIMIT
    # Every slot back: the next batch is not starved by this one.
    for _ in range(IN_DOUBT_LIMIT):
        assert dispatcher.in_doubt.locked() is False
        await dispatcher.in_doubt.acquire()
    assert dispatcher.in_doubt.locked()


async def test_the_lease_of_rows_still_out_is_renewed_and_only_theirs(
    sessionmaker: Maker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a batch sends, the rows it holds keep their lease (another dispatcher must not take
    them); the rows already recorded are left alone (renewing all 500 every second cost)."""
    monkeypatch.setattr(ledger, "LEASE_RENEWAL", 0.05)
    renewed: list[set[int]] = []
    counts: list[tuple[int, int]] = []
    renew = ledger.renew

    async def spying_renew(session: AsyncSession, *, token: str, ids: list[int]) -> int:
        renewed.append(set(ids))
        count = await renew(session, token=token, ids=ids)
        counts.append((count, len(ids)))  # asserted below: a failure here would be swallowed
        return count

    monkeypatch.setattr(ledger, "renew", spying_renew)
    people = [recipient() for _ in range(6)]
    slow = people[-1].address

    class OneSlowRecipient(FakeEmailSender):
        async def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
            if recipient == slow:
                await asyncio.sleep(0.5)  # a relay that takes its time over this one
            return await super().send(sender, recipient, message)

    email = OneSlowRecipient()
    dispatcher = make_dispatcher(sessionmaker, email)
    action = action_published()
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, people), AMQP_DELIVERY)

    assert len(email.sent) == 6
    async with sessionmaker() as session:
        ids = dict(
            (await session.execute(select(Delivery.subscriber_id, Delivery.id))).tuples().all()
        )
    slow_id = ids[str(people[-1].subscriber_id)]
    assert renewed, "the lease was never renewed"
    # Every row asked for was still ours and still out.
    assert all(count == asked for count, asked in counts), counts
    # Once the quick five were recorded, only the slow one was renewed.
    assert renewed[-1] == {slow_id}
