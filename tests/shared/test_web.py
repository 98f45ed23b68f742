"""shared.web: X-Forwarded-For is believed only from a trusted proxy; every response carries the
security headers; the OpenAPI document names our error bodies."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import PlainTextResponse, StreamingResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel
from starlette.requests import Request

from services.dispatcher.app import create_app as dispatcher_app
from services.publisher.app import create_app as publisher_app
from shared.settings import Settings
from shared.web import (
    InvalidBody,
    SecurityHeaders,
    client_address,
    error_responses,
    install_common,
)


def _request(peer: str | None, forwarded: str | None = None) -> Request:
    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": headers,
        "client": (peer, 50000) if peer is not None else None,
    }
    return Request(scope)


PROXIES = frozenset({"127.0.0.1", "10.0.0.5"})


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # Straight from the internet: the header is whatever the client wants; ignored.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        ("203.0.113.9", None, "203.0.113.9"),
        # Through our proxy: the hop it saw.
        ("127.0.0.1", "198.51.100.1", "198.51.100.1"),
        # A client that forges the header in front of our proxy: the proxy appends the real peer.
        ("127.0.0.1", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        # Two of our proxies in a row: skip both.
        ("127.0.0.1", "198.51.100.1, 10.0.0.5", "198.51.100.1"),
        ("10.0.0.5", "6.6.6.6,198.51.100.1 , 127.0.0.1", "198.51.100.1"),
        # A trusted proxy without the header, or with an empty one: the proxy itself.
        ("127.0.0.1", None, "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", " , ", "127.0.0.1"),
        # Only our proxies in the chain.
        ("127.0.0.1", "10.0.0.5", "127.0.0.1"),
        # No client at all (some test transports).
        (None, "198.51.100.1", ""),
    ],
)
def test_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded: str | None, expected: str
) -> None:
    assert client_address(_request(peer, forwarded), PROXIES) == expected


def test_nothing_trusted_means_the_peer() -> None:
    assert client_address(_request("127.0.0.1", "198.51.100.1"), frozenset()) == "127.0.0.1"


def test_trusted_proxies_may_be_networks_and_ipv6() -> None:
    proxies = frozenset({"172.18.0.0/16", "::1"})
    assert client_address(_request("172.18.3.4", "198.51.100.1"), proxies) == "198.51.100.1"
    assert client_address(_request("0:0::1", "2001:db8::7"), proxies) == "2001:db8::7"
    assert client_address(_request("172.19.0.1", "198.51.100.1"), proxies) == "172.19.0.1"


def test_several_forwarded_for_headers_are_one_list() -> None:
    # Two header lines are the same as one comma-joined line (RFC 9110); the last one is nearest.
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "headers": [(b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"198.51.100.1")],
        "client": ("127.0.0.1", 50000),
    }
    assert client_address(Request(scope), PROXIES) == "198.51.100.1"


# ---- security headers and the OpenAPI document -------------------------------------------------

HERE = Path(__file__).resolve().parents[2]
TEMPLATES = [
    *sorted((HERE / "services/publisher/templates").glob("*.j2")),
    *sorted((HERE / "services/subscriptions/templates").glob("*.html")),
]
POLICY = SecurityHeaders(
    "default-src 'self'; frame-ancestors 'none'", referrer_policy="no-referrer"
)


def _small_app() -> FastAPI:
    async def ready() -> dict[str, bool]:
        return {"database": True}

    app = FastAPI()
    install_common(app, ready, POLICY)

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            yield b"data: 1\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.get("/broken")
    async def broken() -> None:
        raise RuntimeError("a bug")

    @app.get("/own-policy")
    async def own_policy() -> PlainTextResponse:
        return PlainTextResponse("x", headers={"Content-Security-Policy": "default-src 'none'"})

    @app.post("/items", responses=error_responses(404))
    async def create(item: _Item, _: Annotated[object, Depends(HTTPBearer())]) -> _Item:
        return item

    return app


class _Item(BaseModel):
    name: str


async def _get(app: FastAPI, path: str) -> httpx.Response:
    # As a server would: a bug is a 500 answer, not an exception in the test.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.get(path)


@pytest.mark.parametrize(
    "path", ["/healthz", "/stream", "/no-such-page", "/openapi.json", "/broken"]
)
async def test_every_response_carries_the_security_headers(path: str) -> None:
    response = await _get(_small_app(), path)
    assert response.status_code == {"/broken": 500, "/no-such-page": 404}.get(path, 200)
    assert response.headers["content-security-policy"] == POLICY.content_security_policy
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_a_route_may_choose_its_own_policy_once() -> None:
    response = await _get(_small_app(), "/own-policy")
    assert response.headers.get_list("content-security-policy") == ["default-src 'none'"]
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_the_services_send_their_policies() -> None:
    settings = Settings(_env_file=None, secret_key="test-secret")  # type: ignore[call-arg]
    console = await _get(publisher_app(settings), "/login")
    assert "frame-ancestors 'none'" in console.headers["content-security-policy"]
    assert "script-src 'self'" in console.headers["content-security-policy"]
    assert console.headers["x-content-type-options"] == "nosniff"
    assert console.headers["referrer-policy"] == "same-origin"
    api = await _get(publisher_app(settings), "/api/v1/actions")
    assert api.status_code == 401
    assert "frame-ancestors 'none'" in api.headers["content-security-policy"]
    dispatcher = await _get(dispatcher_app(settings), "/healthz")
    assert dispatcher.headers["content-security-policy"].startswith("default-src 'none'")
    assert dispatcher.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda p: p.name)
def test_pages_run_no_inline_script(template: Path) -> None:
    # The policies allow script only from our own files: inline code would be blocked anyway,
    # so none may be written (a <script> has a src and no body; no on* handlers; no javascript:).
    text = template.read_text()
    for match in re.finditer(r"<script\b([^>]*)>(.*?)</script>", text, re.S | re.I):
        assert "src=" in match.group(1) and not match.group(2).strip(), match.group(0)
    assert not re.search(r"\son[a-z]+\s*=", text, re.I)
    assert "javascript:" not in text.lower()


async def test_openapi_documents_our_error_bodies() -> None:
    document = (await _get(_small_app(), "/openapi.json")).json()
    responses = document["paths"]["/items"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "403", "404", "413", "422"}
    schema = responses["422"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/InvalidBody"}
    assert responses["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorBody"
    }
    invalid = document["components"]["schemas"]["InvalidBody"]
    assert invalid["required"] == ["detail", "errors"]
    # FastAPI's own 422 shape is gone: nothing answers with it.
    assert "HTTPValidationError" not in document["components"]["schemas"]
    # Health has no parameters that can fail: no 422 there; any request may meet the body limit.
    assert set(document["paths"]["/healthz"]["get"]["responses"]) == {"200", "400", "413"}
    # Our 422 body really has that shape.
    transport = httpx.ASGITransport(app=_small_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        refused = await client.post(
            "/items", json={"name": 3}, headers={"Authorization": "Bearer x"}
        )
    assert refused.status_code == 422
    assert InvalidBody.model_validate(refused.json()).errors[0].field == "name"
