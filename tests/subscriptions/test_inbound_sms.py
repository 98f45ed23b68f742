"""Inbound SMS through the Twilio webhook, signed as Twilio signs it."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.app import create_app
from services.subscriptions.inbound_sms import SmsCommand, parse_sms
from services.subscriptions.models import Response, Subscriber, Suppression
from tests.subscriptions.conftest import (
    PUBLIC_URL,
    action_published,
    add_recipient,
    add_subscriber,
    known_action,
    outbox,
    service_settings,
    twilio_headers,
)

PHONE = "+447911123456"
WEBHOOK = "/webhooks/twilio/sms"


async def sms(
    client: httpx.AsyncClient, body: str, *, sender: str = PHONE, sid: str = "SM0001"
) -> httpx.Response:
    params = {"From": sender, "To": "+15005550006", "Body": body, "MessageSid": sid}
    response = await client.post(WEBHOOK, data=params, headers=twilio_headers(params))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return response


def reply_text(response: httpx.Response) -> str | None:
    root = ET.fromstring(response.text)
    assert root.tag == "Response"
    message = root.find("Message")
    return None if message is None else (message.text or "")


async def subscriber(sessionmaker: async_sessionmaker[AsyncSession]) -> Subscriber:
    async with sessionmaker() as session:
        return (await session.execute(select(Subscriber))).scalar_one()


async def suppressed(sessionmaker: async_sessionmaker[AsyncSession]) -> list[str]:
    async with sessionmaker() as session:
        return list((await session.execute(select(Suppression.address))).scalars())


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("YES", SmsCommand("confirm")),
        (" yes. ", SmsCommand("confirm")),
        ("Stop", SmsCommand("opt_out")),
        ("stopall", SmsCommand("opt_out")),
        ("Unsubscribe", SmsCommand("opt_out")),
        ("cancel", SmsCommand("opt_out")),
        ("END", SmsCommand("opt_out")),
        ("quit!", SmsCommand("opt_out")),
        ("START", SmsCommand("opt_in")),
        ("help", SmsCommand("help")),
        ("DONE", SmsCommand("report", 1)),
        ("sent", SmsCommand("report", 1)),
        ("Done 3", SmsCommand("report", 3)),
        ("SENT  2", SmsCommand("report", 2)),
        ("done50", SmsCommand("report", 50)),
        ("DONE 51", SmsCommand("bad_report")),
        ("DONE 0", SmsCommand("bad_report")),
        ("I wrote to the embassy", SmsCommand("unknown")),
        ("", SmsCommand("unknown")),
    ],
)
def test_keywords(body: str, expected: SmsCommand) -> None:
    assert parse_sms(body) == expected


async def test_signatures_are_checked(client: httpx.AsyncClient) -> None:
    params = {"From": PHONE, "Body": "STOP", "MessageSid": "SM1"}
    forged = twilio_headers(params, token="not-the-token")
    assert (await client.post(WEBHOOK, data=params, headers=forged)).status_code == 403
    assert (await client.post(WEBHOOK, data=params)).status_code == 403
    # Signed for other parameters than those sent.
    other = twilio_headers({**params, "Body": "HELP"})
    assert (await client.post(WEBHOOK, data=params, headers=other)).status_code == 403
    assert (await client.post(WEBHOOK, content=b"\x00\xff", headers=forged)).status_code == 403


async def test_yes_confirms_stop_opts_out_start_opts_back_in(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await client.post(
        "/api/v1/subscribers", json={"phone": "07911 123456", "country": "GB", "name": "Ana"}
    )
    assert (await subscriber(sessionmaker)).sms_status == "pending"

    confirmed = await sms(client, " yes ")
    assert "Thank you" in (reply_text(confirmed) or "")
    assert (await subscriber(sessionmaker)).sms_status == "confirmed"

    for stop in ("STOP", "stop", "Stop"):
        assert reply_text(await sms(client, stop)) is None  # nothing reaches them after STOP
        assert (await subscriber(sessionmaker)).sms_status == "unsubscribed"
        assert await suppressed(sessionmaker) == [PHONE]
    # Not even an answer to HELP or DONE until they opt back in.
    assert reply_text(await sms(client, "HELP")) is None
    assert reply_text(await sms(client, "DONE 2")) is None

    back = await sms(client, "START")
    assert "subscribed again" in (reply_text(back) or "")
    assert (await subscriber(sessionmaker)).sms_status == "confirmed"
    assert await suppressed(sessionmaker) == []


async def test_stop_from_an_unknown_number_is_remembered(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await sms(client, "STOP", sender="+447700900123")
    assert await suppressed(sessionmaker) == ["+447700900123"]

    # A later sign-up of that number sends no SMS until START.
    await client.post("/api/v1/subscribers", json={"phone": "+447700900123", "country": "GB"})
    assert await outbox(sessionmaker, "dispatch.message") == []


async def test_help_and_unknown_messages_get_a_friendly_answer(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    help_text = reply_text(await sms(client, "HELP"))
    assert help_text is not None and "STOP" in help_text
    unknown = reply_text(await sms(client, "DONE", sender="+447700900999"))
    assert unknown is not None and "/signup" in unknown
    async with sessionmaker() as session:
        await add_subscriber(session, phone=PHONE, sms_status="confirmed")
        await session.commit()
    puzzled = reply_text(await sms(client, "what is this <b>?"))
    assert puzzled is not None and "HELP" in puzzled
    nothing_yet = reply_text(await sms(client, "DONE"))
    assert nothing_yet is not None and "nothing to count" in nothing_yet
    too_many = reply_text(await sms(client, "DONE 99"))
    assert too_many is not None and "1 to 50" in too_many


async def test_done_reports_on_the_latest_action_sent_by_sms_once_per_message(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    older = action_published(reference="UA 10/26")
    latest = action_published(reference="UA 11/26")
    email_only = action_published(reference="UA 12/26")
    async with sessionmaker() as session:
        ana = await add_subscriber(session, phone=PHONE, sms_status="confirmed", country="IE")
        actions = [known_action(e) for e in (older, latest, email_only)]
        session.add_all(actions)
        await session.flush()
        await add_recipient(session, actions[0], ana, email=False, sms=True)
        await add_recipient(session, actions[1], ana, email=False, sms=True)
        await add_recipient(session, actions[2], ana, email=True, sms=False)
        await session.commit()

    first = await sms(client, "DONE 3", sid="SMaaa")
    assert "3 actions for UA 11/26" in (reply_text(first) or "")
    retried = await sms(client, "DONE 3", sid="SMaaa")  # Twilio retried the webhook
    assert "3 actions" in (reply_text(retried) or "")
    await sms(client, "sent", sid="SMbbb")

    async with sessionmaker() as session:
        responses = (await session.execute(select(Response))).scalars().all()
    assert sorted((r.action_id, r.kind, r.count, r.source) for r in responses) == sorted(
        [
            (latest.action_id, "sms_reply", 3, "sms"),
            (latest.action_id, "sms_reply", 1, "sms"),
        ]
    )
    recorded = await outbox(sessionmaker, "response.recorded")
    assert sorted(m["count"] for m in recorded) == [1, 3]
    assert {m["action_id"] for m in recorded} == {str(latest.action_id)}
    assert {m["country"] for m in recorded} == {"IE"}
    assert {m["message_id"] for m in recorded} == {str(r.id) for r in responses}


async def test_no_auth_token_configured_means_every_webhook_is_refused(
    subscriptions_db: str,
) -> None:
    app = create_app(service_settings(subscriptions_db, twilio_auth_token=None))
    params = {"From": PHONE, "Body": "STOP", "MessageSid": "SM1"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
            empty_token = twilio_headers(params, token="")
            response = await http.post(WEBHOOK, data=params, headers=empty_token)
    assert response.status_code == 403
