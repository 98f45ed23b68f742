"""A section's console for actions from the international office: decline one, send one of its
follow-ups that waited (edited or as it came)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from services.publisher import actions as domain
from services.publisher.auth import WRITE_ROLES
from services.publisher.console.common import (
    UPDATE_FIELDS,
    ConsoleError,
    actor_of,
    database_of,
    load_action,
    read_form,
    require_user,
    see_other,
)
from services.publisher.federation import section

router = APIRouter(include_in_schema=False)


@router.post("/actions/{action_id}/decline")
async def decline(request: Request, action_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    await read_form(request)
    try:
        async with database_of(request).write() as session:
            await section.decline(session, action_id=action.id, actor=actor_of(user))
    except domain.ActionConflict as exc:
        raise ConsoleError(409, "Not declined", str(exc)) from None
    return see_other(f"/actions/{action.id}?notice=declined")


@router.post("/actions/{action_id}/pending/{pending_id}/send")
async def send_pending(request: Request, action_id: str, pending_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    form = await read_form(request)
    waiting = next((p for p in action.pending_updates or [] if p["id"] == pending_id), None)
    if waiting is None:
        raise ConsoleError(404, "Not found", "That follow-up is no longer waiting.")
    content = {
        lang: {n: str(form.get(f"pending-{lang}-{n}") or "")[:25_000] for n in UPDATE_FIELDS}
        for lang in waiting["content"]
    }
    try:
        async with database_of(request).write() as session:
            await section.send_pending(
                session,
                action_id=action.id,
                pending_id=pending_id,
                content=content,
                actor=actor_of(user),
            )
    except (domain.ActionConflict, domain.InvalidFollowUp, ValidationError) as exc:
        raise ConsoleError(409, "Not sent", str(exc)[:300]) from None
    request.app.state.runtime.relay.notify()
    return see_other(f"/actions/{action.id}?notice=pending")
