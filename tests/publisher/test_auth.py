"""Bearer tokens and roles: 401 without a valid token, 403 for the wrong role."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from services.publisher.auth import create_api_token, revoke_api_token
from services.publisher.models import ApiToken
from tests.publisher.conftest import Api, sample_action

ID = str(uuid.uuid4())
WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("post", "/api/v1/actions", sample_action()),
    ("patch", f"/api/v1/actions/{ID}", {"title": "x"}),
    ("post", f"/api/v1/actions/{ID}/publish", None),
    ("post", f"/api/v1/actions/{ID}/updates", {"kind": "further_information", "content": {}}),
    ("post", f"/api/v1/actions/{ID}/close", {"outcome": "released"}),
    ("put", f"/api/v1/actions/{ID}/targets", {"targets": [{"name": "Minister"}]}),
]
READS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("get", "/api/v1/actions", None),
    ("get", f"/api/v1/actions/{ID}", None),
    ("get", f"/api/v1/actions/{ID}/stats", None),
    ("get", f"/api/v1/actions/{ID}/stats.csv", None),
    ("get", f"/api/v1/actions/{ID}/stats/stream", None),
]


async def _call(
    api: Api, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
) -> int:
    kwargs: dict[str, Any] = {"headers": headers}
    if body is not None:
        kwargs["json"] = body
    response = await getattr(api.client, method)(path, **kwargs)
    status: int = response.status_code
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    return status


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer uat_not-a-real-token"},
        {"Authorization": "Bearer something-else"},
    ],
)
async def test_no_valid_token_is_401(sqlite_api: Api, headers: dict[str, str]) -> None:
    for method, path, body in WRITES + READS:
        assert await _call(sqlite_api, method, path, body, headers) == 401, (method, path)


async def test_roles(sqlite_api: Api) -> None:
    for method, path, body in WRITES:
        assert await _call(sqlite_api, method, path, body, sqlite_api.auth("coordinator")) == 403
        assert await _call(sqlite_api, method, path, body, sqlite_api.auth("staff")) != 403
        assert await _call(sqlite_api, method, path, body, sqlite_api.auth("admin")) != 403
    for method, path, body in READS:
        # Read literally: staff write, coordinators read.
        assert await _call(sqlite_api, method, path, body, sqlite_api.auth("staff")) == 403
        assert await _call(sqlite_api, method, path, body, sqlite_api.auth("coordinator")) != 403
        assert await _call(sqlite_api, method, path, body, sqlite_api.auth("admin")) != 403


async def test_only_a_hash_is_stored_and_revoked_tokens_stop_working(sqlite_api: Api) -> None:
    sessionmaker = sqlite_api.app.state.runtime.sessionmaker
    token = await create_api_token(sessionmaker, role="coordinator", name="dashboard")
    assert token.startswith("uat_") and len(token) > 40
    async with sessionmaker() as session:
        row = (
            await session.execute(select(ApiToken).where(ApiToken.name == "dashboard"))
        ).scalar_one()
    assert row.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in (row.token_hash, row.name)

    headers = {"Authorization": f"Bearer {token}"}
    assert (await sqlite_api.client.get("/api/v1/actions", headers=headers)).status_code == 200
    assert await revoke_api_token(sessionmaker, name="dashboard") == 1
    assert (await sqlite_api.client.get("/api/v1/actions", headers=headers)).status_code == 401


async def test_token_needs_a_known_role_and_a_name(sqlite_api: Api) -> None:
    sessionmaker = sqlite_api.app.state.runtime.sessionmaker
    with pytest.raises(ValueError):
        await create_api_token(sessionmaker, role="root", name="x")
    with pytest.raises(ValueError):
        await create_api_token(sessionmaker, role="staff", name="  ")


async def test_the_caller_is_checked_before_the_path_and_the_body(sqlite_api: Api) -> None:
    """Contract §7: 401 whatever the path or body, then 403, and only then 404 or 422."""
    client = sqlite_api.client
    broken = {"content": b"{not json", "headers": {"content-type": "application/json"}}
    coordinator = sqlite_api.auth("coordinator")
    staff = sqlite_api.auth("staff")
    cases: list[tuple[str, str, dict[str, Any], int, int]] = [
        # method, path, request, without a token, with the right role
        ("get", "/api/v1/actions/not-an-id/stats", {}, 401, 404),
        ("get", "/api/v1/actions/not-an-id", {}, 401, 404),
        ("get", "/api/v1/actions?limit=0", {}, 401, 422),
        ("post", "/api/v1/actions", broken, 401, 422),
        ("patch", "/api/v1/actions/not-an-id", broken, 401, 422),
        ("post", f"/api/v1/actions/{ID}/close", {"json": {"outcome": "?"}}, 401, 422),
        ("get", "/api/v1/nowhere", {}, 401, 404),
        ("delete", f"/api/v1/actions/{ID}", {}, 401, 405),
    ]
    for method, path, request, anonymous, allowed in cases:
        body = {k: v for k, v in request.items() if k != "headers"}
        given: dict[str, str] = request.get("headers", {})
        bare = await client.request(method, path, **body, headers=given)
        assert bare.status_code == anonymous, (method, path, bare.text)
        assert bare.headers["WWW-Authenticate"] == "Bearer"
        unknown = given | {"Authorization": "Bearer uat_revoked-or-never"}
        assert (await client.request(method, path, **body, headers=unknown)).status_code == 401
        role = staff if method in ("post", "patch", "put") else coordinator
        answered = await client.request(method, path, **body, headers=given | role)
        assert answered.status_code == allowed, (method, path, answered.text)
    # The wrong role is 403 before the body is read.
    for headers, path in ((coordinator, "/api/v1/actions"), (staff, "/api/v1/actions/x/stats")):
        method = "post" if path == "/api/v1/actions" else "get"
        wrong = await client.request(
            method,
            path,
            content=b"{not json",
            headers={"content-type": "application/json"} | headers,
        )
        assert wrong.status_code == 403, (path, wrong.text)
    assert (await client.delete(f"/api/v1/actions/{ID}", headers=staff)).headers["Allow"]


@pytest.mark.parametrize(
    "change",
    [
        {"themes": "torture"},
        {"channels": "email"},
        {"audience": {"countries": "GB"}},
        {"targets": {"name": "Minister"}},
    ],
)
async def test_a_list_field_takes_only_a_list(sqlite_api: Api, change: dict[str, Any]) -> None:
    response = await sqlite_api.client.post(
        "/api/v1/actions", json=sample_action(**change), headers=sqlite_api.auth("staff")
    )
    assert response.status_code == 422, response.text
    [field] = change
    assert any(e["field"].split(".")[0] == field for e in response.json()["errors"])
