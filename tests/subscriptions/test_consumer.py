"""The service over a real RabbitMQ: an ActionPublished in, batches and counts out."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aio_pika
from sqlalchemy import select

from services.subscriptions.models import Subscriber
from shared import events
from shared.messaging import Broker
from tests.subscriptions.conftest import action_published, running_service
from tests.subscriptions.test_audience import subscriber_row

WAIT = 30.0  # seconds before giving up on a message that should come


async def take(channel: aio_pika.abc.AbstractChannel, queue_name: str, count: int) -> list[Any]:
    """The next ``count`` messages of a queue (waiting for them to arrive)."""
    queue = await channel.get_queue(queue_name, ensure=False)
    found: list[Any] = []
    async with asyncio.timeout(WAIT):
        while len(found) < count:
            message = await queue.get(no_ack=True, fail=False)
            if message is None:
                await asyncio.sleep(0.05)
                continue
            found.append(json.loads(message.body))
    return found


async def test_action_published_reaches_the_dispatcher_and_the_tally(
    amqp_url: str, tmp_path: Path, make_settings: Any
) -> None:
    subscribers = [
        subscriber_row(1, country="GB"),
        subscriber_row(2, country="IE", sms_status="pending"),
        subscriber_row(3, country="FR"),
    ]
    async with running_service(make_settings, tmp_path, subscribers) as runtime:
        publisher = Broker(amqp_url, name="test-publisher")
        await publisher.connect()
        try:
            event = action_published(
                audience={"countries": ["GB", "IE"], "themes": [], "languages": []}
            )
            await publisher.publish_event(event)
            await publisher.publish_event(event)  # a duplicate changes nothing

            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                [batch] = await take(channel, "dispatcher.batches", 1)
                [counted] = await take(channel, "publisher.tally", 1)

                suppressed = events.RecipientSuppressed(
                    subscriber_id=None,
                    channel="sms",
                    address=subscriber_row(1)["phone"],
                    reason="opted_out",
                )
                await publisher.publish_event(suppressed)
                async with asyncio.timeout(WAIT):
                    while True:
                        async with runtime.sessionmaker() as session:
                            status = await session.scalar(
                                select(Subscriber.sms_status).where(Subscriber.name == "Person 1")
                            )
                        if status == "unsubscribed":
                            break
                        await asyncio.sleep(0.05)
                # The duplicate ActionPublished wrote nothing more.
                queue = await channel.get_queue("dispatcher.batches", ensure=False)
                assert await queue.get(no_ack=True, fail=False) is None
        finally:
            await publisher.close()

    assert batch["action_id"] == str(event.action_id)
    assert batch["message_kind"] == "alert"
    assert sorted((r["name"], r["channel"]) for r in batch["recipients"]) == [
        ("Person 1", "email"),
        ("Person 1", "sms"),
        ("Person 2", "email"),
    ]
    assert counted["action_id"] == str(event.action_id)
    assert counted["recipients"] == {"email": 2, "sms": 1}
    assert counted["by_country"] == {"GB": 1, "IE": 1}
