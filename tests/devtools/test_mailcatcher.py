"""The development mail catcher: real SMTP in (aiosmtplib), the inbox and its JSON out."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from email.message import EmailMessage

import aiohttp
import aiosmtplib
import pytest

from devtools.mailcatcher import MailCatcher


@pytest.fixture
async def catcher() -> AsyncIterator[MailCatcher]:
    mail = MailCatcher(smtp_port=0, http_port=0, max_messages=3)
    await mail.start()
    try:
        yield mail
    finally:
        await mail.stop()


def confirmation(to: str = "ana@example.net", subject: str = "Confirm your alerts") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Urgent Action Network <alerts@localhost>"
    message["To"] = f"Ana Lima <{to}>"
    message["Subject"] = subject
    message["List-Unsubscribe"] = "<http://localhost:8002/unsubscribe/tok123>"
    message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(
        "Confirm: http://localhost:8002/confirm/abc.def\n"
        "Unsubscribe: http://localhost:8002/unsubscribe/tok123."
    )
    message.add_alternative(
        '<p>Olá <b>Ana</b>, <a href="http://localhost:8002/confirm/abc.def">confirm</a></p>'
        '<script>alert("x")</script>'
        '<a href="http://localhost:8002/unsubscribe/tok123">unsubscribe</a>',
        subtype="html",
    )
    return message


async def test_caught_mail_is_parsed_in_the_api(catcher: MailCatcher) -> None:
    await aiosmtplib.send(confirmation(), hostname="127.0.0.1", port=catcher.smtp_port)
    async with (
        aiohttp.ClientSession() as session,
        session.get(catcher.inbox_url + "/api/messages") as response,
    ):
        assert response.status == 200
        [mail] = await response.json()
    assert mail["subject"] == "Confirm your alerts"
    assert mail["envelope_to"] == ["ana@example.net"]
    assert mail["envelope_from"] == "alerts@localhost"
    assert mail["headers"]["List-Unsubscribe"] == "<http://localhost:8002/unsubscribe/tok123>"
    assert mail["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mail["to"] == "Ana Lima <ana@example.net>"
    assert "Confirm: http://localhost:8002/confirm/abc.def" in mail["text"]
    assert "Olá <b>Ana</b>" in mail["html"]
    assert mail["links"] == [
        "http://localhost:8002/confirm/abc.def",
        "http://localhost:8002/unsubscribe/tok123",
    ]


async def test_inbox_pages_escape_and_sandbox(catcher: MailCatcher) -> None:
    await aiosmtplib.send(
        confirmation(subject="<img src=x onerror=alert(1)>"),
        hostname="127.0.0.1",
        port=catcher.smtp_port,
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(catcher.inbox_url + "/") as response:
            inbox = await response.text()
            assert "script-src" not in response.headers["Content-Security-Policy"]
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert "&lt;img src=x onerror=alert(1)&gt;" in inbox
        assert "<img src=x" not in inbox
        link = re.search(r'href="(/messages/\d+)"', inbox)
        assert link is not None
        async with session.get(catcher.inbox_url + link.group(1)) as response:
            page = await response.text()
        async with session.get(catcher.inbox_url + link.group(1) + ".eml") as response:
            raw = await response.read()
            assert response.content_type == "message/rfc822"
    iframe = re.search(r"<iframe ([^>]*)>", page)
    assert iframe is not None
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in iframe.group(1)
    assert "allow-scripts" not in iframe.group(1)
    # The HTML part lives only inside the srcdoc attribute, escaped.
    assert "<script>" not in page
    assert "&lt;script&gt;" in page
    assert "Confirm: http://localhost:8002/confirm/abc.def" in page  # the text part
    assert "List-Unsubscribe-Post" in page  # the headers
    assert b"Subject:" in raw


async def test_wait_for_and_bounded_memory(catcher: MailCatcher) -> None:
    waiting = asyncio.create_task(
        catcher.wait_for(lambda m: "e@example.net" in m.envelope_to, timeout=5)
    )
    for name in "abcde":
        await aiosmtplib.send(
            confirmation(to=f"{name}@example.net"), hostname="127.0.0.1", port=catcher.smtp_port
        )
    found = await waiting
    assert found.envelope_to == ["e@example.net"]
    assert [m.envelope_to[0][0] for m in catcher.messages] == ["c", "d", "e"]  # the last 3
    with pytest.raises(TimeoutError):
        await catcher.wait_for(lambda m: False, timeout=0.05)


async def test_login_is_accepted_and_inbox_can_be_emptied(catcher: MailCatcher) -> None:
    await aiosmtplib.send(
        confirmation(),
        hostname="127.0.0.1",
        port=catcher.smtp_port,
        username="anyone",
        password="anything",
        start_tls=False,
    )
    assert len(catcher.messages) == 1
    async with (
        aiohttp.ClientSession() as session,
        session.delete(catcher.inbox_url + "/api/messages") as response,
    ):
        assert response.status == 204
    assert catcher.messages == []
