"""What every service's HTTP side has: health, readiness, metrics, and errors that are never a 500
for bad input."""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.settings import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]

_TOO_LARGE = b'{"detail":"request body too large"}'


class BodyLimit:
    """413 for a request body over ``max_bytes``, before the app has read past the limit.

    Pure ASGI, outside every route, dependency and parser: a declared ``Content-Length`` over the
    limit is refused before a byte of the body is read; a chunked (or lying) body is counted as it
    streams, and the chunk that crosses the limit never reaches the app, which sees the client
    gone instead. Authentication, signatures and form parsing all come after, so no request,
    signed or not, can make a service hold more than the limit in memory or on disk.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is None:
            await _refuse(send, 400, b'{"detail":"malformed Content-Length"}')
            return
        if declared > self.max_bytes:
            await _refuse(send)
            return
        received = 0
        started = False
        refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    refused = True
                    if not started:
                        await _refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the 413 is the answer; whatever the app says after it is dropped
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not refused:
                raise
            # The app failed reading a body cut short at the limit: already answered 413.


def _content_length(scope: Scope) -> int | None:
    """The declared length (0 when none: chunked bodies are counted as they come); None when
    it is malformed."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return 0


async def _refuse(send: Send, status: int = 413, body: bytes = _TOO_LARGE) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is not read: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def field_errors(exc: RequestValidationError) -> list[dict[str, str]]:
    """Pydantic's errors as ``{"field": "email", "message": "..."}``, no input echoed back."""
    out: list[dict[str, str]] = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
        out.append({"field": ".".join(loc) or "body", "message": str(err.get("msg", "invalid"))})
    return out


HSTS = (b"strict-transport-security", b"max-age=31536000; includeSubDomains")


class StrictTransportSecurity:
    """HSTS on every response of a service whose public URL is https: browsers then never
    reach it over plain http (nor send its cookies there)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_hsts(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), HSTS]
            await send(message)

        await self.app(scope, receive, with_hsts)


def install_common(
    app: FastAPI,
    ready: ReadyCheck,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    public_url: str | None = None,
) -> None:
    """``public_url``: the service as its users reach it; https turns on HSTS."""
    if public_url is not None and public_url.startswith("https://"):
        app.add_middleware(StrictTransportSecurity)
    # Added last, so outermost: nothing runs before the body limit.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", include_in_schema=False)
    async def readyz() -> Response:
        checks = await ready()
        status = 200 if all(checks.values()) else 503
        return JSONResponse({"ready": status == 200, "checks": checks}, status_code=status)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = field_errors(exc)
        fields = ", ".join(sorted({e["field"] for e in errors}))
        return JSONResponse({"detail": f"invalid: {fields}", "errors": errors}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        # Logged without the request body (personal data) and by the route's template, not its
        # path: subscriber links carry their token in the path (/act/{token}).
        log.exception("unhandled error on %s %s", request.method, route_template(request))
        return JSONResponse({"detail": "internal error"}, status_code=500)


def route_template(request: Request) -> str:
    """``/act/{token}`` rather than the path itself, which may hold a token."""
    route = request.scope.get("route")
    template = getattr(route, "path", None)
    return template if isinstance(template, str) else "(no route)"


def _in(address: str, trusted: frozenset[str]) -> bool:
    """Whether ``address`` is one of ``trusted``: exact addresses or networks (``172.18.0.0/16``),
    IPv6 compared by value (``::1`` is ``0:0::1``)."""
    if address in trusted:
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(trusted))


@functools.lru_cache(maxsize=16)
def _networks(trusted: frozenset[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for entry in trusted:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            continue
    return tuple(networks)


def is_https(request: Request, trusted_proxies: frozenset[str]) -> bool:
    """Whether the client reached us over https: the request's own scheme, or the
    ``X-Forwarded-Proto`` of a trusted proxy that terminated TLS (its nearest hop's value)."""
    if request.url.scheme == "https":
        return True
    peer = request.client.host if request.client else ""
    if peer and _in(peer, trusted_proxies):
        forwarded = request.headers.get("x-forwarded-proto", "")
        hops = [h.strip().lower() for h in forwarded.split(",") if h.strip()]
        return bool(hops) and hops[-1] == "https"
    return False


def client_address(request: Request, trusted_proxies: frozenset[str]) -> str:
    """The client's address, believing ``X-Forwarded-For`` only from a trusted proxy.

    ``trusted_proxies`` holds addresses or networks. Behind trusted proxies the answer is the
    nearest hop that is not one of them (each proxy appends the peer it saw, so hops further left
    are whatever the client claimed).
    """
    peer = request.client.host if request.client else ""
    if peer and _in(peer, trusted_proxies):
        forwarded = ",".join(request.headers.getlist("x-forwarded-for"))
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        # Walk back from the nearest hop, skipping our own proxies.
        for hop in reversed(hops):
            if not _in(hop, trusted_proxies):
                return hop
    return peer
