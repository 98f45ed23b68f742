"""Fixtures for the subscriptions service: a migrated database (SQLite and PostgreSQL), the app
with its lifespan running, an HTTP client, and helpers to seed and inspect the database."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from twilio.request_validator import RequestValidator

from services.subscriptions.app import create_app
from services.subscriptions.links import Links
from services.subscriptions.models import ActionRecipient, KnownAction, Outbox, Subscriber
from shared import events
from shared.migrations import upgrade
from shared.runtime import ServiceRuntime
from shared.settings import Settings
from shared.tokens import LinkSigner
from tests.conftest import SECRET

PUBLIC_URL = "http://subscriptions.test"
TWILIO_TOKEN = "twilio-test-auth-token"
# Nothing listens here: HTTP tests need no broker (the service keeps trying in the background and
# the outbox rows stay in the database, where the tests read them).
NO_BROKER = "amqp://guest:guest@127.0.0.1:1/"


async def migrated(url: str) -> str:
    await asyncio.to_thread(upgrade, "subscriptions", url)
    return url


@pytest.fixture
async def subscriptions_db(database_url: Callable[[str], str]) -> str:
    return await migrated(database_url("subscriptions"))


@asynccontextmanager
async def running_service(
    settings_for: Callable[..., Settings], folder: Path, subscribers: list[dict[str, Any]]
) -> AsyncIterator[ServiceRuntime]:
    """The service on a real broker (``settings_for`` is the ``make_settings`` fixture), on a
    migrated SQLite file in ``folder`` holding ``subscribers`` (rows), started and consuming."""
    database = await migrated(f"sqlite+aiosqlite:///{folder / 'subscriptions.db'}")
    app = create_app(settings_for(subscriptions_database_url=database, public_url=PUBLIC_URL))
    async with app.router.lifespan_context(app):
        runtime: ServiceRuntime = app.state.runtime
        await runtime.wait_started()
        async with runtime.sessionmaker() as session, session.begin():
            await session.execute(insert(Subscriber), subscribers)
        yield runtime


def service_settings(database: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "amqp_url": NO_BROKER,
        "secret_key": SECRET,
        "subscriptions_database_url": database,
        "public_url": PUBLIC_URL,
        "twilio_account_sid": "AC00000000000000000000000000000000",
        "twilio_auth_token": TWILIO_TOKEN,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(subscriptions_db: str) -> Settings:
    return service_settings(subscriptions_db)


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=PUBLIC_URL) as http:
        yield http


@pytest.fixture
def sessionmaker(app: FastAPI) -> async_sessionmaker[AsyncSession]:
    maker: async_sessionmaker[AsyncSession] = app.state.subscriptions.sessionmaker
    return maker


@pytest.fixture
def links() -> Links:
    return Links(LinkSigner(SECRET), PUBLIC_URL)


# ---- helpers --------------------------------------------------------------------------------


def path_of(url: str) -> str:
    assert url.startswith(PUBLIC_URL), url
    return url.removeprefix(PUBLIC_URL)


async def outbox(
    sessionmaker: async_sessionmaker[AsyncSession], routing_key: str
) -> list[dict[str, Any]]:
    async with sessionmaker() as session:
        rows = (
            await session.execute(
                select(Outbox).where(Outbox.routing_key == routing_key).order_by(Outbox.created_at)
            )
        ).scalars()
        return [json.loads(row.body) for row in rows]


async def add_subscriber(session: AsyncSession, **fields: Any) -> Subscriber:
    values: dict[str, Any] = {
        "public_id": uuid.uuid4(),
        "name": "Ana",
        "country": "GB",
        "language": "en",
        "timezone": "Europe/London",
        "themes": [],
        "frequency": "immediate",
        "confirmations_in_window": 0,
    }
    values.update(fields)
    subscriber = Subscriber(**values)
    session.add(subscriber)
    await session.flush()
    return subscriber


def action_published(**overrides: Any) -> events.ActionPublished:
    values: dict[str, Any] = {
        "action_id": uuid.uuid4(),
        "reference": "UA 12/26",
        "title": "Journalist held incommunicado",
        "country": "IR",
        "themes": ["torture"],
        "urgency": "urgent",
        "channels": ["email", "sms"],
        "default_language": "en",
        "audience": {"countries": [], "themes": [], "languages": []},
        "targets": [
            {
                "name": "Head of the Judiciary",
                "title": "Head of the Judiciary",
                "address": "c/o Embassy, 16 Prince's Gate, London SW7 1PT",
                "email": "judiciary@example.org",
                "salutation": "Dear Head of the Judiciary",
            }
        ],
        "content": {
            "en": {
                "subject": "Urgent Action: journalist at risk of torture",
                "summary": "Short case summary.",
                "body": "Full case text.",
                "sms": "Journalist at risk. Act now:",
                "model_letter": "I am writing to urge you to release ...",
            }
        },
        "published_at": datetime.now(UTC),
    }
    values.update(overrides)
    return events.ActionPublished.model_validate(values)


def known_action(event: events.ActionPublished) -> KnownAction:
    return KnownAction(
        id=event.action_id,
        reference=event.reference,
        title=event.title,
        status="published",
        urgency=event.urgency,
        channels=list(event.channels),
        default_language=event.default_language,
        audience=event.audience.model_dump(mode="json"),
        targets=[t.model_dump(mode="json") for t in event.targets],
        content={k: v.model_dump(mode="json") for k, v in event.content.items()},
        deadline=event.deadline,
        published_at=event.published_at,
    )


async def add_recipient(
    session: AsyncSession,
    action: KnownAction,
    subscriber: Subscriber,
    *,
    email: bool = True,
    sms: bool = False,
) -> ActionRecipient:
    recipient = ActionRecipient(
        action_id=action.id,
        subscriber_id=subscriber.id,
        via_email=email,
        via_sms=sms,
        created_at=datetime.now(UTC),
    )
    session.add(recipient)
    await session.flush()
    return recipient


def twilio_headers(params: dict[str, str], token: str = TWILIO_TOKEN) -> dict[str, str]:
    url = f"{PUBLIC_URL}/webhooks/twilio/sms"
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}
