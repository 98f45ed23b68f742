"""Federation's routes (contract §9): the section's inbox and the hub's counts, both signed with
the section's key (401 otherwise, and nothing changes); a section's staff declining a hub action
or sending a hub follow-up that waited for them."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from services.publisher import actions as domain
from services.publisher.auth import Writer
from services.publisher.database import DatabaseDep
from services.publisher.federation import hub, section
from services.publisher.federation.wire import (
    ACTION_TYPES,
    SECTION_HEADER,
    CountsReport,
    NotSigned,
    check_signed,
)
from services.publisher.schemas import UpdateContentIn, UrgentActionRead
from services.publisher.tally import StatsNotifier
from shared.access import CallerFirstRoute
from shared.sealing import InvalidToken, unseal
from shared.settings import Settings
from shared.web import error_responses

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1/federation", tags=["federation"])
actions_router = APIRouter(
    prefix="/api/v1/actions", tags=["federation"], route_class=CallerFirstRoute
)
SIGNED = {
    401: {"description": "Not signed with the section's key, stale, or an unknown section"},
    **error_responses(422),
}


def _unauthorized(why: str) -> Response:
    log.warning("federation call refused: %s", why)
    return JSONResponse({"detail": "not signed by a known section"}, status_code=401)


INBOX_RESPONSES = {
    **SIGNED,
    409: {"description": "A follow-up or close of an action not received yet: send it again"},
}


@router.post("/inbox", status_code=status.HTTP_204_NO_CONTENT, responses=INBOX_RESPONSES)
async def inbox(request: Request, database: DatabaseDep) -> Response:
    """On a section: an action, a follow-up or a close from the hub (the hub's webhook event)."""
    settings: Settings = request.app.state.settings
    if not settings.is_section:
        return _unauthorized("this uanet is no section")
    _hub_url, code, key = settings.require_section()
    body = await request.body()
    if request.headers.get(SECTION_HEADER, "").upper() != code:
        return _unauthorized("another section's code")
    try:
        check_signed(key, body, request.headers)
        event = json.loads(body)
        event_type, data = event["type"], event["data"]
        if event_type not in ACTION_TYPES or not isinstance(data, dict):
            raise ValueError(event_type)
    except NotSigned as exc:
        return _unauthorized(str(exc))
    except (ValueError, KeyError, TypeError):
        return JSONResponse({"detail": "not a hub event"}, status_code=422)
    webhook_id = request.headers["webhook-id"]
    try:
        async with database.write() as session:
            done = await section.take_from_hub(
                session,
                webhook_id=webhook_id,
                event_type=event_type,
                data=data,
                hub_url=_hub_url,
                auto=settings.syndication_auto_publish,
            )
    except section.NotReceivedYet:
        # Not ours yet, and nothing changed: the hub's deliverer sends it again until the
        # action itself has arrived (the calls to a section are not ordered).
        log.info("hub event %s before its action: asked again later", event_type)
        return JSONResponse(
            {"detail": "its action has not arrived yet; send it again"}, status_code=409
        )
    except (ValidationError, ValueError, KeyError) as exc:
        # Signed by the hub but never takeable here (sending it again changes nothing): taken
        # as handled, written to the audit log for staff, and answered 2xx so the hub stops.
        why = type(exc).__name__
        log.error("a hub event %s could not be taken: %s", event_type, why)
        async with database.write() as session:
            await section.refuse(
                session, webhook_id=webhook_id, event_type=event_type, data=data, why=why
            )
        return Response(status_code=204)
    request.app.state.runtime.relay.notify()
    request.app.state.webhooks.notify()
    log.info("hub event %s: %s", event_type, done)
    return Response(status_code=204)


@router.post("/counts", status_code=status.HTTP_204_NO_CONTENT, responses=SIGNED)
async def counts(request: Request, database: DatabaseDep) -> Response:
    """On a hub: a section's newest counts of one of its actions (numbers only)."""
    body = await request.body()
    code = request.headers.get(SECTION_HEADER, "")
    sealing_key: str = request.app.state.sealing_key
    async with database.read() as session:
        known = await hub.live_section(session, code)
        sealed = known.key_sealed if known is not None else None
    if sealed is None:
        return _unauthorized("an unknown or removed section")
    try:
        check_signed(unseal(sealing_key, sealed), body, request.headers)
    except (NotSigned, InvalidToken) as exc:
        return _unauthorized(str(exc))
    try:
        report = CountsReport.model_validate(json.loads(body)["data"])
    except (ValueError, KeyError, TypeError, ValidationError):
        return JSONResponse({"detail": "not a counts report"}, status_code=422)
    async with database.write() as session:
        live = await hub.live_section(session, code)
        if live is None:
            return _unauthorized("removed meanwhile")
        changed = await hub.take_counts(session, live, report)
    if changed:
        notifier: StatsNotifier = request.app.state.stats_notifier
        notifier.changed(report.action_id)
    return Response(status_code=204)


def _action_id(action_id: str) -> uuid.UUID:
    return domain.parse_action_id(action_id)


ActionId = Annotated[uuid.UUID, Depends(_action_id)]


@actions_router.post(
    "/{action_id}/decline", response_model=UrgentActionRead, responses=error_responses(404, 409)
)
async def decline(action_id: ActionId, principal: Writer, database: DatabaseDep) -> Any:
    """A section's staff will not send this hub action (status ``declined``)."""
    async with database.write() as session:
        action = await section.decline(session, action_id=action_id, actor=principal.actor)
    return UrgentActionRead.model_validate(action)


class PendingSend(BaseModel):
    content: dict[str, UpdateContentIn] | None = None


@actions_router.post(
    "/{action_id}/pending_updates/{pending_id}/send",
    response_model=UrgentActionRead,
    responses=error_responses(404, 409, 422),
)
async def send_pending(
    action_id: ActionId,
    pending_id: str,
    principal: Writer,
    database: DatabaseDep,
    request: Request,
    body: PendingSend | None = None,
) -> Any:
    """Send a hub follow-up that waited, as it came or with ``content`` edited."""
    content = (
        {k: v.model_dump() for k, v in body.content.items()}
        if body is not None and body.content
        else None
    )
    async with database.write() as session:
        action = await section.send_pending(
            session,
            action_id=action_id,
            pending_id=pending_id,
            content=content,
            actor=principal.actor,
        )
    request.app.state.runtime.relay.notify()
    return UrgentActionRead.model_validate(action)
