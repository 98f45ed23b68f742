"""The authorization matrix: every route of the publisher and subscriptions APIs, and every console
route, called by every kind of caller, against the contract's tables (§3, §4, §7, §8).

Callers: no token, a token never issued, a revoked and an expired admin token, a token of each
role, and the console's session cookie of each role. The expected answers come from the contract,
not from the code: staff write, coordinators read, admin does both and reads the audit log; the
subscriptions data-rights endpoints are for admin; the live stream also takes the console's
cookie; OSDI (§8) reads people with an admin token and campaigns with a coordinator's, given as
``OSDI-API-Token`` or as a bearer token (the OSDI header opens nothing else). A caller who may not
call gets 401 (no valid token) or 403 (wrong role) before anything else; one who may gets the
route's own answer, never 401, 403 or a 5xx.

A route added without a row here fails ``test_every_route_is_in_the_matrix``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from sqlalchemy import select, update

from services.publisher import console
from services.publisher.app import create_app as create_publisher
from services.publisher.auth import create_api_token, revoke_api_token
from services.publisher.models import ApiToken, Outbox
from services.subscriptions.app import create_app as create_subscriptions
from services.subscriptions.tokens import make_token_handler
from shared import events
from shared.db import utcnow
from shared.messaging import Delivery
from tests.publisher.conftest import migrated as migrated_publisher
from tests.publisher.conftest import publisher_settings, sample_action
from tests.publisher.console_support import Browser, make_user
from tests.subscriptions.conftest import migrated as migrated_subscriptions
from tests.subscriptions.conftest import service_settings

ROLES = ("admin", "staff", "coordinator")
# The contract's roles (§3): staff write, coordinators read, admin does both and more.
WRITE = frozenset({"staff", "admin"})
READ = frozenset({"coordinator", "admin"})
ADMIN = frozenset({"admin"})
EVERYONE = frozenset(ROLES)
ACTION = "{action}"  # replaced by a published action's id
SUBSCRIBER = "{subscriber}"  # replaced by an unknown subscriber id
WEBHOOK = "{webhook}"  # replaced by an unknown webhook endpoint id
# Signed with a section's key (contract §9): every caller with a token or a cookie gets 401.
SIGNED = frozenset({"signed"})

UPDATE = {
    "kind": "further_information",
    "content": {"en": {"subject": "News", "body": "b", "sms": "s"}},
}


@dataclass(frozen=True)
class ApiRoute:
    service: str
    method: str
    path: str
    roles: frozenset[str] | None  # None: public
    body: Any = None
    cookie: bool = False  # the console's session cookie also opens it (any signed-in role)


API: tuple[ApiRoute, ...] = (
    ApiRoute("publisher", "POST", "/api/v1/actions", WRITE, sample_action()),
    ApiRoute("publisher", "GET", "/api/v1/actions", READ),
    ApiRoute("publisher", "GET", f"/api/v1/actions/{ACTION}", READ),
    ApiRoute("publisher", "PATCH", f"/api/v1/actions/{ACTION}", WRITE, {"title": "x"}),
    ApiRoute(
        "publisher", "PUT", f"/api/v1/actions/{ACTION}/targets", WRITE, {"targets": [{"name": "M"}]}
    ),
    ApiRoute("publisher", "POST", f"/api/v1/actions/{ACTION}/publish", WRITE),
    ApiRoute("publisher", "POST", f"/api/v1/actions/{ACTION}/updates", WRITE, UPDATE),
    ApiRoute(
        "publisher", "POST", f"/api/v1/actions/{ACTION}/close", WRITE, {"outcome": "no_change"}
    ),
    ApiRoute("publisher", "GET", f"/api/v1/actions/{ACTION}/stats", READ),
    ApiRoute("publisher", "GET", f"/api/v1/actions/{ACTION}/stats.csv", READ),
    ApiRoute("publisher", "GET", f"/api/v1/actions/{ACTION}/stats/stream", READ, cookie=True),
    ApiRoute("publisher", "GET", "/api/v1/audit", ADMIN),
    ApiRoute("publisher", "GET", "/osdi/v1/", READ),
    ApiRoute("publisher", "GET", "/osdi/v1/advocacy_campaigns", READ),
    ApiRoute("publisher", "GET", f"/osdi/v1/advocacy_campaigns/{ACTION}", READ),
    ApiRoute("publisher", "GET", f"/osdi/v1/advocacy_campaigns/{ACTION}/outreaches", READ),
    ApiRoute("publisher", "GET", "/osdi/v1/no-such-thing", READ),
    # Webhooks (§8): admin only.
    ApiRoute(
        "publisher",
        "POST",
        "/api/v1/webhooks",
        ADMIN,
        {"url": "https://crm.example.org/hooks", "events": ["action.published"]},
    ),
    ApiRoute("publisher", "GET", "/api/v1/webhooks", ADMIN),
    ApiRoute("publisher", "DELETE", f"/api/v1/webhooks/{WEBHOOK}", ADMIN),
    ApiRoute("publisher", "GET", f"/api/v1/webhooks/{WEBHOOK}/deliveries", ADMIN),
    ApiRoute(
        "publisher",
        "POST",
        f"/api/v1/webhooks/{WEBHOOK}/replay",
        ADMIN,
        {"since": "2026-12-01T00:00:00Z"},
    ),
    # Federation (§9): a section's staff decline a hub action or send its waiting follow-up;
    # the calls between hub and section are signed with a section's key, never a token.
    ApiRoute("publisher", "POST", f"/api/v1/actions/{ACTION}/decline", WRITE),
    ApiRoute(
        "publisher",
        "POST",
        f"/api/v1/actions/{ACTION}/pending_updates/{{pending_id}}/send",
        WRITE,
    ),
    ApiRoute("publisher", "POST", "/api/v1/federation/inbox", SIGNED),
    ApiRoute("publisher", "POST", "/api/v1/federation/counts", SIGNED),
    # Not routes: the rest of /api/v1 answers 401 first too (§7 "whatever its path").
    ApiRoute("publisher", "GET", "/api/v1/no-such-thing", EVERYONE),
    ApiRoute("publisher", "DELETE", f"/api/v1/actions/{ACTION}", EVERYONE),
    ApiRoute(
        "subscriptions",
        "POST",
        "/api/v1/subscribers",
        None,
        {"email": "ana@example.net", "country": "GB", "channels": ["email"]},
    ),
    # The CORS preflight of the sign-up (contract §11): public like the sign-up.
    ApiRoute("subscriptions", "OPTIONS", "/api/v1/subscribers", None),
    ApiRoute("subscriptions", "GET", f"/api/v1/subscribers/{SUBSCRIBER}/export", ADMIN),
    ApiRoute("subscriptions", "DELETE", f"/api/v1/subscribers/{SUBSCRIBER}", ADMIN),
    ApiRoute("subscriptions", "GET", "/api/v1/no-such-thing", ADMIN),
    ApiRoute("subscriptions", "GET", "/osdi/v1/people", ADMIN),
    ApiRoute("subscriptions", "GET", f"/osdi/v1/people/{SUBSCRIBER}", ADMIN),
    ApiRoute("subscriptions", "GET", "/osdi/v1/no-such-thing", ADMIN),
)


@dataclass(frozen=True)
class ConsoleRoute:
    method: str
    path: str
    roles: frozenset[str] | None  # None: anyone, signed in or not


CONSOLE: tuple[ConsoleRoute, ...] = (
    ConsoleRoute("GET", "/login", None),
    ConsoleRoute("POST", "/login", None),
    ConsoleRoute("POST", "/logout", None),
    ConsoleRoute("GET", "/", EVERYONE),
    ConsoleRoute("GET", "/overview", EVERYONE),
    ConsoleRoute("GET", "/actions/new", WRITE),
    ConsoleRoute("POST", "/actions/new", WRITE),
    ConsoleRoute("GET", f"/actions/{ACTION}", EVERYONE),
    ConsoleRoute("GET", f"/actions/{ACTION}/preview", EVERYONE),
    ConsoleRoute("GET", f"/actions/{ACTION}/chart.svg", EVERYONE),
    ConsoleRoute("GET", f"/actions/{ACTION}/stats.csv", EVERYONE),
    ConsoleRoute("GET", f"/actions/{ACTION}/edit", WRITE),
    ConsoleRoute("POST", f"/actions/{ACTION}/edit", WRITE),
    ConsoleRoute("GET", f"/actions/{ACTION}/publish", WRITE),
    ConsoleRoute("POST", f"/actions/{ACTION}/publish", WRITE),
    ConsoleRoute("POST", f"/actions/{ACTION}/updates", WRITE),
    ConsoleRoute("POST", f"/actions/{ACTION}/close", WRITE),
    ConsoleRoute("POST", f"/actions/{ACTION}/targets/fix", WRITE),
    ConsoleRoute("GET", "/audit", ADMIN),
    ConsoleRoute("GET", "/webhooks", ADMIN),
    ConsoleRoute("POST", f"/webhooks/{WEBHOOK}/replay", ADMIN),
    ConsoleRoute("POST", f"/actions/{ACTION}/decline", WRITE),
    ConsoleRoute("POST", f"/actions/{ACTION}/pending/{{pending_id}}/send", WRITE),
)


def _template(path: str) -> str:
    return (
        path.replace(ACTION, "{action_id}")
        .replace(SUBSCRIBER, "{subscriber_id}")
        .replace(WEBHOOK, "{endpoint_id}")
    )


def test_every_route_is_in_the_matrix() -> None:
    """Every API route either app serves, and every console route, has its row."""
    settings = publisher_settings("sqlite+aiosqlite:///:memory:")
    listed = {(r.service, r.method, _template(r.path)) for r in API}
    for service, app in (
        ("publisher", create_publisher(settings)),
        ("subscriptions", create_subscriptions(service_settings("sqlite+aiosqlite:///:memory:"))),
    ):
        for path, operations in app.openapi()["paths"].items():
            if not path.startswith(("/api/", "/osdi/")):
                continue
            for method in operations:
                assert (service, method.upper(), path) in listed, f"{method} {path} not in matrix"
    console_listed = {(r.method, _template(r.path)) for r in CONSOLE}
    for route in console.router.routes:
        for method in getattr(route, "methods", ()):
            if method != "HEAD":
                key = (method, getattr(route, "path", ""))
                assert key in console_listed, f"console {key} not in matrix"


@dataclass(frozen=True)
class Caller:
    label: str
    token: str | None = None
    cookie_role: str | None = None
    role: str | None = None  # of a live token
    osdi_header: bool = False  # sent as OSDI-API-Token rather than Authorization: Bearer


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[str]:
    """The app on a loopback port (the live stream needs a real server to be cut short)."""
    import asyncio

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _mirror_tokens(publisher: FastAPI, subscriptions: FastAPI) -> None:
    """What the broker would carry: the publisher's token events, handed to subscriptions."""
    handler = make_token_handler(subscriptions.state.runtime.sessionmaker)
    async with publisher.state.runtime.sessionmaker() as session:
        rows = (
            await session.execute(
                select(Outbox).where(Outbox.routing_key.like("token.%")).order_by(Outbox.created_at)
            )
        ).scalars()
        messages = [(row.routing_key, row.body) for row in rows]
    for key, body in messages:
        model = events.ApiTokenIssued if key == "token.issued" else events.ApiTokenRevoked
        delivery = Delivery(queue="subscriptions.tokens", routing_key=key, attempt=1)
        await handler(model.model_validate_json(body), delivery)


