"""The development webhook inbox keeps only its last calls but counts every one (a benchmark waits
on the counts, so a cap on what is kept must not cap them)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from devtools import webhook_inbox
from devtools.webhook_inbox import ReceivedWebhook, WebhookInbox
from services.publisher.webhooks.standard import event_body, new_secret, signed_headers


async def test_every_call_is_counted_beyond_the_kept_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(webhook_inbox, "MAX_KEPT", 10)
    seen_calls: list[int] = []

    async def respond(_endpoint: str, calls: int) -> int:
        seen_calls.append(calls)
        return 200

    inbox = WebhookInbox(respond=respond)
    heard: list[ReceivedWebhook] = []
    inbox.listeners.append(heard.append)
    inbox.secrets["a"] = secret = new_secret()
    transport = httpx.ASGITransport(app=inbox.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://inbox") as client:
        for n in range(25):
            now = datetime.now(UTC)
            body = event_body("action.closed", now, {"n": n}).encode()
            name = "a" if n < 15 else "b"
            headers = signed_headers(secret, f"msg_{n}", body, now)
            response = await client.post(f"/hooks/{name}", content=body, headers=headers)
            assert response.status_code == 200
    assert len(inbox.received) == 10, "only the last calls are kept"
    assert (inbox.total, inbox.calls_to["a"], inbox.calls_to["b"]) == (25, 15, 10)
    assert inbox.verified == 15, "b has no secret: its calls do not verify"
    assert seen_calls == list(range(15)) + list(range(10)), "the responder counts every call"
    assert [c.webhook_id for c in heard] == [f"msg_{n}" for n in range(25)]
