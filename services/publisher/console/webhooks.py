"""The webhook endpoints (admins): state, last success, failures, what was delivered lately, and
a button that replays the last day (or since a chosen time) with the events' first ids."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response

from services.publisher.auth import ADMIN_ROLES
from services.publisher.console.common import (
    ConsoleError,
    actor_of,
    database_of,
    read_form,
    render,
    require_user,
    see_other,
)
from services.publisher.webhooks import registry

router = APIRouter(include_in_schema=False)
RECENT = 10


@router.get("/webhooks")
async def webhooks_page(request: Request, replayed: str = "") -> Response:
    user = await require_user(request, ADMIN_ROLES)
    async with database_of(request).read() as session:
        endpoints = await registry.list_endpoints(session)
        recent = {
            e.id: await registry.list_deliveries(session, endpoint_id=e.id, limit=RECENT, offset=0)
            for e in endpoints
        }
    return render(
        request,
        "webhooks.html.j2",
        {
            "endpoints": endpoints,
            "recent": recent,
            "replayed": replayed if replayed.isdigit() else None,
            "default_since": (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M"),
        },
        user=user,
    )


@router.post("/webhooks/{endpoint_id}/replay")
async def replay(request: Request, endpoint_id: str) -> Response:
    user = await require_user(request, ADMIN_ROLES)
    form = await read_form(request)
    try:
        target = uuid.UUID(endpoint_id)
        since = datetime.fromisoformat(str(form.get("since") or "")).replace(tzinfo=UTC)
    except ValueError:
        raise ConsoleError(400, "Bad request", "Choose a time to replay from.") from None
    try:
        async with database_of(request).write() as session:
            done = await registry.replay(
                session, endpoint_id=target, since=since, actor=actor_of(user)
            )
    except registry.EndpointNotFound:
        raise ConsoleError(404, "Not found", "There is no such webhook endpoint.") from None
    request.app.state.webhooks.notify()
    return see_other(f"/webhooks?replayed={done.requeued}")
