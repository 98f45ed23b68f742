"""The fake Twilio against the real ``twilio`` client (v9, async) and real signed webhooks."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from devtools.twilio_fake import FakeTwilio, segments

SID = "AC" + "a1" * 16
TOKEN = "fake-auth-token"
TO = "+447700900123"


@pytest.fixture
async def fake() -> AsyncIterator[FakeTwilio]:
    twilio = FakeTwilio(account_sid=SID, auth_token=TOKEN)
    await twilio.start()
    try:
        yield twilio
    finally:
        await twilio.stop()


@pytest.fixture
async def client(fake: FakeTwilio) -> AsyncIterator[Client]:
    real = Client(SID, TOKEN, http_client=AsyncTwilioHttpClient())
    real.api.base_url = fake.base_url
    try:
        yield real
    finally:
        await real.http_client.close()  # type: ignore[attr-defined]


@dataclass
class Webhooks:
    """A loopback receiver that checks ``X-Twilio-Signature`` the way the services do."""

    base_url: str = ""
    received: list[tuple[str, dict[str, str], bool]] = field(default_factory=list)
    twiml: str | None = None


@pytest.fixture
async def webhooks() -> AsyncIterator[Webhooks]:
    hooks = Webhooks()
    validator = RequestValidator(TOKEN)

    async def receive(request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        url = hooks.base_url + request.path
        valid = validator.validate(url, form, request.headers.get("X-Twilio-Signature", ""))
        hooks.received.append((request.path, form, valid))
        if not valid:
            return web.Response(status=403)
        if hooks.twiml is not None:
            return web.Response(text=hooks.twiml, content_type="application/xml")
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    hooks.base_url = f"http://127.0.0.1:{port}"
    try:
        yield hooks
    finally:
        await runner.cleanup()


async def test_create_message_with_the_real_client(fake: FakeTwilio, client: Client) -> None:
    message = await client.messages.create_async(
        to=TO,
        from_="+15005550006",
        body="Urgent Action: act now",
        status_callback="http://127.0.0.1:9/webhooks/twilio/status",
    )
    assert re.fullmatch(r"SM[0-9a-f]{32}", message.sid or "")
    assert message.status == "queued"
    assert message.to == TO
    assert message.from_ == "+15005550006"
    assert message.body == "Urgent Action: act now"
    assert message.num_segments == "1"
    assert message.account_sid == SID
    assert message.date_created is not None
    assert message.uri == f"/2010-04-01/Accounts/{SID}/Messages/{message.sid}.json"

    [sent] = fake.messages
    assert sent.sid == message.sid
    assert sent.status_callback == "http://127.0.0.1:9/webhooks/twilio/status"
    assert sent.messaging_service_sid is None

    fetched = await client.messages(message.sid).fetch_async()
    assert fetched.body == "Urgent Action: act now"


async def test_messaging_service_sender(fake: FakeTwilio, client: Client) -> None:
    service = "MG" + "0" * 32
    message = await client.messages.create_async(to=TO, messaging_service_sid=service, body="Hi")
    assert message.messaging_service_sid == service
    assert message.from_ is None
    assert message.status == "accepted"
    assert fake.messages[0].from_ is None


async def test_wrong_credentials_get_401(fake: FakeTwilio) -> None:
    wrong = Client(SID, "not-the-token", http_client=AsyncTwilioHttpClient())
    wrong.api.base_url = fake.base_url
    try:
        with pytest.raises(TwilioRestException) as caught:
            await wrong.messages.create_async(to=TO, from_="+15005550006", body="x")
    finally:
        await wrong.http_client.close()  # type: ignore[attr-defined]
    assert caught.value.status == 401
    assert caught.value.code == 20003
    assert fake.messages == []


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": "07700 900123", "from_": "+15005550006", "body": "x"}, 21211),
        ({"to": TO, "body": "x"}, 21603),
        ({"to": TO, "from_": "not a number!", "body": "x"}, 21212),
        ({"to": TO, "from_": "+15005550006", "body": ""}, 21602),
        ({"to": TO, "from_": "+15005550006", "body": "x" * 1601}, 21617),
        ({"to": TO, "messaging_service_sid": "MGnope", "body": "x"}, 21701),
        ({"to": TO, "from_": "+15005550006", "body": "x", "status_callback": "ftp://x"}, 21609),
    ],
)
async def test_validation_errors_are_twilio_errors(
    fake: FakeTwilio, client: Client, kwargs: dict[str, str], code: int
) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await client.messages.create_async(**kwargs)
    assert caught.value.status == 400
    assert caught.value.code == code
    assert fake.messages == []


async def test_queued_failures_are_answered_first_one_per_attempt(
    fake: FakeTwilio, client: Client
) -> None:
    fake.failures[TO] = [(429, 20429), (500, None), (400, 21610)]
    seen = []
    for _ in range(3):
        with pytest.raises(TwilioRestException) as caught:
            await client.messages.create_async(to=TO, from_="+15005550006", body="x")
        seen.append((caught.value.status, caught.value.code))
    assert seen == [(429, 20429), (500, 20500), (400, 21610)]
    assert TO not in fake.failures
    assert len(fake.requests) == 3
    assert fake.messages == []
    # Other numbers were never affected, and the queue is now empty.
    await client.messages.create_async(to=TO, from_="+15005550006", body="x")
    assert len(fake.messages) == 1


async def test_twilio_json_error_shape(fake: FakeTwilio) -> None:
    fake.failures[TO] = [(429, 20429)]
    url = f"{fake.base_url}/2010-04-01/Accounts/{SID}/Messages.json"
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            url,
            data={"To": TO, "From": "+15005550006", "Body": "x"},
            auth=aiohttp.BasicAuth(SID, TOKEN),
        ) as response,
    ):
        body = await response.json()
    assert response.status == 429
    assert body == {
        "code": 20429,
        "message": "Too Many Requests",
        "more_info": "https://www.twilio.com/docs/errors/20429",
        "status": 429,
    }


async def test_signed_status_callback(fake: FakeTwilio, client: Client, webhooks: Webhooks) -> None:
    callback = f"{webhooks.base_url}/webhooks/twilio/status"
    message = await client.messages.create_async(
        to=TO, from_="+15005550006", body="x", status_callback=callback
    )
    assert await fake.send_status_callback(message.sid, "delivered") == 204
    assert await fake.send_status_callback(message.sid, "undelivered", 30003) == 204
    (path, first, valid), (_, second, valid2) = webhooks.received
    assert path == "/webhooks/twilio/status" and valid and valid2
    assert first["MessageSid"] == message.sid
    assert first["MessageStatus"] == "delivered"
    assert "ErrorCode" not in first
    assert first["AccountSid"] == SID
    assert first["To"] == TO and first["From"] == "+15005550006"
    assert second["MessageStatus"] == "undelivered" and second["ErrorCode"] == "30003"
    assert fake.messages[0].status == "undelivered"


async def test_a_wrong_token_makes_a_signature_the_receiver_refuses(
    webhooks: Webhooks,
) -> None:
    other = FakeTwilio(account_sid=SID, auth_token="another-token")
    await other.start()
    try:
        status = await other.send_inbound_sms(
            f"{webhooks.base_url}/webhooks/twilio/sms", from_=TO, body="YES"
        )
    finally:
        await other.stop()
    assert status == 403
    assert webhooks.received[0][2] is False


async def test_signed_inbound_sms_and_twiml_reply(fake: FakeTwilio, webhooks: Webhooks) -> None:
    webhooks.twiml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<Response><Message>Urgent Action alerts: reply STOP to opt out.</Message></Response>"
    )
    url = f"{webhooks.base_url}/webhooks/twilio/sms"
    assert await fake.send_inbound_sms(url, from_=TO, body="HELP") == 200
    [(path, form, valid)] = webhooks.received
    assert valid and path == "/webhooks/twilio/sms"
    assert re.fullmatch(r"SM[0-9a-f]{32}", form["MessageSid"])
    assert form["From"] == TO and form["To"] == "+15005550006"
    assert form["Body"] == "HELP" and form["NumMedia"] == "0" and form["AccountSid"] == SID
    [reply] = fake.messages
    assert reply.to == TO and reply.body.startswith("Urgent Action alerts")
    assert fake.inbound[0].response_status == 200


async def test_outbox_page_reply_and_deliver(fake: FakeTwilio, client: Client) -> None:
    received: list[dict[str, str]] = []

    async def receive(request: web.Request) -> web.Response:
        received.append({k: str(v) for k, v in (await request.post()).items()})
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/{tail:.*}", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    fake.inbound_url = f"http://127.0.0.1:{port}/webhooks/twilio/sms"
    try:
        message = await client.messages.create_async(
            to=TO,
            from_="+15005550006",
            body="<script>alert(1)</script> Reply STOP",
            status_callback=f"http://127.0.0.1:{port}/webhooks/twilio/status",
        )
        async with aiohttp.ClientSession() as session:
            async with session.get(fake.base_url + "/") as response:
                page = await response.text()
            assert "&lt;script&gt;" in page and "<script>" not in page
            csrf = re.search(r'name="csrf" value="([^"]+)"', page)
            assert csrf is not None
            async with session.post(
                fake.base_url + "/outbox/reply",
                data={"csrf": "forged", "phone": TO, "body": "YES"},
            ) as response:
                assert response.status == 403
            async with session.post(
                fake.base_url + "/outbox/reply",
                data={"csrf": csrf.group(1), "phone": TO, "to": "+15005550006", "body": "YES"},
            ) as response:
                assert response.status == 200  # after the redirect back to the page
                assert "the webhook answered 204" in await response.text()
            async with session.post(
                fake.base_url + "/outbox/status",
                data={"csrf": csrf.group(1), "sid": message.sid, "status": "delivered"},
            ) as response:
                assert response.status == 200
            async with session.get(fake.base_url + "/api/messages") as response:
                listed = await response.json()
    finally:
        await runner.cleanup()
    assert received[0]["Body"] == "YES" and received[0]["From"] == TO
    assert received[1]["MessageStatus"] == "delivered"
    assert listed[0]["sid"] == message.sid and listed[0]["status"] == "delivered"


def test_segments() -> None:
    assert segments("a" * 160) == 1
    assert segments("a" * 161) == 2
    assert segments("a" * 306) == 2
    assert segments("{" * 80) == 1  # extension characters count twice
    assert segments("{" * 81) == 2
    assert segments("é" * 160) == 1  # é is in GSM-7
    assert segments("ł" * 70) == 1  # not GSM-7: UCS-2
    assert segments("ł" * 71) == 2


async def test_wait_for(fake: FakeTwilio, client: Client) -> None:
    waiting = asyncio.create_task(fake.wait_for(lambda m: m.body == "second", timeout=5))
    await client.messages.create_async(to=TO, from_="+15005550006", body="first")
    await client.messages.create_async(to=TO, from_="+15005550006", body="second")
    assert (await waiting).body == "second"
    with pytest.raises(TimeoutError):
        await fake.wait_for(lambda m: False, timeout=0.05)
