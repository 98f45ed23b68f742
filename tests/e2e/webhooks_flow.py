"""What the webhook tests share: a stack with short retries, a verifying receiver, an admin."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from devtools.webhook_inbox import Responder, WebhookInbox, always_ok
from tests.conftest import SECRET
from tests.e2e.stack import Stack, close_stack, open_stack
from tests.e2e.test_whole_loop import ACTION
from tests.support import eventually

# Fast tries for tests: the schedule's shape, in tenths of a second.
SHORT_RETRIES = "0.3s,0.3s,0.3s,0.3s"


@dataclass
class Hooks:
    stack: Stack
    inbox: WebhookInbox
    client: httpx.AsyncClient
    admin: str
    staff: str

    @property
    def api(self) -> str:
        return self.stack.url("publisher") + "/api/v1"

    def auth(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.admin}"}

    async def add_endpoint(self, name: str, events: list[str] | None = None) -> dict[str, Any]:
        from services.publisher.webhooks.standard import EVENT_TYPES

        response = await self.client.post(
            f"{self.api}/webhooks",
            json={"url": self.inbox.url(name), "events": events or list(EVENT_TYPES)},
            headers=self.auth(),
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        self.inbox.secrets[name] = created["secret"]
        return created

    async def endpoint(self, endpoint_id: str) -> dict[str, Any]:
        response = await self.client.get(f"{self.api}/webhooks", headers=self.auth())
        assert response.status_code == 200
        return next(e for e in response.json()["items"] if e["id"] == endpoint_id)

    async def publish(
        self, title: str = "Webhook test", channels: tuple[str, ...] = ("sms",)
    ) -> dict[str, Any]:
        body = copy.deepcopy(ACTION)
        body["title"] = title
        body["channels"] = list(channels)
        body["audience"] = {"countries": [], "themes": [], "languages": []}
        created = await self.client.post(
            f"{self.api}/actions", json=body, headers=self.auth(self.staff)
        )
        assert created.status_code == 201, created.text
        published = await self.client.post(
            f"{self.api}/actions/{created.json()['id']}/publish", headers=self.auth(self.staff)
        )
        assert published.status_code == 200, published.text
        action: dict[str, Any] = published.json()
        return action

    async def sign_up_by_sms(self, number: str, **fields: Any) -> None:
        body = {"phone": number, "name": "Sam", "country": "GB", "language": "en"}
        body.update(fields)
        response = await self.client.post(
            self.stack.url("subscriptions") + "/api/v1/subscribers", json=body
        )
        assert response.status_code == 202, response.text
        await eventually(
            lambda: [m for m in self.stack.twilio.messages if m.to == number],
            what=f"confirmation SMS to {number}",
        )
        status = await self.stack.twilio.send_inbound_sms(
            self.stack.sms_webhook, from_=number, body="YES"
        )
        assert status == 200

    async def arrived(
        self, name: str, event_type: str, count: int = 1, timeout: float = 30
    ) -> list[Any]:
        return await eventually(
            lambda: (
                (found := [r for r in self.inbox.to(name) if r.type == event_type])
                and len(found) >= count
                and found
            ),
            timeout=timeout,
            what=f"{count} {event_type} at {name}",
        )


async def open_hooks(
    amqp_url: str,
    database_urls: dict[str, str],
    tmp_path: Path,
    *,
    respond: Responder = always_ok,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Hooks]:
    inbox = WebhookInbox(respond=respond)
    await inbox.start()
    stack = await open_stack(
        amqp_url=amqp_url,
        database_urls=database_urls,
        log_dir=tmp_path,
        secret=SECRET,
        env={"UANET_WEBHOOK_RETRY_SCHEDULE": SHORT_RETRIES, **(env or {})},
    )
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            yield Hooks(
                stack=stack,
                inbox=inbox,
                client=client,
                admin=await asyncio.to_thread(stack.token, "admin", "hooks-admin"),
                staff=await asyncio.to_thread(stack.token, "staff", "hooks-staff"),
            )
    finally:
        await close_stack(stack)
        await inbox.stop()
