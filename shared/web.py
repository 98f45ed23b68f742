"""What every service's HTTP side has: health, readiness, metrics, errors that are never a 500 for
bad input, security headers on every response, and an OpenAPI document that says all of it."""

from __future__ import annotations

import copy
import functools
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.settings import DEFAULT_MAX_BODY_BYTES

log = logging.getLogger(__name__)

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]
OpenApiResponses = dict[int | str, dict[str, Any]]


# ---- error bodies, as documented ---------------------------------------------------------------


class ErrorBody(BaseModel):
    """Every 4xx JSON answer: what went wrong, in a sentence."""

    detail: str


class FieldProblem(BaseModel):
    field: str
    message: str


class InvalidBody(BaseModel):
    """The 422 answer: which fields are wrong and why (the input is never echoed back)."""

    detail: str
    errors: list[FieldProblem]


def invalid_body(message: str, field: str = "body") -> JSONResponse:
    """A 422 for a body that cannot be read at all (not JSON, not a form), in the usual shape."""
    return JSONResponse(
        {"detail": f"invalid: {field}", "errors": [{"field": field, "message": message}]},
        status_code=422,
    )


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


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    checks: dict[str, bool]
    # host:port of the RabbitMQ node this process is connected to (one of UANET_AMQP_URL's).
    broker_node: str | None = None


def install_common(
    app: FastAPI,
    ready: ReadyCheck,
    headers: SecurityHeaders | None = None,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    public_url: str | None = None,
    broker_node: Callable[[], str | None] | None = None,
) -> None:
    """Health, readiness (and the broker node in use) and metrics; the 422 body and no 500 for
    bad input; security headers on every response (``headers``, else the API policy), HSTS when
    ``public_url`` (the service as its users reach it) is https; the body limit; a true OpenAPI
    document."""
    if public_url is not None and public_url.startswith("https://"):
        app.add_middleware(StrictTransportSecurity)
    # Added last, so outermost of the app's middleware: nothing runs before the body limit. The
    # security headers wrap even that (install_security_headers), so a 413 carries them too.
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    install_security_headers(app, headers or API_HEADERS)
    install_openapi(app)

    @app.get("/healthz", tags=["operations"], response_model=Health)
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Database or broker unreachable"}},
    )
    async def readyz() -> Response:
        checks = await ready()
        status = 200 if all(checks.values()) else 503
        node = broker_node() if broker_node is not None else None
        return JSONResponse(
            {"ready": status == 200, "checks": checks, "broker_node": node}, status_code=status
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics() -> Response:
        """Prometheus metrics, in its text format."""
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


# ---- security headers -----------------------------------------------------------------------


@dataclass(frozen=True)
class SecurityHeaders:
    """What every response of a service carries. A route may set its own Content-Security-Policy
    (the console's email preview does); the others are the same everywhere."""

    content_security_policy: str
    referrer_policy: str = "same-origin"

    def items(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-security-policy", self.content_security_policy.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", self.referrer_policy.encode()),
        ]


# JSON, CSV, metrics: nothing in them may load, run or be framed.
API_HEADERS = SecurityHeaders(
    "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    referrer_policy="no-referrer",
)


class SecurityHeadersMiddleware:
    """Adds the service's security headers to every HTTP response, streamed ones (SSE) included,
    unless the response already set that header. Plain ASGI: it never buffers a body."""

    def __init__(self, app: ASGIApp, headers: SecurityHeaders) -> None:
        self.app = app
        self.headers = headers.items()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in self.headers if n not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install_security_headers(app: FastAPI, headers: SecurityHeaders) -> None:
    """Wraps the whole middleware stack, Starlette's error handling included: the 500 answer
    and whatever another middleware answers (a 413) carry the headers too."""
    build = app.build_middleware_stack

    def build_with_headers() -> ASGIApp:
        return SecurityHeadersMiddleware(build(), headers)

    app.build_middleware_stack = build_with_headers  # type: ignore[method-assign]


# ---- OpenAPI: every status code with its body -------------------------------------------------


HTML = {"text/html": {"schema": {"type": "string"}}}
_DESCRIPTIONS = {
    400: "The request could not be read (a malformed Content-Length, or a JSON body that is "
    "not UTF-8)",
    401: "No valid token (a bearer token is required; unknown or revoked ones are refused)",
    403: "Not allowed for this token's role, or a webhook's signature is wrong",
    404: "No such resource",
    409: "Conflicts with the resource's state",
    410: "Gone",
    413: "Request body too large",
    422: "Invalid: names each field that is wrong",
    429: "Too many requests; try again later (Retry-After)",
}


def html_page(description: str) -> dict[str, Any]:
    """One ``responses=`` entry: an HTML page (a subscriber's browser gets one for any outcome)."""
    return {"description": description, "content": HTML}