async def test_the_matrix(tmp_path: Path) -> None:
    publisher = create_publisher(
        publisher_settings(await migrated_publisher(f"sqlite+aiosqlite:///{tmp_path / 'p.db'}"))
    )
    subscriptions = create_subscriptions(
        service_settings(await migrated_subscriptions(f"sqlite+aiosqlite:///{tmp_path / 's.db'}"))
    )
    sessionmaker = publisher.state.runtime.sessionmaker
    tokens = {role: await create_api_token(sessionmaker, role=role, name=role) for role in ROLES}
    revoked = await create_api_token(sessionmaker, role="admin", name="revoked")
    await revoke_api_token(sessionmaker, name="revoked")
    expired = await create_api_token(
        sessionmaker, role="admin", name="expired", expires_at=utcnow() + timedelta(hours=1)
    )
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(ApiToken)
            .where(ApiToken.name == "expired")
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    callers = [
        Caller("no token"),
        Caller("a token never issued", token="uat_" + "x" * 43),
        Caller("a revoked admin token", token=revoked),
        Caller("an expired admin token", token=expired),
        *(Caller(f"{role} token", token=tokens[role], role=role) for role in ROLES),
        *(
            Caller(
                f"{role} token as OSDI-API-Token", token=tokens[role], role=role, osdi_header=True
            )
            for role in ROLES
        ),
        *(Caller(f"{role} console session", cookie_role=role) for role in ROLES),
    ]

    async with subscriptions.router.lifespan_context(subscriptions):
        await _mirror_tokens(publisher, subscriptions)
        # The subscriptions mirror keeps the expiry it was told of; make it past there too.
        from services.subscriptions.models import ApiToken as MirroredToken

        async with subscriptions.state.runtime.sessionmaker() as session, session.begin():
            await session.execute(
                update(MirroredToken)
                .where(MirroredToken.name == "expired")
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )
        async with served(publisher) as publisher_url:
            created = await _json_call(
                publisher_url, "POST", "/api/v1/actions", tokens["staff"], sample_action()
            )
            action_id = created["id"]
            await _json_call(
                publisher_url, "POST", f"/api/v1/actions/{action_id}/publish", tokens["staff"]
            )
            cookies: dict[str, dict[str, str]] = {}
            for role in ROLES:
                browser = Browser(publisher)
                await browser.sign_in(await make_user(publisher, role))
                cookies[role] = dict(browser.client.cookies.items())
                await browser.aclose()

            wrong = await _api_matrix(publisher_url, subscriptions, callers, cookies, action_id)
            wrong += await _console_matrix(publisher_url, callers, cookies, action_id)
    await publisher.state.runtime.engine.dispose()
    assert wrong == [], "\n".join(wrong)


