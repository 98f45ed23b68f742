"""A webhook receiver for development and tests: an ASGI app under uvicorn that verifies every
call with the ``standardwebhooks`` package (what a CRM's receiver would run) and keeps it.

- ``POST /hooks/{name}``: a webhook for the endpoint ``name``; verified with that name's secret
  (``inbox.secrets[name]``); answers what ``respond`` says (200 by default).
- ``GET /``: the events received, newest first, each marked verified or not (``uanet up``'s
  "webhook inbox" page).
- ``GET /api/events``: the same as JSON.

It keeps the last ``MAX_KEPT`` calls (memory stays bounded on a long run) but counts every call:
``total``, ``calls_to[name]``, ``verified``; and ``listeners`` see each call as it is recorded
(what a benchmark wants of the calls it cannot keep).

It runs inside the caller's event loop::

    inbox = WebhookInbox()
    await inbox.start()            # inbox.url("crm") is the endpoint's URL
    inbox.secrets["crm"] = secret  # the secret `uanet webhooks add` printed
    ...
    await inbox.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import socket
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

DEFAULT_PORT = 8027
MAX_KEPT = 1000


@dataclass(frozen=True)
class ReceivedWebhook:
    endpoint: str
    webhook_id: str
    timestamp: str
    body: bytes
    verified: bool
    received_at: datetime
    status: int

    @property
    def payload(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed

    @property
    def type(self) -> str:
        return str(self.payload.get("type", ""))


# Given the endpoint's name and how many calls it had before this one: the status to answer
# (it may also wait, to play a slow endpoint).
Responder = Callable[[str, int], Awaitable[int]]


async def always_ok(_endpoint: str, _calls: int) -> int:
    return 200


@dataclass
class WebhookInbox:
    host: str = "127.0.0.1"
    port: int = 0
    respond: Responder = always_ok
    secrets: dict[str, str] = field(default_factory=dict)
    # The last MAX_KEPT calls; the counts below are of every call.
    received: list[ReceivedWebhook] = field(default_factory=list)
    calls_to: Counter[str] = field(default_factory=Counter)
    verified: int = 0
    listeners: list[Callable[[ReceivedWebhook], None]] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    def url(self, endpoint: str) -> str:
        return f"http://{self.host}:{self.port}/hooks/{endpoint}"

    def to(self, endpoint: str) -> list[ReceivedWebhook]:
        """The kept calls to ``endpoint`` (the last ``MAX_KEPT`` of all)."""
        return [r for r in self.received if r.endpoint == endpoint]

    @property
    def total(self) -> int:
        """Every call received, kept or not."""
        return self.calls_to.total()

    async def _hook(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = await request.body()
        headers = dict(request.headers)
        secret = self.secrets.get(name)
        verified = False
        if secret is not None:
            try:
                Webhook(secret).verify(body, headers)
                verified = True
            except (WebhookVerificationError, ValueError):
                verified = False
        calls = self.calls_to[name]
        try:
            status = await self.respond(name, calls)
        except asyncio.CancelledError:
            # The inbox is stopping with a slow answer under way: the sender sees it fail.
            return Response(status_code=503)
        call = ReceivedWebhook(
            endpoint=name,
            webhook_id=headers.get("webhook-id", ""),
            timestamp=headers.get("webhook-timestamp", ""),
            body=body,
            verified=verified,
            received_at=datetime.now(UTC),
            status=status,
        )
        self.calls_to[name] += 1
        self.verified += verified
        for listener in self.listeners:
            listener(call)
        self.received.append(call)
        del self.received[:-MAX_KEPT]
        return Response(status_code=status)

    async def _events(self, _request: Request) -> Response:
        return JSONResponse(
            [
                {
                    "endpoint": r.endpoint,
                    "webhook_id": r.webhook_id,
                    "verified": r.verified,
                    "status": r.status,
                    "received_at": r.received_at.isoformat(),
                    "payload": r.payload,
                }
                for r in reversed(self.received)
            ]
        )

    async def _page(self, _request: Request) -> Response:
        rows = "".join(
            "<tr><td>{at}</td><td>{mark}</td><td>{type}</td><td><code>{id}</code></td>"
            "<td><pre>{data}</pre></td></tr>".format(
                at=r.received_at.strftime("%H:%M:%S"),
                mark="signature verified" if r.verified else "NOT verified",
                type=html.escape(r.type),
                id=html.escape(r.webhook_id),
                data=html.escape(json.dumps(r.payload.get("data"), indent=1)[:2000]),
            )
            for r in reversed(self.received)
        )
        page = (
            "<!doctype html><meta charset=utf-8><title>uanet webhook inbox</title>"
            '<meta http-equiv="refresh" content="5">'
            "<style>body{font:14px system-ui;margin:2em}td{vertical-align:top;padding:4px 8px;"
            "border-bottom:1px solid #ddd}pre{margin:0;white-space:pre-wrap}</style>"
            "<h1>Webhook inbox</h1><p>Signed events as a CRM receives them, each checked with "
            "the <code>standardwebhooks</code> package. Refreshes every 5 s.</p>"
            "<table><tr><th>time</th><th>signature</th><th>type</th><th>webhook-id</th>"
            f"<th>data</th></tr>{rows}</table>"
        )
        return HTMLResponse(
            page,
            headers={"content-security-policy": "default-src 'none'; style-src 'unsafe-inline'"},
        )

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/hooks/{name}", self._hook, methods=["POST"]),
                Route("/api/events", self._events),
                Route("/", self._page),
            ]
        )

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self.app(), log_level="warning", lifespan="off", access_log=False)
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._server.force_exit = True  # a responder may be holding a call open
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)
        self._server = None
        self._task = None