def error_responses(*codes: int, html: bool = False) -> OpenApiResponses:
    """The ``responses=`` of a route: each code with our JSON error body (and an HTML page too,
    for the subscriber pages that answer a browser with one)."""
    out: OpenApiResponses = {}
    for code in codes:
        entry: dict[str, Any] = {
            "description": _DESCRIPTIONS.get(code, "Error"),
            "model": InvalidBody if code == 422 else ErrorBody,
        }
        if html:
            entry["content"] = HTML
        out[code] = entry
    return out


_REQUEST_MODELS: dict[str, type[BaseModel]] = {}
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


# Marks documented bodies that the route does not validate (a webhook: its signature decides).
# Removed from the published document.
_UNVALIDATED = "x-uanet-unvalidated"


def request_body(
    model: type[BaseModel],
    *,
    media_types: Iterable[str] = (JSON, FORM),
    validated: bool = True,
) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its own body (JSON or a form): the model's schema
    as the documented request body."""
    _REQUEST_MODELS[model.__name__] = model
    ref = {"$ref": f"#/components/schemas/{model.__name__}"}
    body: dict[str, Any] = {
        # A webhook acknowledges any signed form, an empty one too.
        "required": validated,
        "content": {media_type: {"schema": ref} for media_type in media_types},
    }
    if not validated:
        body[_UNVALIDATED] = True
    return {"requestBody": body}


def _can_be_invalid(operation: dict[str, Any]) -> bool:
    """Whether validation can refuse a call (422): a validated body, or a parameter that is
    required outside the path or constrained beyond "any string"."""
    body = operation.get("requestBody")
    if body is not None and not body.pop(_UNVALIDATED, False):
        return True
    for parameter in operation.get("parameters", []):
        if parameter.get("in") != "path" and parameter.get("required"):
            return True
        schema = {k: v for k, v in parameter.get("schema", {}).items() if k != "title"}
        if schema != {"type": "string"}:
            return True
    return False


def _refs(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
            yield ref.removeprefix("#/components/schemas/")
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _schema_of(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for def_name, definition in schema.pop("$defs", {}).items():
        components.setdefault(def_name, definition)
    components.setdefault(model.__name__, schema)
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def document_errors(schema: dict[str, Any]) -> None:
    """Make the generated document say what the services really answer, for every operation:

    - 422 is our body (``detail`` and ``errors`` by field), not FastAPI's default;
    - every operation may answer 400 (a malformed Content-Length; a JSON body FastAPI parses
      that is not UTF-8) and 413 (a body over the limit, refused before it is read);
    - an operation that requires a token may answer 401 (none, unknown, revoked) and 403 (role);
    - an operation whose body or parameters can be invalid answers 422 (and only such an
      operation: FastAPI's default 422 goes where nothing can fail);
    - request bodies declared with ``request_body`` get their models' schemas.
    """
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in {name for name in _refs(schema.get("paths", {})) if name in _REQUEST_MODELS}:
        _schema_of(_REQUEST_MODELS[name], components)
    invalid = _schema_of(InvalidBody, components)
    error = _schema_of(ErrorBody, components)
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            # Any request: a malformed Content-Length (400) or a body over the limit (413) is
            # refused before routing; FastAPI also answers 400 to a JSON body that is not UTF-8.
            problems: list[int] = [400, 413]
            if any("HTTPBearer" in requirement for requirement in operation.get("security", [])):
                problems += [401, 403]
            if _can_be_invalid(operation):
                problems.append(422)
            else:
                responses.pop("422", None)  # FastAPI's default, for parameters that cannot fail
            for code in problems:
                # Beside what the route says it answers (the webhook's plain-text 400, say).
                entry = responses.setdefault(str(code), {"description": _DESCRIPTIONS[code]})
                content = entry.setdefault("content", {})
                content.setdefault(JSON, {"schema": invalid if code == 422 else error})
            unprocessable = responses.get("422")
            if unprocessable is not None:
                unprocessable.setdefault("content", {})[JSON] = {"schema": invalid}
                unprocessable["description"] = _DESCRIPTIONS[422]
    # FastAPI's own 422 shapes, now unused.
    for name in ("HTTPValidationError", "ValidationError"):
        if name not in set(_refs(schema.get("paths", {}))) and name not in set(_refs(components)):
            components.pop(name, None)


def install_openapi(app: FastAPI) -> None:
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            # A copy: FastAPI's document shares dicts with the routes' openapi_extra, which other
            # apps built from the same routers read too.
            schema = copy.deepcopy(generate())
            document_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


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


def client_key(address: str) -> str:
    """What counts as one client: an IPv4 address, or the /64 network of an IPv6 address (an
    IPv4-mapped IPv6 address is its IPv4 address)."""
    try:
        ip = ipaddress.ip_address(address.strip().split("%", 1)[0])
    except ValueError:
        return address  # not an address (a test transport's "testclient"): itself
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
