"""Held messages over a real database (SQLite and PostgreSQL): quiet hours for standard SMS and
daily digests, released by the scheduler as an injected clock moves."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import uuid
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.models import Delivery, DigestDelivery, Outbox
from services.dispatcher.schedule import HELD_ATTEMPTS, HELD_RETRY_DELAY
from services.dispatcher.scheduler import Scheduler
from services.dispatcher.senders import SendResult
from shared.db import outbox_row
from shared.events import ActionClosed, RecipientSuppressed, SubscriberErased, UpdateContent

from .conftest import (
    AMQP_DELIVERY,
    FakeEmailSender,
    FakeSmsSender,
    ManualClock,
    action_published,
    action_updated,
    batch,
    make_dispatcher,
    recipient,
)

Maker = async_sessionmaker[AsyncSession]
LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")


def at(zone: ZoneInfo, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, minute, tzinfo=zone).astimezone(UTC)


async def reported(maker: Maker) -> list[tuple[str, str, int, int]]:
    """The DeliveriesReported events in the outbox: (action, channel, sent, failed)."""
    async with maker() as session:
        bodies = await session.scalars(
            select(Outbox.body).where(Outbox.routing_key == "delivery.reported")
        )
        events = [json.loads(body) for body in bodies]
    return sorted((e["action_id"], e["channel"], e["sent"], e["failed"]) for e in events)


async def statuses(maker: Maker) -> dict[tuple[str, str, str], str]:
    async with maker() as session:
        rows = await session.scalars(select(Delivery))
        return {(r.action_id, r.subscriber_id, r.channel): r.status for r in rows}


def parsed(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


async def test_standard_sms_at_night_waits_for_0800_and_urgent_goes_at_once(
    sessionmaker: Maker,
) -> None:
    clock = ManualClock(at(LONDON, 15, 23))
    sms = FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, sms=sms, clock=clock)
    scheduler = Scheduler(dispatcher)
    standard = action_published(urgency="standard")
    urgent = action_published(urgency="urgent", reference="UA 13/26")
    night_owl = recipient("sms", address="+447700900001", timezone="Europe/London")
    # Subscriptions leaves the zone out of urgent alerts: they go whatever the hour.
    urgent_owl = night_owl.model_copy(update={"timezone": None})
    for action in (standard, urgent):
        await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(standard, [night_owl]), AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(urgent, [urgent_owl]), AMQP_DELIVERY)
    assert [to for to, _ in sms.sent] == [night_owl.address]  # the urgent one only
    assert (await statuses(sessionmaker))[
        (str(standard.action_id), str(night_owl.subscriber_id), "sms")
    ] == "scheduled"
    assert await reported(sessionmaker) == [(str(urgent.action_id), "sms", 1, 0)]

    # The batch again (a redelivery) holds nothing twice and sends nothing.
    await dispatcher.handle_batch(batch(standard, [night_owl]), AMQP_DELIVERY)
    clock.set(at(LONDON, 16, 7, 59))
    assert (await scheduler.run_once()).sms == 0
    assert len(sms.sent) == 1

    clock.set(at(LONDON, 16, 8, 0))
    assert (await scheduler.run_once()).sms == 1
    assert len(sms.sent) == 2
    assert sms.sent[1][1].startswith("Journalist at risk of torture in Iran.")
    assert await reported(sessionmaker) == sorted(
        [(str(urgent.action_id), "sms", 1, 0), (str(standard.action_id), "sms", 1, 0)]
    )
    assert (await scheduler.run_once()).sms == 0  # sent once
    async with sessionmaker() as session:
        row = await session.scalar(
            select(Delivery).where(Delivery.action_id == str(standard.action_id))
        )
        assert row is not None and row.status == "sent" and row.held is None


async def test_held_sms_found_due_at_night_waits_again(sessionmaker: Maker) -> None:
    clock = ManualClock(at(NEW_YORK, 15, 22))
    sms = FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, sms=sms, clock=clock)
    action = action_published(urgency="standard")
    person = recipient("sms", address="+12025550100", timezone="America/New_York")
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [person]), AMQP_DELIVERY)
    # No dispatcher ran all day: at 22:00 the next evening the row is due, but it is night.
    clock.set(at(NEW_YORK, 16, 22))
    assert (await Scheduler(dispatcher).run_once()).sms == 0
    assert sms.sent == []
    async with sessionmaker() as session:
        due = await session.scalar(select(Delivery.not_before))
    assert due == at(NEW_YORK, 17, 8)


async def test_closing_cancels_held_sms_and_digest_alerts(sessionmaker: Maker) -> None:
    clock = ManualClock(at(LONDON, 15, 23))
    email_sender, sms = FakeEmailSender(), FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, email_sender, sms, clock=clock)
    action = action_published(urgency="standard")
    phone = recipient("sms", address="+447700900002", timezone="Europe/London")
    reader = recipient(timezone="Europe/London", frequency="daily_digest")
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [phone, reader]), AMQP_DELIVERY)
    assert set((await statuses(sessionmaker)).values()) == {"scheduled", "digest"}
    closed = ActionClosed(
        action_id=action.action_id,
        update_id=action.action_id,
        reference=action.reference,
        outcome="released",
        default_language="en",
    )
    await dispatcher.handle_action_event(closed, AMQP_DELIVERY)
    assert set((await statuses(sessionmaker)).values()) == {"cancelled"}
    clock.set(at(LONDON, 16, 10))
    released = await Scheduler(dispatcher).run_once()
    assert (released.sms, released.digests) == (0, 0)
    assert sms.sent == [] and email_sender.sent == []
    async with sessionmaker() as session:
        assert (
            list(await session.scalars(select(Delivery.held).where(Delivery.held.is_not(None))))
            == []
        )


async def test_a_follow_up_never_overtakes_a_held_alert_nor_reaches_one_it_missed(
    sessionmaker: Maker,
) -> None:
    clock = ManualClock(at(LONDON, 15, 12))
    email_sender = FakeEmailSender()
    dispatcher = make_dispatcher(sessionmaker, email_sender, clock=clock)
    scheduler = Scheduler(dispatcher)
    action = action_published(urgency="standard")
    reader = recipient(timezone="Europe/London", frequency="daily_digest")
    prompt = recipient(timezone="Europe/London")
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [reader, prompt]), AMQP_DELIVERY)
    assert [m for m in email_sender.sent if m[1] == reader.address] == []
    update = action_updated(action)
    await dispatcher.handle_action_event(update, AMQP_DELIVERY)
    kind = f"update:{update.update_id}"
    await dispatcher.handle_batch(batch(action, [reader, prompt], kind=kind), AMQP_DELIVERY)
    # The one who has the alert gets the update at once; the digest reader only after the digest.
    assert len(email_sender.to(prompt.address)) == 2
    assert email_sender.to(reader.address) == []
    clock.set(at(LONDON, 16, 9))
    await scheduler.run_once()
    [digest] = email_sender.to(reader.address)
    assert "daily Urgent Action digest" in str(parsed(digest)["Subject"])
    clock.set(at(LONDON, 16, 9, 1))
    await scheduler.run_once()
    [_, follow_up] = email_sender.to(reader.address)
    assert parsed(follow_up)["Subject"] == "New information"

    # A later action closes before the reader's digest: the outcome does not reach them.
    later = action_published(urgency="standard", reference="UA 30/26")
    await dispatcher.handle_action_event(later, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(later, [reader, prompt]), AMQP_DELIVERY)
    closed = ActionClosed(
        action_id=later.action_id,
        update_id=later.action_id,
        reference=later.reference,
        outcome="released",
        default_language="en",
        content={"en": UpdateContent(subject="Released", body="Thank you")},
    )
    await dispatcher.handle_action_event(closed, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(later, [reader, prompt], kind="closed"), AMQP_DELIVERY)
    assert parsed(email_sender.to(prompt.address)[-1])["Subject"] == "Released"
    assert len(email_sender.to(reader.address)) == 2
    states = await statuses(sessionmaker)
    async with sessionmaker() as session:
        outcome_rows = {
            r.subscriber_id: r.status
            for r in await session.scalars(
                select(Delivery).where(
                    Delivery.action_id == str(later.action_id), Delivery.message_kind == "closed"
                )
            )
        }
    assert states[(str(later.action_id), str(reader.subscriber_id), "email")] == "cancelled"
    assert outcome_rows == {
        str(reader.subscriber_id): "cancelled",
        str(prompt.subscriber_id): "sent",
    }


async def test_two_dispatchers_release_one_held_sms_once(sessionmaker: Maker) -> None:
    clock = ManualClock(at(LONDON, 15, 23))
    sms = FakeSmsSender()
    first = make_dispatcher(sessionmaker, sms=sms, clock=clock)
    second = make_dispatcher(sessionmaker, sms=sms, clock=clock)
    action = action_published(urgency="standard")
    people = [
        recipient("sms", address=f"+4477009001{n:02d}", timezone="Europe/London") for n in range(30)
    ]
    await first.handle_action_event(action, AMQP_DELIVERY)
    await first.handle_batch(batch(action, people), AMQP_DELIVERY)
    clock.set(at(LONDON, 16, 8))
    # Small pages, so the two really interleave on the same rows.
    one, two = await asyncio.gather(
        Scheduler(first, page_size=7).run_once(), Scheduler(second, page_size=7).run_once()
    )
    assert one.sms + two.sms == len(people)
    assert sorted(to for to, _ in sms.sent) == sorted(p.address for p in people)
    assert sum(sent for _, _, sent, _ in await reported(sessionmaker)) == len(people)


async def test_a_released_sms_whose_sender_died_is_taken_back(sessionmaker: Maker) -> None:
    clock = ManualClock(at(LONDON, 15, 23))
    sms = FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, sms=sms, clock=clock)
    action = action_published(urgency="standard")
    person = recipient("sms", address="+447700900003", timezone="Europe/London")
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [person]), AMQP_DELIVERY)
    # A dispatcher claimed it at 08:00 and died before sending: ``sending``, its lease run out.
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Delivery).values(
                status="sending",
                claim_token="dead",
                updated_at=datetime.now(UTC) - timedelta(minutes=1),
            )
        )
    clock.set(at(LONDON, 16, 8, 30))
    assert (await Scheduler(dispatcher).run_once()).sms == 1
    assert [to for to, _ in sms.sent] == [person.address]


async def test_a_temporary_failure_of_a_held_sms_goes_back_to_the_schedule(
    sessionmaker: Maker,
) -> None:
    clock = ManualClock(at(LONDON, 15, 23))
    sms = FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, sms=sms, clock=clock)
    scheduler = Scheduler(dispatcher)
    action = action_published(urgency="standard")
    person = recipient("sms", address="+447700900004", timezone="Europe/London")
    sms.script[person.address] = [SendResult.temporary("twilio:20429")]
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [person]), AMQP_DELIVERY)
    clock.set(at(LONDON, 16, 8))
    await scheduler.run_once()
    assert sms.sent == []
    async with sessionmaker() as session:
        row = await session.scalar(select(Delivery))
    assert row is not None and row.status == "scheduled" and row.held is not None
    assert await reported(sessionmaker) == []
    clock.set(at(LONDON, 16, 8, 5))
    assert (await scheduler.run_once()).sms == 1
    assert [to for to, _ in sms.sent] == [person.address]
    assert await reported(sessionmaker) == [(str(action.action_id), "sms", 1, 0)]


async def test_a_held_sms_that_keeps_failing_is_given_up_after_an_hour(
    sessionmaker: Maker,
) -> None:
    clock = ManualClock(at(LONDON, 15, 23))
    sms = FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, sms=sms, clock=clock)
    scheduler = Scheduler(dispatcher)
    action = action_published(urgency="standard")
    person = recipient("sms", address="+447700900005", timezone="Europe/London")
    sms.script[person.address] = [SendResult.temporary("twilio:500")] * 20
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [person]), AMQP_DELIVERY)
    for tick in range(HELD_ATTEMPTS + 3):
        clock.set(at(LONDON, 16, 8) + tick * HELD_RETRY_DELAY)
        await scheduler.run_once()
    async with sessionmaker() as session:
        row = await session.scalar(select(Delivery))
    assert row is not None and row.status == "failed" and row.held is None
    assert (row.attempts, row.error_code) == (HELD_ATTEMPTS, "twilio:500")
    assert len(sms.script[person.address]) == 20 - HELD_ATTEMPTS  # no try after the last
    assert await reported(sessionmaker) == [(str(action.action_id), "sms", 0, 1)]


async def test_digest_subscriber_gets_one_email_at_0900_with_the_new_standard_actions(
    sessionmaker: Maker,
) -> None:
    clock = ManualClock(at(NEW_YORK, 15, 10))
    email_sender = FakeEmailSender()
    dispatcher = make_dispatcher(sessionmaker, email_sender, clock=clock)
    scheduler = Scheduler(dispatcher)
    first = action_published(urgency="standard", reference="UA 20/26")
    second = action_published(urgency="standard", reference="UA 21/26")
    urgent = action_published(urgency="urgent", reference="UA 22/26")
    reader = recipient(timezone="America/New_York", frequency="daily_digest", language="fr")
    for action in (first, second, urgent):
        await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    links = {}
    for action in (first, second):
        person = reader.model_copy(
            update={"act_url": f"http://localhost:8002/act/{action.reference[3:5]}"}
        )
        links[action.reference] = person.act_url
        await dispatcher.handle_batch(batch(action, [person]), AMQP_DELIVERY)
    await dispatcher.handle_batch(
        batch(urgent, [reader.model_copy(update={"timezone": None})]), AMQP_DELIVERY
    )
    [urgent_mail] = email_sender.to(reader.address)  # urgent: at once
    assert "Action urgente" in str(parsed(urgent_mail)["Subject"])

    clock.set(at(NEW_YORK, 16, 8, 59))
    assert (await scheduler.run_once()).digests == 0
    clock.set(at(NEW_YORK, 16, 9))
    assert (await scheduler.run_once()).digests == 1
    assert (await scheduler.run_once()).digests == 0  # once a day
    mails = email_sender.to(reader.address)
    assert len(mails) == 2
    digest = parsed(mails[1])
    assert digest["Subject"] == "Votre résumé quotidien des Actions urgentes"
    assert digest["List-Unsubscribe"] == f"<{reader.unsubscribe_url}>"
    assert digest["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text = text_of(digest)
    assert "UA 20/26" in text and "UA 21/26" in text and "UA 22/26" not in text
    assert "Action urgente : journaliste en danger" in text and "Résumé." in text
    for link in links.values():
        assert link in text
    assert reader.unsubscribe_url in text
    html = digest.get_body(preferencelist=("html",))
    assert html is not None and 'lang="fr"' in str(html.get_content())
    # Each action in the digest counts as sent for that action.
    assert await reported(sessionmaker) == sorted(
        [
            (str(urgent.action_id), "email", 1, 0),
            (str(first.action_id), "email", 1, 0),
            (str(second.action_id), "email", 1, 0),
        ]
    )

    # An action after today's digest waits for tomorrow's.
    later = action_published(urgency="standard", reference="UA 23/26")
    await dispatcher.handle_action_event(later, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(later, [reader]), AMQP_DELIVERY)
    assert (await scheduler.run_once()).digests == 0
    clock.set(at(NEW_YORK, 17, 9))
    assert (await scheduler.run_once()).digests == 1
    newest = text_of(parsed(email_sender.to(reader.address)[-1]))
    assert "UA 23/26" in newest and "UA 20/26" not in newest


async def test_one_digest_a_day_with_two_dispatchers(sessionmaker: Maker) -> None:
    clock = ManualClock(at(LONDON, 15, 12))
    email_sender = FakeEmailSender()
    first = make_dispatcher(sessionmaker, email_sender, clock=clock)
    second = make_dispatcher(sessionmaker, email_sender, clock=clock)
    actions = [action_published(urgency="standard") for _ in range(2)]
    readers = [recipient(timezone="Europe/London", frequency="daily_digest") for _ in range(12)]
    for action in actions:
        await first.handle_action_event(action, AMQP_DELIVERY)
        await first.handle_batch(batch(action, readers), AMQP_DELIVERY)
    clock.set(at(LONDON, 16, 9))
    one, two = await asyncio.gather(
        Scheduler(first, page_size=5).run_once(), Scheduler(second, page_size=5).run_once()
    )
    assert one.digests + two.digests == len(readers)
    for reader in readers:
        assert len(email_sender.to(reader.address)) == 1
    async with sessionmaker() as session:
        days = list(await session.scalars(select(DigestDelivery)))
    assert len(days) == len(readers) and {d.items for d in days} == {2}


async def test_a_bounced_digest_counts_each_action_failed_and_suppresses(
    sessionmaker: Maker,
) -> None:
    clock = ManualClock(at(LONDON, 15, 12))
    email_sender = FakeEmailSender()
    dispatcher = make_dispatcher(sessionmaker, email_sender, clock=clock)
    action = action_published(urgency="standard")
    reader = recipient(timezone="Europe/London", frequency="daily_digest")
    email_sender.script[reader.address] = [SendResult.failed("smtp:550", "hard_bounce")]
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [reader]), AMQP_DELIVERY)
    clock.set(at(LONDON, 16, 9))
    await Scheduler(dispatcher).run_once()
    assert await reported(sessionmaker) == [(str(action.action_id), "email", 0, 1)]
    async with sessionmaker() as session:
        [body] = await session.scalars(
            select(Outbox.body).where(Outbox.routing_key == "recipient.suppressed")
        )
    assert json.loads(body)["reason"] == "hard_bounce"


async def test_erasure_forgets_held_recipients(sessionmaker: Maker) -> None:
    clock = ManualClock(at(LONDON, 15, 23))
    dispatcher = make_dispatcher(sessionmaker, clock=clock)
    action = action_published(urgency="standard")
    phone = recipient("sms", address="+447700900005", timezone="Europe/London")
    await dispatcher.handle_action_event(action, AMQP_DELIVERY)
    await dispatcher.handle_batch(batch(action, [phone]), AMQP_DELIVERY)
    await dispatcher.handle_action_event(
        SubscriberErased(subscriber_id=phone.subscriber_id), AMQP_DELIVERY
    )
    async with sessionmaker() as session:
        row = await session.scalar(select(Delivery))
    assert row is not None and row.status == "cancelled" and row.held is None


async def test_erasure_forgets_suppression_events_that_name_only_the_address(
    sessionmaker: Maker,
) -> None:
    dispatcher = make_dispatcher(sessionmaker, clock=ManualClock(at(LONDON, 15, 12)))
    erased_id = uuid.uuid4()
    async with sessionmaker() as session, session.begin():
        for subscriber_id, address in (
            (erased_id, "ana@example.net"),  # an alert that bounced
            (None, "ana@example.net"),  # her confirmation, which bounced
            (None, "bo@example.org"),  # someone else's
        ):
            event = RecipientSuppressed(
                subscriber_id=subscriber_id, channel="email", address=address, reason="hard_bounce"
            )
            session.add(outbox_row(Outbox, event))
        # One already published: erasure removes it too.
        await session.execute(update(Outbox).values(published_at=datetime.now(UTC)))

    erased = SubscriberErased(subscriber_id=erased_id, addresses=["ana@example.net"])
    await dispatcher.handle_action_event(erased, AMQP_DELIVERY)

    async with sessionmaker() as session:
        bodies = list(await session.scalars(select(Outbox.body)))
    assert [json.loads(b)["address"] for b in bodies] == ["bo@example.org"]
