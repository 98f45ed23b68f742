"""The real adapters against real peers on loopback: aiosmtpd and the Twilio-compatible endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from devtools.twilio_fake import FakeTwilio
from services.dispatcher.senders import TwilioSmsSender
from services.dispatcher.smtp_sender import SmtpEmailSender
from shared.settings import Settings
from tests.support import SmtpRecorder, free_port

SID = "AC" + "1" * 32
TOKEN = "twilio-test-token"
SERVICE = "MG" + "a" * 32
PHONE = "+447700900123"
MESSAGE = (
    b"From: alerts@example.org\r\nTo: ana@example.net\r\nSubject: Hi\r\n"
    b"Content-Type: text/plain\r\n\r\nHello\r\n"
)


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


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


def twilio_settings(fake: FakeTwilio, sender: str = "+15005550006") -> Settings:
    return settings(
        twilio_account_sid=SID,
        twilio_auth_token=TOKEN,
        twilio_from=sender,
        twilio_api_base=fake.base_url,
        dispatcher_public_url="https://dispatch.example.org",
    )


async def test_smtp_sends_bytes_and_reuses_connections(smtp: SmtpRecorder) -> None:
    sender = SmtpEmailSender(settings(smtp_host="127.0.0.1", smtp_port=smtp.port), pool_size=2)
    try:
        for _ in range(3):
            result = await sender.send("alerts@example.org", "ana@example.net", MESSAGE)
            assert result.outcome == "sent"
    finally:
        await sender.close()
    received = smtp.to("ana@example.net")
    assert len(received) == 3
    assert received[0].mail_from == "alerts@example.org"
    assert received[0].header("Subject") == "Hi"


async def test_bare_cr_and_lf_go_as_crlf_and_cannot_end_data(smtp: SmtpRecorder) -> None:
    """Defence in depth: a bare CR (or LF) in a message goes as CRLF, so no relay reading a bare
    CR as a line end can be shown an end of DATA (``\\r.\\r``) and a second message after it."""
    smuggled = (
        b"From: alerts@example.org\r\nTo: ana@example.net\r\nSubject: Hi\r\n\r\n"
        b"Hello\r.\rMAIL FROM:<x@evil.example>\rRCPT TO:<ben@example.net>\rDATA\r"
        b"Subject: smuggled\n.\nbye\r\n"
    )
    sender = SmtpEmailSender(settings(smtp_host="127.0.0.1", smtp_port=smtp.port))
    try:
        result = await sender.send("alerts@example.org", "ana@example.net", smuggled)
    finally:
        await sender.close()
    assert result.outcome == "sent"
    [mail] = smtp.to("ana@example.net")
    assert smtp.to("ben@example.net") == []
    assert mail.raw.count(b"\r") == mail.raw.count(b"\n") == mail.raw.count(b"\r\n")
    assert mail.raw.endswith(
        b"Hello\r\n.\r\nMAIL FROM:<x@evil.example>\r\nRCPT TO:<ben@example.net>\r\nDATA\r\n"
        b"Subject: smuggled\r\n.\r\nbye\r\n"
    )


async def test_smtp_5xx_recipient_is_a_hard_bounce(smtp: SmtpRecorder) -> None:
    smtp.reply_for["gone@example.net"] = "550 5.1.1 No such user"
    sender = SmtpEmailSender(settings(smtp_host="127.0.0.1", smtp_port=smtp.port))
    try:
        result = await sender.send("alerts@example.org", "gone@example.net", MESSAGE)
        assert (result.outcome, result.error_code, result.suppress) == (
            "failed",
            "smtp:550",
            "hard_bounce",
        )
        # The pool recovers: the next message goes out.
        assert (
            await sender.send("alerts@example.org", "ana@example.net", MESSAGE)
        ).outcome == "sent"
    finally:
        await sender.close()


async def test_smtp_4xx_is_temporary(smtp: SmtpRecorder) -> None:
    smtp.reply_for["busy@example.net"] = "451 4.3.0 Try again later"
    sender = SmtpEmailSender(settings(smtp_host="127.0.0.1", smtp_port=smtp.port))
    try:
        result = await sender.send("alerts@example.org", "busy@example.net", MESSAGE)
        assert (result.outcome, result.suppress) == ("temporary", None)
    finally:
        await sender.close()


async def test_smtp_server_down_is_temporary() -> None:
    sender = SmtpEmailSender(settings(smtp_host="127.0.0.1", smtp_port=free_port()), timeout=5)
    try:
        result = await sender.send("alerts@example.org", "ana@example.net", MESSAGE)
        assert (result.outcome, result.error_code) == ("temporary", "smtp:unavailable")
    finally:
        await sender.close()


async def test_twilio_send_goes_through_the_real_client(twilio: FakeTwilio) -> None:
    sender = TwilioSmsSender(twilio_settings(twilio))
    try:
        result = await sender.send(PHONE, "Act now: http://x/act/1 Reply STOP to opt out")
    finally:
        await sender.close()
    assert result.outcome == "sent"
    sms = twilio.messages[-1]
    assert result.provider_message_id == sms.sid and sms.sid.startswith("SM")
    assert (sms.to, sms.from_, sms.body) == (
        PHONE,
        "+15005550006",
        "Act now: http://x/act/1 Reply STOP to opt out",
    )
    assert sms.status_callback == "https://dispatch.example.org/webhooks/twilio/status"


async def test_twilio_messaging_service_sid_is_used_as_sender(twilio: FakeTwilio) -> None:
    sender = TwilioSmsSender(twilio_settings(twilio, SERVICE))
    try:
        assert (await sender.send(PHONE, "Hello")).outcome == "sent"
    finally:
        await sender.close()
    assert twilio.messages[-1].messaging_service_sid == SERVICE


@pytest.mark.parametrize(
    ("failure", "outcome", "suppress"),
    [
        ((429, 20429), "temporary", None),
        ((500, 20500), "temporary", None),
        ((400, 21610), "failed", "opted_out"),
        ((400, 21211), "failed", None),
    ],
)
async def test_twilio_errors_map_to_retry_fail_or_opt_out(
    twilio: FakeTwilio, failure: tuple[int, int], outcome: str, suppress: str | None
) -> None:
    twilio.failures[PHONE] = [failure]
    sender = TwilioSmsSender(twilio_settings(twilio))
    try:
        result = await sender.send(PHONE, "Hello")
        assert (result.outcome, result.suppress) == (outcome, suppress)
        assert result.error_code == f"twilio:{failure[1]}"
        # The queue of failures is used up: the next attempt goes through.
        assert (await sender.send(PHONE, "Hello")).outcome == "sent"
    finally:
        await sender.close()


async def test_twilio_without_credentials_waits() -> None:
    sender = TwilioSmsSender(settings())
    result = await sender.send(PHONE, "Hello")
    assert (result.outcome, result.error_code) == ("temporary", "twilio:not_configured")
    await sender.close()
