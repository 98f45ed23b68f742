"""The publisher's HTTP API (contract §3). Routes only translate: parse, call, map to HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy.exc import IntegrityError
from starlette.background import BackgroundTask

from services.publisher import actions as domain
from services.publisher import audit
from services.publisher.audit import Actor
from services.publisher.auth import (
    ROLES,
    STREAM_GUARD,
    Admin,
    Reader,
    StreamReader,
    TokenGuard,
    Writer,
)
from services.publisher.database import Database
from services.publisher.federation.hub import with_network
from services.publisher.live_streams import StreamSlots, caller_still_allowed
from services.publisher.models import UrgentAction
from services.publisher.reports import csv_filename, stats_csv, stats_stream
from services.publisher.schemas import (
    ActionClose,
    ActionStats,
    ActionUpdateCreate,
    ActionUpdateRead,
    AuditEntryRead,
    AuditPage,
    TargetsReplace,
    UrgentActionCreate,
    UrgentActionPage,
    UrgentActionRead,
    UrgentActionUpdate,
)
from services.publisher.tally import StatsNotifier, read_stats, stats_changed_at
from shared.access import CallerFirstRoute, guard_unknown_api_paths
from shared.runtime import ServiceRuntime
from shared.web import error_responses

# CallerFirstRoute: the token and its role are checked before the path, the query or the body.
router = APIRouter(prefix="/api/v1/actions", tags=["urgent actions"], route_class=CallerFirstRoute)
# Any token may learn that a path does not exist; no token gets 401 first (contract §7).
ANY_TOKEN = TokenGuard(frozenset(ROLES))

STATS_EVENT = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"const": "stats"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/ActionStats"},
        },
    },
}

# Two drafts created at the same instant may race for one reference number; the loser retries.
CREATE_ATTEMPTS = 5


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_runtime(request: Request) -> ServiceRuntime:
    runtime: ServiceRuntime = request.app.state.runtime
    return runtime


def get_notifier(request: Request) -> StatsNotifier:
    notifier: StatsNotifier = request.app.state.stats_notifier
    return notifier


def action_id_from_path(action_id: str) -> uuid.UUID:
    return domain.parse_action_id(action_id)


DatabaseDep = Annotated[Database, Depends(get_database)]
RuntimeDep = Annotated[ServiceRuntime, Depends(get_runtime)]
NotifierDep = Annotated[StatsNotifier, Depends(get_notifier)]
ActionId = Annotated[uuid.UUID, Depends(action_id_from_path)]


async def save_new_draft(
    database: Database, action_in: UrgentActionCreate, actor: Actor
) -> UrgentAction:
    """A new draft in its own transaction, retried if another took its reference number."""
    attempt = 1
    while True:
        try:
            async with database.write() as session:
                return await domain.create_action(session=session, action_in=action_in, actor=actor)
        except IntegrityError:
            if attempt == CREATE_ATTEMPTS:
                raise
            attempt += 1


def _read(action: Any) -> UrgentActionRead:
    return UrgentActionRead.model_validate(action)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=UrgentActionRead)
async def create_draft(
    action_in: UrgentActionCreate, principal: Writer, database: DatabaseDep, response: Response
) -> UrgentActionRead:
    action = await save_new_draft(database, action_in, principal.actor)
    response.headers["Location"] = f"{router.prefix}/{action.id}"
    return _read(action)


@router.get("", response_model=UrgentActionPage)
async def list_actions(
    _: Reader,
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    status: Literal["draft", "published", "closed", "declined"] | None = None,
) -> UrgentActionPage:
    async with database.read() as session:
        rows, total = await domain.list_actions(
            session=session, limit=limit, offset=offset, status=status
        )
    following = offset + len(rows)
    return UrgentActionPage(
        items=[_read(row) for row in rows],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=following if following < total else None,
    )


@router.get("/{action_id}", response_model=UrgentActionRead, responses=error_responses(404))
async def get_action(action_id: ActionId, _: Reader, database: DatabaseDep) -> UrgentActionRead:
    async with database.read() as session:
        return _read(await domain.get_action(session=session, action_id=action_id))


@router.patch("/{action_id}", response_model=UrgentActionRead, responses=error_responses(404, 409))
async def edit_draft(
    action_id: ActionId, changes: UrgentActionUpdate, principal: Writer, database: DatabaseDep
) -> UrgentActionRead:
    try:
        async with database.write() as session:
            action = await domain.edit_draft(
                session=session,
                action_id=action_id,
                changes=changes.model_dump(exclude_unset=True),
                actor=principal.actor,
            )
    except ValidationError as exc:
        # The draft as edited is invalid: report it like any invalid body, naming the field.
        raise RequestValidationError(
            [{**err, "loc": ("body", *err["loc"])} for err in exc.errors()]
        ) from None
    return _read(action)


@router.put(
    "/{action_id}/targets", response_model=UrgentActionRead, responses=error_responses(404, 409)
)
async def replace_targets(
    action_id: ActionId,
    targets: TargetsReplace,
    principal: Writer,
    database: DatabaseDep,
    runtime: RuntimeDep,
) -> UrgentActionRead:
    """The whole target list, also once published (to fix an address that bounces letters)."""
    async with database.write() as session:
        action = await domain.replace_targets(
            session=session,
            action_id=action_id,
            targets=targets,
            actor=principal.actor,
        )
    runtime.relay.notify()
    return _read(action)


@router.post(
    "/{action_id}/publish", response_model=UrgentActionRead, responses=error_responses(404, 409)
)
async def publish(
    action_id: ActionId, principal: Writer, database: DatabaseDep, runtime: RuntimeDep
) -> UrgentActionRead:
    async with database.write() as session:
        action = await domain.publish_action(
            session=session, action_id=action_id, actor=principal.actor
        )
    runtime.relay.notify()
    return _read(action)


@router.post(
    "/{action_id}/updates",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ActionUpdateRead,
    responses=error_responses(404, 409, 422),
)
async def follow_up(
    action_id: ActionId,
    update_in: ActionUpdateCreate,
    principal: Writer,
    database: DatabaseDep,
    runtime: RuntimeDep,
) -> ActionUpdateRead:
    async with database.write() as session:
        update = await domain.add_follow_up(
            session=session, action_id=action_id, update_in=update_in, actor=principal.actor
        )
    runtime.relay.notify()
    return ActionUpdateRead.model_validate(update)


@router.post(
    "/{action_id}/close", response_model=UrgentActionRead, responses=error_responses(404, 409)
)
async def close(
    action_id: ActionId,
    close_in: ActionClose,
    principal: Writer,
    database: DatabaseDep,
    runtime: RuntimeDep,
) -> UrgentActionRead:
    async with database.write() as session:
        action = await domain.close_action(
            session=session, action_id=action_id, close_in=close_in, actor=principal.actor
        )
    runtime.relay.notify()
    return _read(action)


async def network_stats(database: Database, action_id: uuid.UUID) -> ActionStats:
    """The counts, with each section's and the network's on a hub (contract §9)."""
    async with database.read() as session:
        return await with_network(session, await read_stats(session=session, action_id=action_id))


# Unset: sections and network, on a uanet that is no hub (contract §3's shape stays as it was).
@router.get(
    "/{action_id}/stats",
    response_model=ActionStats,
    response_model_exclude_unset=True,
    responses=error_responses(404),
)
async def stats(action_id: ActionId, _: Reader, database: DatabaseDep) -> ActionStats:
    return await network_stats(database, action_id)


@router.get(
    "/{action_id}/stats.csv",
    response_class=Response,
    responses={
        200: {
            "description": "The counts as CSV",
            "content": {"text/csv": {"schema": {"type": "string"}}},
        },
        **error_responses(404),
    },
)
async def stats_as_csv(action_id: ActionId, _: Reader, database: DatabaseDep) -> Response:
    counts = await network_stats(database, action_id)
    return Response(
        stats_csv(counts),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{csv_filename(counts.reference)}"'},
    )


@router.get(
    "/{action_id}/stats/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Server-Sent Events: the counts on connect, then again whenever they "
            "change (between them, keep-alive comments)",
            # Each event, as Open API before 3.2 describes a stream's events.
            "content": {"text/event-stream": {"schema": STATS_EVENT}},
        },
        # 429: the caller holds the most live streams it may (live_streams.py).
        **error_responses(404, 429),
    },
)
async def stats_live(
    action_id: ActionId,
    # A coordinator's token, or the console's session cookie: the action's page streams its
    # counts to whoever may see that page (any signed-in role).
    caller: StreamReader,
    request: Request,
    database: DatabaseDep,
    notifier: NotifierDep,
) -> StreamingResponse:
    async def load() -> ActionStats:
        return await network_stats(database, action_id)

    async def changed_at() -> Any:
        async with database.read() as session:
            return await stats_changed_at(session=session, action_id=action_id)

    first = await load()  # an unknown action is a 404 before the stream starts
    slots: StreamSlots = request.app.state.stream_slots
    ticket = slots.take(caller)

    async def stream() -> AsyncIterator[str]:
        try:
            async for event in stats_stream(
                action_id=action_id,
                first=first,
                load=load,
                changed_at=changed_at,
                notifier=notifier,
                still_allowed=caller_still_allowed(request, STREAM_GUARD),
                recheck_interval=slots.recheck_seconds,
            ):
                yield event
        finally:
            ticket.release()

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        # Also when the body never started (the client went at once): the place is given back.
        background=BackgroundTask(ticket.release),
    )


audit_router = APIRouter(prefix="/api/v1/audit", tags=["audit"], route_class=CallerFirstRoute)
AuditEvent = Literal[audit.EVENTS]  # type: ignore[valid-type]


@audit_router.get("", response_model=AuditPage)
async def audit_log(
    _: Admin,
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    action_id: Annotated[uuid.UUID | None, Query(description="only this action's history")] = None,
    event: Annotated[AuditEvent | None, Query(description="only this kind of change")] = None,
) -> AuditPage:
    """Every change staff made, newest first (admin)."""
    async with database.read() as session:
        rows, total = await audit.list_entries(
            session=session, limit=limit, offset=offset, action_id=action_id, event=event
        )
    following = offset + len(rows)
    return AuditPage(
        items=[AuditEntryRead.model_validate(row) for row in rows],
        total=total,
        limit=limit,
        offset=offset,
        next_offset=following if following < total else None,
    )


def install_error_responses(app: FastAPI) -> None:
    guard_unknown_api_paths(app, ANY_TOKEN)

    @app.exception_handler(domain.ActionNotFound)
    async def not_found(request: Request, exc: domain.ActionNotFound) -> Response:
        return JSONResponse({"detail": "no such urgent action"}, status_code=404)

    @app.exception_handler(domain.ActionConflict)
    async def conflict(request: Request, exc: domain.ActionConflict) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(domain.InvalidField)
    async def invalid_field(request: Request, exc: domain.InvalidField) -> Response:
        return JSONResponse(
            {
                "detail": f"invalid: {exc.field}",
                "errors": [{"field": exc.field, "message": exc.message}],
            },
            status_code=422,
        )
