"""An erasure is not undone: a message about a person handled after their erasure (the queues go at
their own pace, a retry comes back from the delay queue, an operator replays the dead letters)
records no webhook that carries their data."""

from __future__ import annotations

import asyncio
import json
import uuid

from sqlalchemy import select

from services.publisher.erasures import mark_erased
from services.publisher.osdi.outreaches import OutreachConsumer
from services.publisher.webhooks.consumer import WebhookEventsConsumer
from services.publisher.webhooks.models import WebhookDelivery, WebhookEvent
from services.publisher.webhooks.record import forget_subscriber
from services.publisher.webhooks.standard import EVENT_TYPES
from shared import events
from tests.publisher.conftest import Api


def changed(person: uuid.UUID, email: str) -> events.SubscriberChanged:
    return events.SubscriberChanged(
        change="updated",
        subscriber_id=person,
        email=email,
        name=email.split("@")[0].title(),
        country="GB",
        language="en",
        timezone="Europe/London",
        channels=["email"],
    )


async def add_crm(api: Api) -> None:
    added = await api.client.post(
        "/api/v1/webhooks",
        json={"url": "https://crm.example.org/hooks", "events": list(EVENT_TYPES)},
        headers=api.auth("admin"),
    )
    assert added.status_code == 201, added.text


async def test_messages_handled_after_the_erasure_record_nothing_of_the_person(api: Api) -> None:
    database = api.app.state.database
    await add_crm(api)
    action = await api.publish((await api.create())["id"])
    webhooks = WebhookEventsConsumer(database, lambda: None)
    erin, zoe, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    await webhooks(changed(erin, "erin@example.net"))
    await webhooks(events.SubscriberErased(subscriber_id=erin))
    # Late: after the erasure, on this queue.
    await webhooks(changed(erin, "erin@example.net"))
    await webhooks(
        events.SubscriberUnsubscribed(subscriber_id=erin, channel="email", reason="link")
    )
    await webhooks(
        events.ResponseRecorded(
            action_id=uuid.UUID(action["id"]), subscriber_id=erin, kind="email", count=1
        )
    )
    # Zoe's erasure reached the outreaches' queue first; her change comes to this one before it.
    await OutreachConsumer(database)(events.SubscriberErased(subscriber_id=zoe))
    await webhooks(changed(zoe, "zoe@example.net"))
    # Someone not erased is still heard of.
    await webhooks(changed(other, "other@example.net"))

    async with database.read() as session:
        kept = (await session.execute(select(WebhookEvent))).scalars().all()
        deliveries = len((await session.execute(select(WebhookDelivery.id))).all())
    assert sorted((e.type, e.subscriber_id) for e in kept) == sorted(
        [("action.published", None), ("subscriber.erased", None), ("subscriber.updated", other)]
    )
    assert deliveries == 3
    bodies = "\n".join(e.body or "" for e in kept)
    for trace in ("erin@example.net", "Erin", "zoe@example.net", "Zoe", str(zoe)):
        assert trace not in bodies
    erased = next(e for e in kept if e.type == "subscriber.erased")
    assert json.loads(erased.body or "")["data"] == {"subscriber_id": str(erin)}


async def test_a_change_handled_while_the_erasure_commits_waits_for_it(api: Api) -> None:
    """Two messages of one person at once (prefetch): the change must not read "not erased"
    before the erasure commits, then record their data after the erasure dropped what waited."""
    database = api.app.state.database
    await add_crm(api)
    webhooks = WebhookEventsConsumer(database, lambda: None)
    erin = uuid.uuid4()
    async with database.write() as session:  # the erasure, under way
        await mark_erased(session, erin)
        await forget_subscriber(session, erin)
        change = asyncio.create_task(webhooks(changed(erin, "erin@example.net")))
        await asyncio.sleep(0.5)
        assert not change.done(), "the change waits for the erasure's turn"
    await asyncio.wait_for(change, 10)
    async with database.read() as session:
        kept = (await session.execute(select(WebhookEvent.type))).scalars().all()
    assert kept == []
