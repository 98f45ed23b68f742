"""The publisher as it runs: its lifespan connects to a real RabbitMQ (a fresh vhost), relays its
outbox and consumes ``publisher.tally``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from fastapi import FastAPI

from services.publisher.app import create_app
from services.publisher.auth import create_api_token
from shared import events
from shared.messaging import DEAD_LETTER_QUEUE, H_REASON, Broker
from shared.settings import Settings
from tests.publisher.conftest import sample_action


@pytest.fixture
async def running(
    sqlite_publisher_url: str, make_settings: Callable[..., Settings]
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient, dict[str, str]]]:
    app = create_app(make_settings(publisher_database_url=sqlite_publisher_url))
    async with app.router.lifespan_context(app):
        await app.state.runtime.wait_started(timeout=30)
        token = await create_api_token(app.state.runtime.sessionmaker, role="admin", name="t")
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as client:
            yield app, client, {"Authorization": f"Bearer {token}"}


async def get_one(queue: AbstractQueue, timeout: float = 15.0) -> AbstractIncomingMessage:
    async def poll() -> AbstractIncomingMessage:
        while True:
            message = await queue.get(no_ack=True, fail=False)
            if message is not None:
                return message
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), timeout)


async def wait_for_stats(
    client: httpx.AsyncClient, path: str, headers: dict[str, str], done: Callable[[Any], bool]
) -> dict[str, Any]:
    async def poll() -> dict[str, Any]:
        while True:
            stats: dict[str, Any] = (await client.get(path, headers=headers)).json()
            if done(stats):
                return stats
            await asyncio.sleep(0.05)

    return await asyncio.wait_for(poll(), 15)


async def test_publishing_relays_action_published_to_subscriptions(
    running: tuple[FastAPI, httpx.AsyncClient, dict[str, str]], amqp_url: str
) -> None:
    app, client, admin = running
    created = (await client.post("/api/v1/actions", json=sample_action(), headers=admin)).json()
    published = await client.post(f"/api/v1/actions/{created['id']}/publish", headers=admin)
    assert published.status_code == 200

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue("subscriptions.actions")
        message = await get_one(queue)
    finally:
        await connection.close()
    assert message.routing_key == "action.published"
    event = events.ActionPublished.model_validate_json(message.body)
    assert message.message_id == str(event.message_id)
    assert str(event.action_id) == created["id"]
    assert event.reference == created["reference"]
    assert event.channels == ["email", "sms"]


async def test_a_response_over_the_broker_changes_the_stats(
    running: tuple[FastAPI, httpx.AsyncClient, dict[str, str]], amqp_url: str
) -> None:
    app, client, admin = running
    created = (await client.post("/api/v1/actions", json=sample_action(), headers=admin)).json()
    await client.post(f"/api/v1/actions/{created['id']}/publish", headers=admin)

    broker = Broker(amqp_url, name="test-subscriptions")
    await broker.connect()
    try:
        await broker.publish_event(
            events.ResponseRecorded(
                action_id=uuid.UUID(created["id"]),
                subscriber_id=uuid.uuid4(),
                country="IE",
                kind="email",
                count=2,
            )
        )
        stats = await wait_for_stats(
            client,
            f"/api/v1/actions/{created['id']}/stats",
            admin,
            lambda s: s["responses"]["actions"] > 0,
        )
        assert stats["responses"]["people"] == 1
        assert stats["responses"]["by_kind"]["email"] == 2
        assert stats["by_country"] == {"IE": {"recipients": 0, "people": 1, "actions": 2}}

        # An action this publisher never had: dead-lettered with the reason, the consumer goes on.
        stray = events.ResponseRecorded(
            action_id=uuid.uuid4(), subscriber_id=uuid.uuid4(), kind="call", count=1
        )
        await broker.publish_event(stray)
        dead_letters = await broker.channel.get_queue(DEAD_LETTER_QUEUE)
        dead = await get_one(dead_letters)
        assert dead.message_id == str(stray.message_id)
        assert "unknown urgent action" in str((dead.headers or {})[H_REASON])
    finally:
        await broker.close()
