"""The service as it runs: consumers over a real RabbitMQ, SMTP on loopback, the Twilio-compatible
endpoint, and the status webhook."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from devtools.twilio_fake import FakeTwilio
from services.dispatcher.app import create_app
from services.dispatcher.identity import MessageRef, MessageTags
from services.dispatcher.models import Delivery, Outbox
from shared.messaging import Broker, list_dead_letters
from shared.migrations import upgrade
from shared.settings import Settings
from tests.support import SmtpRecorder, eventually

from .conftest import action_published, batch, recipient

SID = "AC" + "2" * 32
TOKEN = "status-token"
PUBLIC = "https://dispatch.example.org"
CALLBACK_URL = f"{PUBLIC}/webhooks/twilio/status"


@pytest.fixture
def smtp() -> Iterator[SmtpRecorder]:
    server = SmtpRecorder()
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def twilio() -> AsyncIterator[FakeTwilio]:
    fake = FakeTwilio(account_sid=SID, auth_token=TOKEN)
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def service_settings(
    make_settings: Callable[..., Settings], tmp_path: Path, smtp: SmtpRecorder, twilio: FakeTwilio
) -> Settings:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dispatcher.db'}"
    await asyncio.to_thread(upgrade, "dispatcher", url)
    return make_settings(
        dispatcher_database_url=url,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        mail_from="Urgent Action Network <alerts@example.org>",
        twilio_account_sid=SID,
        twilio_auth_token=TOKEN,
        twilio_from="+15005550006",
        twilio_api_base=twilio.base_url,
        dispatcher_public_url=PUBLIC,
        email_rate=0,
        sms_rate=0,
    )


@asynccontextmanager
async def running(
    settings: Settings, **options: Any
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, Broker]]:
    app = create_app(settings, **options)
    async with app.router.lifespan_context(app):
        await app.state.runtime.wait_started()
        broker = Broker(settings.amqp_url, name="test-publisher")
        await broker.connect()
        transport = httpx.ASGITransport(app=app)
        try:
            async with httpx.AsyncClient(transport=transport, base_url=PUBLIC) as client:
                yield app, client, broker
        finally:
            await broker.close()


def consumed(outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "uanet_messages_consumed_total", {"queue": "dispatcher.batches", "outcome": outcome}
    )
    return value or 0.0


def signed(params: dict[str, str], token: str = TOKEN) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(CALLBACK_URL, params)}


async def test_batch_twice_over_rabbitmq_sends_one_email_each(
    service_settings: Settings, smtp: SmtpRecorder
) -> None:
    async with running(service_settings) as (app, _, broker):
        action = action_published()
        people = [recipient(), recipient(language="fr")]
        command = batch(action, people)
        before = consumed("ok")
        await broker.publish_event(action)
        await broker.publish_event(command)
        await broker.publish_event(command)  # the broker redelivers, or a publisher repeats
        await eventually(lambda: consumed("ok") >= before + 2, what="both batches handled")
        await eventually(lambda: all(smtp.to(p.address) for p in people), what="emails")
        for person in people:
            [mail] = smtp.to(person.address)
            assert mail.header("List-Unsubscribe") == f"<{person.unsubscribe_url}>"
            assert mail.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
            assert person.act_url in mail.links() and person.unsubscribe_url in mail.links()
        assert "Action urgente" in smtp.to(people[1].address)[0].header("Subject")

        sessionmaker = app.state.runtime.sessionmaker

        async def reported() -> list[Outbox]:
            async with sessionmaker() as session:
                rows = await session.scalars(
                    select(Outbox).where(Outbox.routing_key == "delivery.reported")
                )
                return list(rows)

        # Outcomes are committed as they come (group commit): one report or several, but the
        # two sends are counted exactly once in all.
        def sent_total(rows: list[Outbox]) -> int:
            return sum(json.loads(row.body)["sent"] for row in rows)

        async def all_reported() -> list[Outbox]:
            rows = await reported()
            return rows if sent_total(rows) >= 2 else []

        await eventually(all_reported, what="DeliveriesReported")
        assert sent_total(await reported()) == 2
        # The relay publishes it.
        await eventually(lambda: _published(sessionmaker), what="outbox relayed")


async def _published(sessionmaker: object) -> bool:
    async with sessionmaker() as session:  # type: ignore[operator]
        rows = await session.scalars(select(Outbox.published_at))
        return all(row is not None for row in rows)


async def test_malformed_batch_is_dead_lettered_and_consumer_goes_on(
    service_settings: Settings, smtp: SmtpRecorder
) -> None:
    async with running(service_settings) as (_, _, broker):
        await broker.publish("dispatch.batch", b'{"action_id": "not-a-uuid"}', message_id="bad-1")
        letters = await eventually(
            lambda: list_dead_letters(service_settings.amqp_url), what="dead letter"
        )
        assert letters[0].message_id == "bad-1"
        assert letters[0].queue == "dispatcher.batches"
        assert "malformed" in letters[0].reason
        action = action_published()
        person = recipient()
        await broker.publish_event(action)
        await broker.publish_event(batch(action, [person]))
        await eventually(lambda: smtp.to(person.address), what="the next batch's email")


async def test_sms_through_twilio_then_delivered_by_status_callback(
    service_settings: Settings, twilio: FakeTwilio
) -> None:
    async with running(service_settings) as (app, client, broker):
        action = action_published()
        phone = recipient("sms", address="+447700900555")
        twilio.failures[phone.address] = [(429, 20429)]  # first attempt: too many requests
        await broker.publish_event(action)
        await broker.publish_event(batch(action, [phone]))
        await eventually(lambda: twilio.messages, timeout=30, what="SMS after retry")
        [sms] = twilio.messages
        assert sms.body.startswith("Journalist at risk of torture in Iran. Act now: ")
        assert phone.act_url and phone.act_url in sms.body
        assert sms.body.endswith("Reply STOP to opt out")
        assert sms.status_callback == CALLBACK_URL
        sessionmaker = app.state.runtime.sessionmaker

        async def row_status() -> str | None:
            async with sessionmaker() as session:
                status: str | None = await session.scalar(
                    select(Delivery.status).where(Delivery.provider_message_id == sms.sid)
                )
                return status

        await eventually(lambda: _is(row_status(), "sent"), what="sid recorded")

        params = {"MessageSid": sms.sid, "MessageStatus": "delivered", "AccountSid": SID}
        forged = await client.post(
            "/webhooks/twilio/status", data=params, headers=signed(params, "wrong-token")
        )
        assert forged.status_code == 403
        assert await row_status() == "sent"
        unsigned = await client.post("/webhooks/twilio/status", data=params)
        assert unsigned.status_code == 403

        response = await client.post("/webhooks/twilio/status", data=params, headers=signed(params))
        assert response.status_code == 200
        assert await row_status() == "delivered"
        again = await client.post("/webhooks/twilio/status", data=params, headers=signed(params))
        assert again.status_code == 200
        unknown = {"MessageSid": "SM" + "0" * 32, "MessageStatus": "delivered"}
        ignored = await client.post(
            "/webhooks/twilio/status", data=unknown, headers=signed(unknown)
        )
        assert ignored.status_code == 200

        async with sessionmaker() as session:
            changes = list(
                await session.scalars(
                    select(Outbox.body).where(Outbox.routing_key == "delivery.status")
                )
            )
        assert [json.loads(c)["status"] for c in changes] == ["delivered"]
        health = await client.get("/readyz")
        assert health.status_code == 200


async def _is(value: Awaitable[str | None], expected: str) -> bool:
    return (await value) == expected


async def test_opted_out_number_is_suppressed(
    service_settings: Settings, twilio: FakeTwilio
) -> None:
    async with running(service_settings) as (app, _, broker):
        action = action_published()
        phone = recipient("sms", address="+447700900556")
        twilio.failures[phone.address] = [(400, 21610)]
        await broker.publish_event(action)
        await broker.publish_event(batch(action, [phone]))
        sessionmaker = app.state.runtime.sessionmaker

        async def suppressed() -> list[dict[str, object]]:
            async with sessionmaker() as session:
                rows = await session.scalars(
                    select(Outbox.body).where(Outbox.routing_key == "recipient.suppressed")
                )
                return [json.loads(r) for r in rows]

        [event] = await eventually(lambda: suppressed(), what="suppression")
        assert (event["reason"], event["channel"], event["subscriber_id"]) == (
            "opted_out",
            "sms",
            str(phone.subscriber_id),
        )
        assert twilio.messages == []


async def test_status_webhook_refuses_everything_without_an_auth_token(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dispatcher.db'}"
    await asyncio.to_thread(upgrade, "dispatcher", url)
    settings = make_settings(dispatcher_database_url=url, dispatcher_public_url=PUBLIC)
    async with running(settings) as (_, client, _):
        params = {"MessageSid": "SM1", "MessageStatus": "delivered"}
        response = await client.post(
            "/webhooks/twilio/status", data=params, headers=signed(params, "")
        )
        assert response.status_code == 403


async def test_an_alert_sent_again_after_a_crash_is_the_same_message(
    service_settings: Settings, smtp: SmtpRecorder
) -> None:
    """The Message-ID and the VERP sender are fixed by the ledger row (what the message is):
    a row left ``sending`` by a dead process is sent again as the same message."""
    settings = service_settings.model_copy(
        update={"bounce_address": "bounces@example.org", "secret_key": SecretStr("k" * 32)}
    )
    async with running(settings) as (app, _, broker):
        action = action_published()
        person = recipient()
        await broker.publish_event(action)
        await broker.publish_event(batch(action, [person]))
        await eventually(lambda: smtp.to(person.address), what="the alert")
        sessionmaker = app.state.runtime.sessionmaker
        async with sessionmaker() as session, session.begin():
            [row] = (await session.scalars(select(Delivery))).all()
            # As a SIGKILL between the relay's 250 and our commit leaves it: sending, lease over.
            row.status, row.updated_at = "sending", datetime.now(UTC) - timedelta(minutes=1)
            row_id = row.id
        await broker.publish_event(batch(action, [person]))  # redelivered after the crash
        await eventually(lambda: len(smtp.to(person.address)) == 2, what="the resend")

    first, again = smtp.to(person.address)
    tags = MessageTags("k" * 32, domain="example.org", bounce_address="bounces@example.org")
    ref = MessageRef.delivery(row_id)
    assert first.header("Message-ID") == again.header("Message-ID") == tags.message_id(ref)
    assert first.mail_from == again.mail_from == tags.envelope_sender(ref)
    assert tags.from_bounce_address(first.mail_from) == ref
