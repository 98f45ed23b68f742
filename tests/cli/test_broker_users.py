"""`uanet broker users --apply`: one RabbitMQ user per service on a fresh vhost, and what the
broker and subscriptions then let a compromised dispatcher do (contract §11): it cannot read
another service's queue, cannot claim another user's ``user_id``, and a token event it sends is
dead-lettered, not believed; the publisher's is, even after a retry."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
import typer
from sqlalchemy import select
from typer.testing import CliRunner

from services.dispatcher.models import Outbox as DispatcherOutbox
from services.publisher.models import Outbox as PublisherOutbox
from services.subscriptions.models import ApiToken
from services.subscriptions.models import Outbox as SubscriptionsOutbox
from services.subscriptions.tokens import make_token_handler
from shared import events
from shared.messaging import Delivery, Retry, list_dead_letters
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from tests.subscriptions.conftest import migrated
from tests.support import eventually
from uanet_cli.broker import register


def _issued() -> events.ApiTokenIssued:
    return events.ApiTokenIssued(
        token_id=uuid.uuid4(), name="minted", role="admin", token_hash="ab" * 32
    )


@pytest.fixture
async def service_urls(amqp_url: str) -> AsyncIterator[dict[str, str]]:
    prefix = f"uanet-t{uuid.uuid4().hex[:8]}"
    uanet = typer.Typer()
    register(uanet)
    made = await asyncio.to_thread(
        CliRunner().invoke,
        uanet,
        ["broker", "users", "--apply", "--prefix", prefix],
        env={"UANET_AMQP_URL": amqp_url},
        catch_exceptions=False,
    )
    try:
        assert made.exit_code == 0, made.output
        urls = {
            line.split("=", 1)[0].strip(): line.split("=", 1)[1]
            for line in made.stdout.splitlines()
            if "_AMQP_URL=" in line
        }
        assert set(urls) == {
            "UANET_PUBLISHER_AMQP_URL",
            "UANET_SUBSCRIPTIONS_AMQP_URL",
            "UANET_DISPATCHER_AMQP_URL",
        }
        yield {key.split("_")[1].lower(): url for key, url in urls.items()}
    finally:
        for service in ("publisher", "subscriptions", "dispatcher"):
            subprocess.run(
                ["rabbitmqctl", "-q", "delete_user", f"{prefix}-{service}"],
                capture_output=True,
                timeout=60,
            )


async def test_the_dispatchers_broker_user_cannot_mint_tokens(
    amqp_url: str, service_urls: dict[str, str], tmp_path: Path
) -> None:
    database = await migrated(f"sqlite+aiosqlite:///{tmp_path / 'subscriptions.db'}")
    settings = Settings(
        _env_file=None,
        amqp_url=amqp_url,
        subscriptions_database_url=database,
        publisher_amqp_url=service_urls["publisher"],
        subscriptions_amqp_url=service_urls["subscriptions"],
        dispatcher_amqp_url=service_urls["dispatcher"],
    )
    subscriptions = ServiceRuntime("subscriptions", settings, SubscriptionsOutbox)
    dispatcher = ServiceRuntime("dispatcher", settings, DispatcherOutbox)
    publisher = ServiceRuntime("publisher", settings, PublisherOutbox)
    tokens = make_token_handler(subscriptions.sessionmaker)
    attempts: dict[str, int] = {}

    async def once_retried(message: events.Message, delivery: Delivery) -> None:
        seen = attempts[str(message.message_id)] = attempts.get(str(message.message_id), 0) + 1
        if seen == 1:
            raise Retry("as if the database were busy")  # back as subscriptions' own message
        await tokens(message, delivery)

    await subscriptions.broker.connect()
    await dispatcher.broker.connect()
    await publisher.broker.connect()
    try:
        await subscriptions.broker.consume(
            "subscriptions.tokens", once_retried, [events.ApiTokenIssued, events.ApiTokenRevoked]
        )
        minted, genuine = _issued(), _issued()

        await dispatcher.broker.publish_event(minted)  # its own user_id: the broker lets it by
        await publisher.broker.publish_event(genuine)

        async def stored() -> list[uuid.UUID]:
            async with subscriptions.sessionmaker() as session:
                return list((await session.execute(select(ApiToken.token_id))).scalars())

        assert await eventually(stored, what="the publisher's token") == [genuine.token_id]
        letters = await eventually(
            lambda: list_dead_letters(amqp_url, 10), what="the minted token dead-lettered"
        )
        [letter] = letters
        assert letter.message_id == str(minted.message_id)
        assert "may only come from the publisher" in letter.reason
        assert attempts == {str(genuine.message_id): 2}  # the minted one never reached it
        assert await stored() == [genuine.token_id]

        # The broker itself refuses the rest: another user's user_id, another service's queue.
        connection = await aio_pika.connect(service_urls["dispatcher"])
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange("uanet.events", ensure=False)
            forged = aio_pika.Message(
                minted.model_dump_json().encode(), user_id=publisher.broker.user
            )
            with pytest.raises(aio_pika.exceptions.AMQPError):
                await exchange.publish(forged, routing_key=minted.ROUTING_KEY, timeout=10)
            reader = await connection.channel()
            with pytest.raises(aio_pika.exceptions.AMQPError):
                queue = await reader.declare_queue("subscriptions.tokens", passive=True)
                await queue.consume(lambda message: asyncio.sleep(0))
        finally:
            await connection.close()
    finally:
        for runtime in (subscriptions, dispatcher, publisher):
            await runtime.broker.close()
            await runtime.engine.dispose()
