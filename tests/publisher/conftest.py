"""Fixtures for the publisher: a migrated database (SQLite and PostgreSQL), the app in-process,
API tokens for each role, and a valid urgent action to start from."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from services.publisher.app import create_app
from services.publisher.auth import create_api_token
from shared.migrations import upgrade
from shared.settings import Settings
from tests.conftest import SECRET

SAMPLE_ACTION: dict[str, Any] = {
    "title": "Journalist held incommunicado at risk of torture",
    "country": "IR",
    "themes": ["torture", "freedom-of-expression"],
    "urgency": "urgent",
    "channels": ["email", "sms"],
    "deadline": "2026-12-20",
    "default_language": "en",
    "audience": {"countries": ["GB", "IE"], "themes": [], "languages": []},
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
            "body": "Full case text (Markdown).",
            "sms": "Journalist at risk of torture in Iran. Act now:",
            "model_letter": "I am writing to urge you to release ...",
        },
        "fr": {
            "subject": "Action urgente : journaliste en danger",
            "summary": "Résumé.",
            "body": "Texte complet.",
            "sms": "Journaliste en danger de torture en Iran. Agissez :",
            "model_letter": "Je vous écris pour demander ...",
        },
    },
}


def sample_action(**overrides: Any) -> dict[str, Any]:
    action = copy.deepcopy(SAMPLE_ACTION)
    action.update(overrides)
    return action


def publisher_settings(database_url: str, amqp_url: str | None = None) -> Settings:
    values: dict[str, Any] = {"publisher_database_url": database_url, "secret_key": SECRET}
    if amqp_url is not None:
        values["amqp_url"] = amqp_url
    return Settings(_env_file=None, **values)


async def migrated(url: str) -> str:
    await asyncio.to_thread(upgrade, "publisher", url)
    return url


@pytest.fixture
async def publisher_url(database_url: Callable[[str], str]) -> str:
    """A migrated publisher database, on SQLite and on PostgreSQL."""
    return await migrated(database_url("publisher"))


@pytest.fixture
async def sqlite_publisher_url(tmp_path: Path) -> str:
    """For tests of what does not depend on the database engine (validation, auth)."""
    return await migrated(f"sqlite+aiosqlite:///{tmp_path / 'publisher.db'}")


class Api:
    """The app in-process, without its broker (the outbox fills; nothing is relayed)."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, tokens: dict[str, str]) -> None:
        self.app = app
        self.client = client
        self.tokens = tokens

    def auth(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def create(self, role: str = "staff", **overrides: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/api/v1/actions", json=sample_action(**overrides), headers=self.auth(role)
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    async def publish(self, action_id: str) -> dict[str, Any]:
        response = await self.client.post(
            f"/api/v1/actions/{action_id}/publish", headers=self.auth("staff")
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


async def _open_api(
    url: str, settings: Settings | None = None
) -> tuple[Api, Callable[[], Awaitable[None]]]:
    app = create_app(settings or publisher_settings(url))
    sessionmaker = app.state.runtime.sessionmaker
    tokens = {
        role: await create_api_token(sessionmaker, role=role, name=f"test {role}")
        for role in ("admin", "staff", "coordinator")
    }
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")

    async def close() -> None:
        await client.aclose()
        await app.state.runtime.engine.dispose()

    return Api(app, client, tokens), close


@pytest.fixture
async def api(publisher_url: str) -> AsyncIterator[Api]:
    opened, close = await _open_api(publisher_url)
    try:
        yield opened
    finally:
        await close()


@pytest.fixture
async def sqlite_api(sqlite_publisher_url: str) -> AsyncIterator[Api]:
    opened, close = await _open_api(sqlite_publisher_url)
    try:
        yield opened
    finally:
        await close()
