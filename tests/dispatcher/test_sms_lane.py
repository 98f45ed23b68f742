"""The SMS lane (contract §11): alert SMS go before confirmation SMS on the SMS rate, and at most
``UANET_CONFIRMATION_SMS_PER_HOUR`` confirmation SMS go out an hour, all dispatchers together
(counted in the database); the rest wait for the next hour, until a day after their sign-up."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.models import (
    CANCELLED,
    RETRY,
    SENT,
    ConfirmationSmsHour,
    TransactionalDelivery,
)
from services.dispatcher.sms_lane import (
    BUDGET_MAX_WAIT,
    BUDGET_SPENT_DELAY,
    LANE_BUSY_DELAY,
    SharedAlertMark,
    SmsLane,
)
from services.dispatcher.throttle import RateLimiter
from shared.db import utcnow
from shared.events import TransactionalMessage
from shared.messaging import Delivery, Retry

from .conftest import FakeSmsSender, make_dispatcher, migrated

Maker = async_sessionmaker[AsyncSession]
AMQP_DELIVERY = Delivery(queue="dispatcher.messages", routing_key="dispatch.message", attempt=0)


def confirm_sms(n: int) -> TransactionalMessage:
    return TransactionalMessage(
        template="confirm_sms", channel="sms", to=f"+4474001234{n:02d}", language="en"
    )


async def test_alerts_under_way_go_before_every_confirmation_that_arrives_meanwhile() -> None:
    """Four alert workers send ten SMS each, one after another (as a batch's workers do);
    confirmations arrive once the first alert is out."""
    lane = SmsLane(RateLimiter(Decimal(100)), grace=0.3)
    order: list[str] = []
    first_alert = asyncio.Event()

    async def alert_worker() -> None:
        for _ in range(10):
            await lane.alert(1)
            order.append("alert")
            first_alert.set()
            await asyncio.sleep(0)  # the send itself

    async def confirmation() -> None:
        await first_alert.wait()
        assert await lane.confirmation(1)
        order.append("confirmation")

    await asyncio.gather(*(alert_worker() for _ in range(4)), *(confirmation() for _ in range(20)))

    assert order == ["alert"] * 40 + ["confirmation"] * 20


async def test_a_confirmation_that_waits_too_long_books_nothing() -> None:
    rate = RateLimiter(Decimal(50))
    lane = SmsLane(rate, grace=0.0, patience=0.05)
    # A second's burst goes at once; the next half second's alerts wait for their slots.
    alerts = [asyncio.create_task(lane.alert(1)) for _ in range(75)]
    await asyncio.sleep(0)

    assert await lane.confirmation(1) is False

    await asyncio.gather(*alerts)
    lane.patience = 5.0
    assert await lane.confirmation(1) is True


async def test_confirmation_sms_stay_within_the_hourly_budget_of_all_dispatchers(
    sessionmaker: Maker,
) -> None:
    sms = FakeSmsSender()
    dispatchers = [make_dispatcher(sessionmaker, sms=sms) for _ in range(2)]
    for dispatcher in dispatchers:
        dispatcher.confirmation_sms_per_hour = 3
    messages = [confirm_sms(n) for n in range(5)]

    waiting = []
    for n, message in enumerate(messages):
        try:
            await dispatchers[n % 2].handle_transactional(message, AMQP_DELIVERY)
        except Retry as retry:
            assert (retry.defer, retry.delay) == (True, BUDGET_SPENT_DELAY)
            waiting.append(message)
    assert len(sms.sent) == 3
    assert len(waiting) == 2
    # Still this hour: they keep waiting (deferred, not failed, not dropped).
    for message in waiting:
        with pytest.raises(Retry):
            await dispatchers[0].handle_transactional(message, AMQP_DELIVERY)

    # The next hour: this hour's row is an hour old.
    async with sessionmaker() as session, session.begin():
        row = (await session.execute(select(ConfirmationSmsHour))).scalar_one()
        row.hour -= timedelta(hours=1)
    for message in waiting:
        await dispatchers[1].handle_transactional(message, AMQP_DELIVERY)
    assert sorted(to for to, _ in sms.sent) == sorted(m.to for m in messages)
    async with sessionmaker() as session:
        hours = (await session.execute(select(ConfirmationSmsHour.sent))).scalars().all()
    assert sorted(hours) == [2, 3]


async def test_a_confirmation_that_waited_a_day_for_budget_is_given_up_once(
    sessionmaker: Maker,
) -> None:
    """A flood's backlog must not spend the next days' budgets: a day after the sign-up, a
    confirmation still waiting is recorded as given up and never sent, whatever redelivers it."""
    sms = FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, sms=sms)
    dispatcher.confirmation_sms_per_hour = 1
    fresh = confirm_sms(1)
    stale = confirm_sms(2).model_copy(
        update={"occurred_at": utcnow() - BUDGET_MAX_WAIT - timedelta(minutes=1)}
    )

    for _ in range(2):  # redelivered: the same answer, nothing counted
        await dispatcher.handle_transactional(stale, AMQP_DELIVERY)
    await dispatcher.handle_transactional(fresh, AMQP_DELIVERY)

    assert [to for to, _ in sms.sent] == [fresh.to]  # the budget went to the fresh one
    async with sessionmaker() as session:
        row = await session.get(TransactionalDelivery, str(stale.message_id))
    assert row is not None and (row.status, row.error_code) == (CANCELLED, "expired")


async def test_a_confirmation_held_back_by_an_alert_goes_later_and_counts_once(
    sessionmaker: Maker,
) -> None:
    sms = FakeSmsSender()
    dispatcher = make_dispatcher(sessionmaker, sms=sms)
    dispatcher.confirmation_sms_per_hour = 10
    dispatcher.sms_rate = RateLimiter(Decimal(50))
    dispatcher.sms_lane = SmsLane(dispatcher.sms_rate, grace=0.0, patience=0.05)
    message = confirm_sms(1)
    alerts = [asyncio.create_task(dispatcher.sms_lane.alert(1)) for _ in range(75)]
    await asyncio.sleep(0)

    with pytest.raises(Retry) as held:
        await dispatcher.handle_transactional(message, AMQP_DELIVERY)
    assert (held.value.defer, held.value.delay) == (True, LANE_BUSY_DELAY)
    assert sms.sent == []
    async with sessionmaker() as session:
        row = await session.get(TransactionalDelivery, str(message.message_id))
        assert row is not None and row.status == RETRY

    await asyncio.gather(*alerts)
    dispatcher.sms_lane.patience = 5.0
    await dispatcher.handle_transactional(message, AMQP_DELIVERY)
    assert [to for to, _ in sms.sent] == [message.to]
    async with sessionmaker() as session:
        row = await session.get(TransactionalDelivery, str(message.message_id))
        assert row is not None and row.status == SENT
        assert (await session.execute(select(ConfirmationSmsHour.sent))).scalar_one() == 1


async def test_confirmations_in_another_dispatcher_wait_for_its_alerts(
    pg_database: Callable[[], str],
) -> None:
    """Two dispatchers on one PostgreSQL database: the one with no alert of its own still lets
    the other's alerts go first (the shared mark), each with its own rate here so that only the
    mark can hold the confirmations back."""
    sessionmaker = await migrated(pg_database())
    try:
        alerting = SmsLane(
            RateLimiter(Decimal(100)), grace=0.3, shared=SharedAlertMark(sessionmaker, hold=0.5)
        )
        confirming = SmsLane(
            RateLimiter(Decimal(100)), grace=0.3, shared=SharedAlertMark(sessionmaker, hold=0.5)
        )
        order: list[str] = []
        first_alert = asyncio.Event()

        async def alert_worker() -> None:
            for _ in range(40):
                await alerting.alert(1)
                order.append("alert")
                first_alert.set()
                await asyncio.sleep(0.005)  # the send itself

        async def confirmation() -> None:
            await first_alert.wait()
            assert await confirming.confirmation(1)
            order.append("confirmation")

        await asyncio.gather(
            *(alert_worker() for _ in range(4)), *(confirmation() for _ in range(10))
        )
        assert order == ["alert"] * 160 + ["confirmation"] * 10
    finally:
        await sessionmaker.kw["bind"].dispose()
