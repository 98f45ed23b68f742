"""API tokens from the command line: create (with an expiry), list (never the secret), revoke by
name; expired and revoked tokens get 401; last use is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from services.publisher.audit import AuditConsumer
from services.publisher.auth import create_api_token, hash_token
from services.publisher.models import ApiToken, AuditEntry, Outbox
from shared import events
from shared.db import make_engine, make_sessionmaker, utcnow
from tests.publisher.conftest import Api
from uanet_cli.main import app, parse_duration


@pytest.fixture
def cli(sqlite_publisher_url: str) -> Iterator[Any]:
    runner = CliRunner()
    env = {"UANET_PUBLISHER_DATABASE_URL": sqlite_publisher_url}

    def run(*args: str) -> Any:
        return runner.invoke(app, list(args), env=env)

    yield run


def rows_of(url: str, model: Any) -> list[Any]:
    async def read() -> list[Any]:
        engine = make_engine(url)
        try:
            async with make_sessionmaker(engine)() as session:
                return list((await session.execute(select(model))).scalars())
        finally:
            await engine.dispose()

    return asyncio.run(read())


def test_create_list_and_revoke_from_the_command_line(cli: Any, sqlite_publisher_url: str) -> None:
    created = cli("token", "create", "--role", "coordinator", "--name", "dashboard")
    assert created.exit_code == 0, created.output
    secret = created.output.splitlines()[-1]
    assert secret.startswith("uat_")
    expiring = cli("token", "create", "--role", "admin", "--name", "ops", "--expires-in", "90d")
    assert expiring.exit_code == 0, expiring.output
    ops_secret = expiring.output.splitlines()[-1]

    listed = cli("token", "list")
    assert listed.exit_code == 0, listed.output
    header, *lines = listed.output.splitlines()
    assert header.split() == ["NAME", "ROLE", "CREATED", "LAST", "USED", "EXPIRES", "STATE"]
    by_name = {line.split()[0]: line for line in lines}
    assert set(by_name) == {"dashboard", "ops"}
    assert "coordinator" in by_name["dashboard"] and by_name["dashboard"].endswith("live")
    assert "never" in by_name["dashboard"]  # not used yet, never expires
    expected_expiry = (utcnow() + timedelta(days=90)).strftime("%Y-%m-%d")
    assert expected_expiry in by_name["ops"]
    # Never the secret, nor its hash.
    for token in (secret, ops_secret):
        assert token not in listed.output and hash_token(token) not in listed.output

    revoked = cli("token", "revoke", "dashboard")
    assert revoked.exit_code == 0, revoked.output
    after = cli("token", "list").output
    assert [line for line in after.splitlines() if line.startswith("dashboard")][0].endswith(
        "revoked"
    )
    again = cli("token", "revoke", "dashboard")
    assert again.exit_code == 2
    assert "no live token named 'dashboard'" in again.output

    tokens = {row.name: row for row in rows_of(sqlite_publisher_url, ApiToken)}
    assert tokens["dashboard"].revoked_at is not None
    assert tokens["ops"].expires_at is not None and tokens["ops"].revoked_at is None
    outbox = rows_of(sqlite_publisher_url, Outbox)
    issued = [
        events.ApiTokenIssued.model_validate_json(r.body)
        for r in outbox
        if r.routing_key == "token.issued"
    ]
    assert {e.name: e.expires_at is not None for e in issued} == {"dashboard": False, "ops": True}
    assert [r.routing_key for r in outbox].count("token.revoked") == 1
    audited = [
        (e.event, e.subject, e.actor_kind) for e in rows_of(sqlite_publisher_url, AuditEntry)
    ]
    assert audited == [
        ("token.created", "token dashboard (coordinator)", "cli"),
        ("token.created", "token ops (admin)", "cli"),
        ("token.revoked", "token dashboard (coordinator)", "cli"),
    ]


@pytest.mark.parametrize("given", ["90", "0d", "-5d", "3y", "d", "99999999d", "5000w", " "])
def test_a_bad_expiry_is_one_line_and_exit_2(cli: Any, given: str) -> None:
    result = cli("token", "create", "--role", "staff", "--name", "x", "--expires-in", given)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("uanet: --expires-in")


def test_durations() -> None:
    assert parse_duration("30m") == timedelta(minutes=30)
    assert parse_duration("12H") == timedelta(hours=12)
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("8w") == timedelta(weeks=8)


def test_no_tokens_and_an_unmigrated_database(cli: Any, tmp_path: Any) -> None:
    assert cli("token", "list").output.strip() == "no tokens"
    runner = CliRunner()
    env = {"UANET_PUBLISHER_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'none.db'}"}
    for args in (["token", "list"], ["token", "revoke", "x"]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 2 and "uanet migrate" in result.output


async def test_an_expired_token_gets_401(sqlite_api: Api) -> None:
    sessionmaker = sqlite_api.app.state.runtime.sessionmaker
    soon = await create_api_token(
        sessionmaker, role="coordinator", name="soon", expires_at=utcnow() + timedelta(hours=1)
    )
    headers = {"Authorization": f"Bearer {soon}"}
    assert (await sqlite_api.client.get("/api/v1/actions", headers=headers)).status_code == 200
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(ApiToken)
            .where(ApiToken.name == "soon")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    response = await sqlite_api.client.get("/api/v1/actions", headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_last_use_is_recorded_at_most_once_a_minute(sqlite_api: Api) -> None:
    sessionmaker = sqlite_api.app.state.runtime.sessionmaker

    async def last_used() -> Any:
        async with sessionmaker() as session:
            return await session.scalar(
                select(ApiToken.last_used_at).where(ApiToken.name == "test coordinator")
            )

    assert await last_used() is None
    headers = sqlite_api.auth("coordinator")
    assert (await sqlite_api.client.get("/api/v1/actions", headers=headers)).status_code == 200
    first = await last_used()
    assert first is not None and utcnow() - first < timedelta(minutes=1)
    assert (await sqlite_api.client.get("/api/v1/actions", headers=headers)).status_code == 200
    assert await last_used() == first  # within the minute: no write
    # A refused call is a use too (the token is live; the role is wrong): still recorded.
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(ApiToken)
            .where(ApiToken.name == "test coordinator")
            .values(last_used_at=utcnow() - timedelta(minutes=5))
        )
    assert (await sqlite_api.client.post("/api/v1/actions", headers=headers)).status_code == 403
    assert utcnow() - await last_used() < timedelta(minutes=1)


async def test_use_on_another_service_shows_as_last_use(sqlite_api: Api) -> None:
    sessionmaker = sqlite_api.app.state.runtime.sessionmaker
    await create_api_token(sessionmaker, role="admin", name="eraser")
    async with sessionmaker() as session:
        [issued] = [
            events.ApiTokenIssued.model_validate_json(row.body)
            for row in (await session.execute(select(Outbox))).scalars()
            if row.routing_key == "token.issued" and '"eraser"' in row.body
        ]
    consumer = AuditConsumer(sqlite_api.app.state.database)
    used_at = utcnow() - timedelta(minutes=3)
    await consumer(events.ApiTokenUsed(token_id=issued.token_id, used_at=used_at))
    # A report older than what is known changes nothing (they may arrive out of order).
    await consumer(
        events.ApiTokenUsed(token_id=issued.token_id, used_at=used_at - timedelta(hours=1))
    )
    async with sessionmaker() as session:
        tokens = {
            row.name: row.last_used_at
            for row in (await session.execute(select(ApiToken))).scalars()
        }
    assert tokens["eraser"] == used_at
    assert tokens["test admin"] is None  # the others untouched
