"""Composing and editing a draft, its preview in every language, and publishing it."""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from services.publisher import actions as domain
from services.publisher.api import save_new_draft
from services.publisher.auth import WRITE_ROLES
from services.publisher.console.common import (
    PREVIEW_CSP,
    ConsoleError,
    actor_of,
    database_of,
    load_action,
    read_form,
    render,
    require_user,
    see_other,
)
from services.publisher.forms import DraftForm
from services.publisher.models import StaffUser, UrgentAction
from services.publisher.preview import preview_action

router = APIRouter(include_in_schema=False)


def _compose(
    request: Request,
    user: StaffUser,
    draft: DraftForm,
    *,
    action: UrgentAction | None,
    errors: Mapping[str, str] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "compose.html.j2",
        {
            "draft": draft,
            "action": action,
            "errors": errors or {},
            "notice": notice,
            "form_action": f"/actions/{action.id}/edit" if action else "/actions/new",
        },
        user=user,
        status=status,
    )


async def _compose_posted(
    request: Request, user: StaffUser, action: UrgentAction | None
) -> Response:
    form = await read_form(request)
    draft = DraftForm.from_form(form)
    operation = form.get("op")
    operation = operation if isinstance(operation, str) else "save"
    if operation != "save":
        new_language = form.get("new_language")
        refused = draft.apply(operation, new_language if isinstance(new_language, str) else "")
        errors = {"new_language": refused} if refused else {}
        return _compose(request, user, draft, action=action, errors=errors)
    validated, errors = draft.validate()
    if validated is None:
        return _compose(request, user, draft, action=action, errors=errors, status=422)
    database = database_of(request)
    if action is None:
        saved = await save_new_draft(database, validated, actor_of(user))
    else:
        try:
            async with database.write() as session:
                saved = await domain.edit_draft(
                    session=session,
                    action_id=action.id,
                    changes=validated.model_dump(),
                    actor=actor_of(user),
                )
        except domain.ActionConflict as exc:
            raise ConsoleError(409, "Already published", str(exc)) from None
        except ValidationError:  # validated above; kept so a race can never become a 500
            return _compose(request, user, draft, action=action, errors={"form": "invalid"})
    return see_other(f"/actions/{saved.id}")


@router.get("/actions/new")
async def compose_page(request: Request) -> Response:
    user = await require_user(request, WRITE_ROLES)
    return _compose(request, user, DraftForm(), action=None)


@router.post("/actions/new")
async def compose(request: Request) -> Response:
    user = await require_user(request, WRITE_ROLES)
    return await _compose_posted(request, user, None)


def _require_draft(action: UrgentAction) -> None:
    if action.status != "draft":
        raise ConsoleError(
            409,
            "Already published",
            f"{action.reference} is {action.status}: only a draft changes.",
        )


@router.get("/actions/{action_id}/edit")
async def edit_page(request: Request, action_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    _require_draft(action)
    return _compose(request, user, DraftForm.from_action(action), action=action)


@router.post("/actions/{action_id}/edit")
async def edit(request: Request, action_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    _require_draft(action)
    return await _compose_posted(request, user, action)


@router.get("/actions/{action_id}/preview")
async def preview(request: Request, action_id: str) -> Response:
    user = await require_user(request)
    action = await load_action(request, action_id)
    previews = preview_action(action, request.app.state.settings)
    return render(
        request,
        "preview.html.j2",
        {"action": action, "previews": previews},
        user=user,
        csp=PREVIEW_CSP,
    )


@router.get("/actions/{action_id}/publish")
async def publish_page(request: Request, action_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    _require_draft(action)
    previews = preview_action(action, request.app.state.settings)
    return render(request, "publish.html.j2", {"action": action, "previews": previews}, user=user)


@router.post("/actions/{action_id}/publish")
async def publish(request: Request, action_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    form = await read_form(request)
    if form.get("confirm") != "yes":
        return see_other(f"/actions/{action.id}/publish")
    try:
        async with database_of(request).write() as session:
            await domain.publish_action(session=session, action_id=action.id, actor=actor_of(user))
    except domain.ActionConflict as exc:
        raise ConsoleError(409, "Already published", str(exc)) from None
    request.app.state.runtime.relay.notify()
    return see_other(f"/actions/{action.id}")