async def _json_call(
    base: str, method: str, path: str, token: str, body: Any = None
) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.request(
            method, base + path, json=body, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code < 300, response.text
    result: dict[str, Any] = response.json()
    return result


def _expected_api(route: ApiRoute, caller: Caller) -> int | None:
    """401 or 403, or None: the route's own answer (anything but 401, 403 and 5xx)."""
    if route.roles is None:
        return None
    if route.roles == SIGNED:
        return 401
    if caller.cookie_role is not None:
        return None if route.service == "publisher" and route.cookie else 401
    if caller.role is None or (caller.osdi_header and not route.path.startswith("/osdi/")):
        return 401
    return None if caller.role in route.roles else 403


async def _status(
    client: httpx.AsyncClient, method: str, url: str, caller: Caller, body: Any, cookies: Any
) -> int:
    headers: dict[str, str] = {}
    if caller.token:
        headers = (
            {"OSDI-API-Token": caller.token}
            if caller.osdi_header
            else {"Authorization": f"Bearer {caller.token}"}
        )
    content = json.dumps(body).encode() if body is not None else None
    if content is not None:
        headers["Content-Type"] = "application/json"
    client.cookies.clear()
    for name, value in (cookies or {}).items():
        client.cookies.set(name, value)
    request = client.build_request(method, url, headers=headers, content=content)
    response = await client.send(request, stream=True)  # a stream is judged by its status
    await response.aclose()
    return response.status_code


async def _api_matrix(
    publisher_url: str,
    subscriptions: FastAPI,
    callers: list[Caller],
    cookies: dict[str, dict[str, str]],
    action_id: str,
) -> list[str]:
    wrong: list[str] = []
    unknown_subscriber = str(uuid.uuid4())
    transport = httpx.ASGITransport(app=subscriptions)
    async with (
        httpx.AsyncClient(timeout=10, follow_redirects=False) as remote,
        httpx.AsyncClient(transport=transport, base_url="http://subscriptions.test") as local,
    ):
        for route in API:
            path = (
                route.path.replace(ACTION, action_id)
                .replace(SUBSCRIBER, unknown_subscriber)
                .replace(WEBHOOK, str(uuid.uuid4()))
            )
            for caller in callers:
                if route.service == "publisher":
                    client, url = remote, publisher_url + path
                else:
                    client, url = local, path
                jar = cookies.get(caller.cookie_role or "")
                status = await _status(client, route.method, url, caller, route.body, jar)
                expected = _expected_api(route, caller)
                if expected is None:
                    ok = status not in (401, 403) and status < 500
                else:
                    ok = status == expected
                if not ok:
                    wanted = expected or "its own answer"
                    wrong.append(
                        f"{route.method} {route.path} by {caller.label}: {status}, not {wanted}"
                    )
    return wrong


async def _console_matrix(
    publisher_url: str,
    callers: list[Caller],
    cookies: dict[str, dict[str, str]],
    action_id: str,
) -> list[str]:
    """Console pages: a signed-out visitor is sent to sign in (a token does not sign anyone in),
    a role that may not is refused (403), one that may gets the page's own answer."""
    wrong: list[str] = []
    async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
        for route in CONSOLE:
            url = publisher_url + route.path.replace(ACTION, action_id).replace(
                WEBHOOK, str(uuid.uuid4())
            )
            for caller in callers:
                jar = cookies.get(caller.cookie_role or "")
                status = await _status(client, route.method, url, caller, None, jar)
                if route.roles is None:
                    ok = status < 500
                    wanted = "no 5xx"
                elif caller.cookie_role is None:
                    ok = status == 303
                    wanted = "303 to /login"
                elif caller.cookie_role in route.roles:
                    # A POST without its form's CSRF token is 403: a refusal the matrix cannot
                    # tell from a wrong role, so an allowed POST is only checked for no 5xx.
                    ok = status < 500 and (route.method == "POST" or status != 403)
                    wanted = "its own answer"
                else:
                    ok = status == 403
                    wanted = "403"
                if not ok:
                    wrong.append(
                        f"console {route.method} {route.path} by {caller.label}: {status}, "
                        f"not {wanted}"
                    )
    return wrong
