"""Every service refuses a request body over ``UANET_MAX_BODY_BYTES`` with 413 before reading it
whole: before authentication, signatures or parsing, declared or chunked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from services.dispatcher.app import STATUS_WEBHOOK_PATH
from services.dispatcher.app import create_app as dispatcher_app
from services.publisher.app import create_app as publisher_app
from services.subscriptions.app import create_app as subscriptions_app
from shared.migrations import upgrade
from shared.settings import DEFAULT_MAX_BODY_BYTES, SERVICES, Settings

CHUNK = 64 * 1024
MULTIPART = "multipart/form-data; boundary=x"
# Far more than the limit (and small enough that a service without one reads it and fails).
HUGE = 32 * 1024 * 1024


class Body:
    """A request body of ``size`` bytes that counts how much of it the server has pulled."""

    def __init__(self, size: int, content_type: str = "application/json") -> None:
        self.size = size
        self.pulled = 0
        # Well-formed as far as it goes: one endless field, so no parser gives up early.
        self.start = {
            "application/json": b'{"name": "',
            "application/x-www-form-urlencoded": b"name=",
            MULTIPART: b'--x\r\nContent-Disposition: form-data; name="name"\r\n\r\n',
        }[content_type]

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.pulled < self.size:
            chunk = (self.start if self.pulled == 0 else b"") + b"a" * CHUNK
            self.pulled += CHUNK
            yield chunk[:CHUNK]


# Every route that reads a body, on each service (no token, no signature: refused first anyway).
ROUTES: list[tuple[str, str, str]] = [
    ("publisher", "/api/v1/actions", "application/json"),
    ("publisher", "/login", "application/x-www-form-urlencoded"),
    ("subscriptions", "/api/v1/subscribers", "application/json"),
    ("subscriptions", "/api/v1/subscribers", MULTIPART),
    ("subscriptions", "/webhooks/twilio/sms", "application/x-www-form-urlencoded"),
    ("subscriptions", "/act/not-a-token", "application/json"),
    ("dispatcher", STATUS_WEBHOOK_PATH, "application/x-www-form-urlencoded"),
]


# The API checks the token first (401), an act link is checked before its body (404).
REFUSED_FIRST = {"/api/v1/actions": 401, "/act/not-a-token": 404}


def _app(service: str, settings: Settings) -> FastAPI:
    factories: dict[str, Callable[[Settings], FastAPI]] = {
        "publisher": publisher_app,
        "subscriptions": subscriptions_app,
        "dispatcher": dispatcher_app,
    }
    return factories[service](settings)


@pytest.fixture
async def settings(make_settings: Callable[..., Settings], tmp_path: Path) -> Settings:
    databases = {f"{s}_database_url": f"sqlite+aiosqlite:///{tmp_path / s}.db" for s in SERVICES}
    for service in SERVICES:
        await asyncio.to_thread(upgrade, service, databases[f"{service}_database_url"])
    return make_settings(twilio_auth_token="tok", **databases)


async def _post(app: FastAPI, path: str, body: Body, headers: dict[str, str]) -> httpx.Response:
    # Started as in production (the broker of the test run), behind the real middleware stack.
    async with app.router.lifespan_context(app):
        runtime = getattr(app.state, "runtime", None)
        if runtime is not None:
            await runtime.wait_started()  # stopped while still connecting, it would linger
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, content=body, headers=headers)


@pytest.mark.parametrize(("service", "path", "content_type"), ROUTES)
async def test_a_chunked_body_over_the_limit_is_refused_as_it_streams(
    settings: Settings, service: str, path: str, content_type: str
) -> None:
    body = Body(HUGE, content_type)
    headers = {"Content-Type": content_type, "X-Twilio-Signature": "forged"}

    response = await _post(_app(service, settings), path, body, headers)

    # Routes that refuse before reading (no token, an act link that is not one) answer that.
    assert response.status_code == REFUSED_FIRST.get(path, 413)
    # Never more than the limit and the chunk that crossed it.
    assert body.pulled <= DEFAULT_MAX_BODY_BYTES + CHUNK


@pytest.mark.parametrize(("service", "path", "content_type"), ROUTES)
async def test_a_declared_length_over_the_limit_is_refused_unread(
    settings: Settings, service: str, path: str, content_type: str
) -> None:
    body = Body(DEFAULT_MAX_BODY_BYTES + 1, content_type)
    headers = {"Content-Type": content_type, "Content-Length": str(DEFAULT_MAX_BODY_BYTES + 1)}

    response = await _post(_app(service, settings), path, body, headers)

    assert response.status_code == 413
    assert body.pulled == 0


async def test_the_limit_is_a_setting(
    make_settings: Callable[..., Settings], settings: Settings
) -> None:
    small = make_settings(
        max_body_bytes=20_000,
        subscriptions_database_url=settings.subscriptions_database_url,
    )
    headers = {"Content-Type": "application/json"}
    body = Body(HUGE)

    response = await _post(_app("subscriptions", small), "/api/v1/subscribers", body, headers)

    assert response.status_code == 413 and body.pulled <= 20_000 + CHUNK
