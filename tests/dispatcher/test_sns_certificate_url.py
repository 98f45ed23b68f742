"""A forged ``SigningCertURL`` is refused without being fetched (contract §11).

The dispatcher runs under uvicorn with the real ``HttpsSnsGateway``; its HTTP client reaches
every host at a loopback server that counts the requests it gets (an attacker's server, a
bucket on S3, SNS itself: all of them are that server here). Messages signed with the test's
certificate name forged URLs: 403 and not one request; the real URL shape is fetched once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
import uvicorn

from services.dispatcher.app import create_app
from services.dispatcher.feedback.sns import (
    HttpsSnsGateway,
    certificate_url_allowed,
    sns_url_allowed,
)
from shared.migrations import upgrade
from shared.settings import Settings
from tests.dispatcher.test_feedback_webhooks import CERT_URL, SNS_PEM, TOPIC, sns_message


class CountingServer:
    """Any HTTP request on loopback: counted, answered with the test's certificate."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head.split(b"\r\n", 1)[0].decode())
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/x-pem-file\r\n"
            + f"Content-Length: {len(SNS_PEM)}\r\nConnection: close\r\n\r\n".encode()
            + SNS_PEM
        )
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> CountingServer:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


class EveryHostOnLoopback(httpx.AsyncBaseTransport):
    """Sends each request, whatever its URL names, to the counting server."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@pytest.fixture
async def counting() -> AsyncIterator[CountingServer]:
    async with CountingServer() as server:
        yield server


@pytest.fixture
async def dispatcher_url(
    make_settings: Callable[..., Settings], tmp_path: Path, counting: CountingServer
) -> AsyncIterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dispatcher.db'}"
    await asyncio.to_thread(upgrade, "dispatcher", url)
    settings = make_settings(dispatcher_database_url=url, ses_topic_arns=TOPIC)
    gateway = HttpsSnsGateway(httpx.AsyncClient(transport=EveryHostOnLoopback(counting.port)))
    app = create_app(settings, sns=gateway)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        await app.state.runtime.wait_started()
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        await gateway.close()


def forged_urls(port: int) -> list[str]:
    loopback = f"127.0.0.1:{port}"
    name = "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
    return [
        f"https://sns.s3.amazonaws.com/{name}",  # an S3 bucket named "sns": anyone's
        f"https://sns.attacker.amazonaws.com/{name}",  # not a region
        f"https://sns.eu-west-1.amazonaws.com/{name}?x=1",  # a query
        f"https://sns.eu-west-1.amazonaws.com/{name}?",
        f"https://sns.eu-west-1.amazonaws.com/{name}#x",
        "https://sns.eu-west-1.amazonaws.com/attacker-bucket/cert.pem",  # another path
        f"https://sns.eu-west-1.amazonaws.com/x/{name}",
        f"https://sns.eu-west-1.amazonaws.com/{name}/../evil.pem",
        f"http://sns.eu-west-1.amazonaws.com/{name}",  # not https
        f"https://sns.eu-west-1.amazonaws.com:443/{name}",  # a port, even the usual one
        f"https://sns.eu-west-1.amazonaws.com:{port}/{name}",
        f"https://sns.eu-west-1.amazonaws.com@{loopback}/{name}",  # userinfo
        f"https://user@sns.eu-west-1.amazonaws.com/{name}",
        f"https://sns.eu-west-1.amazonaws.com.{loopback}/{name}",
        f"https://{loopback}/{name}",  # another host outright
        f"http://{loopback}/{name}",
        f"https://sns.cn-north-1.amazonaws.com/{name}",  # a China region outside .cn
        f"https://sns.eu-west-1.amazonaws.com.cn/{name}",
        f"https://SNS.eu-west-1.amazonaws.com/{name}",
        f"https://sns.eu-west-1.amazonaws.com/{name}\n",
    ]


async def test_forged_certificate_urls_are_refused_without_a_fetch(
    dispatcher_url: str, counting: CountingServer
) -> None:
    headers = {"Content-Type": "text/plain; charset=UTF-8"}
    async with httpx.AsyncClient(base_url=dispatcher_url) as client:
        for url in forged_urls(counting.port):
            message = sns_message("Notification", Message="{}", SigningCertURL=url)
            answer = await client.post(
                "/webhooks/email/ses", content=json.dumps(message), headers=headers
            )
            assert answer.status_code == 403, url
        assert counting.requests == []

        # The real shape is fetched (the counting works), signed with the test's key: believed.
        genuine = sns_message("Notification", Message=json.dumps({"notificationType": "x"}))
        answer = await client.post(
            "/webhooks/email/ses", content=json.dumps(genuine), headers=headers
        )
        assert answer.status_code == 200, answer.text
    assert counting.requests == [
        "GET /SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem HTTP/1.1"
    ]


def test_the_certificate_url_is_pinned_to_snss_own_shape() -> None:
    assert certificate_url_allowed(CERT_URL)
    assert certificate_url_allowed(
        "https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-0123abcd.pem"
    )
    assert certificate_url_allowed(
        "https://sns.us-gov-west-1.amazonaws.com/SimpleNotificationService-0123abcd.pem"
    )
    for url in forged_urls(8080):
        assert not certificate_url_allowed(url), url
    # The subscription URL: on SNS's own host, with its query.
    assert sns_url_allowed("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription")
    assert not sns_url_allowed("https://sns.s3.amazonaws.com/?Action=ConfirmSubscription")
    assert not sns_url_allowed("https://sns.eu-west-1.amazonaws.com:443/?Action=x")
