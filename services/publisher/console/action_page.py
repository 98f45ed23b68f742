"""An action's own page: its details and live counts, follow-ups, closing, fixing a bounced
target address, the activity chart and the CSV of its counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from rendering.renderer import Renderer
from services.publisher import actions as domain
from services.publisher import audit
from services.publisher.auth import WRITE_ROLES
from services.publisher.bounces import bounces_of
from services.publisher.charts import SERIES, Minute, activity_svg
from services.publisher.console.common import (
    HISTORY_SIZE,
    OUTCOMES,
    UPDATE_FIELDS,
    ConsoleError,
    actor_of,
    database_of,
    load_action,
    read_form,
    render,
    require_user,
    see_other,
)
from services.publisher.federation.hub import sent_to, with_network
from services.publisher.feedback import action_feedback
from services.publisher.models import StaffUser, UrgentAction
from services.publisher.reports import csv_filename, stats_csv
from services.publisher.schemas import ActionClose, ActionUpdateCreate, TargetsReplace
from services.publisher.sessions import (
    CSRF_FIELD,
)
from services.publisher.tally import read_activity, read_stats
from shared.db import utcnow

router = APIRouter(include_in_schema=False)


def _update_content(form: FormData, languages: list[str], prefix: str) -> dict[str, dict[str, str]]:
    """Per-language texts of a follow-up; a language left entirely empty is left out."""
    content: dict[str, dict[str, str]] = {}
    for lang in languages:
        values = {}
        for name in UPDATE_FIELDS:
            raw = form.get(f"{prefix}-{lang}-{name}")
            values[name] = raw[:25_000] if isinstance(raw, str) else ""
        if any(v.strip() for v in values.values()):
            content[lang] = values
    return content


def _update_errors(exc: ValidationError, prefix: str) -> dict[str, str]:
    errors: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        if loc[:1] == ["content"] and len(loc) >= 3:
            name = f"{prefix}-{loc[1]}-{loc[2]}"
        else:
            name = f"{prefix}-{loc[0]}" if loc else prefix
        errors.setdefault(name, str(err.get("msg", "invalid")).removeprefix("Value error, "))
    return errors


async def _action_page(
    request: Request,
    user: StaffUser,
    action: UrgentAction,
    *,
    errors: Mapping[str, str] | None = None,
    values: Mapping[str, str] | None = None,
    notice: str | None = None,
    status: int = 200,
) -> HTMLResponse:
    async with database_of(request).read() as session:
        stats = await with_network(session, await read_stats(session=session, action_id=action.id))
        section_codes = await sent_to(session, action.id, removed_too=True)
        bounces = await bounces_of(session=session, action_id=action.id)
        history, history_total = await audit.list_entries(
            session=session, limit=HISTORY_SIZE, offset=0, action_id=action.id
        )
        feedback = await action_feedback(session=session, action_id=action.id)
    renderer = Renderer(mail_from=request.app.state.settings.mail_from)
    return render(
        request,
        "action.html.j2",
        {
            "action": action,
            "stats": stats,
            "feedback": feedback,
            # One replaced since is a quiet note; the others still need fixing.
            "bounces": [b for b in bounces if b.fixed_at is None],
            "fixed_bounces": [b for b in bounces if b.fixed_at is not None],
            "series": SERIES,
            "body_html": {
                lang: renderer.markdown(text.get("body") or "")
                for lang, text in action.content.items()
            },
            "languages": sorted(action.content, key=lambda x: (x != action.default_language, x)),
            "outcomes": OUTCOMES,
            "errors": errors or {},
            "values": values or {},
            "notice": notice,
            "chart_version": int(stats.updated_at.timestamp()),
            "section_codes": section_codes,
            "history": history,
            "history_more": history_total > len(history),
        },
        user=user,
        status=status,
    )


@router.get("/actions/{action_id}")
async def action_page(request: Request, action_id: str, notice: str = "") -> Response:
    user = await require_user(request)
    action = await load_action(request, action_id)
    messages = {
        "update": "Follow-up sent.",
        "closed": "The action is closed.",
        "target": "Target address changed: letters from now on go to the new address.",
        "declined": "Declined: it will not go to your members.",
        "pending": "The international office's follow-up was sent.",
    }
    return await _action_page(request, user, action, notice=messages.get(notice))


def _form_values(form: FormData) -> dict[str, str]:
    return {k: v[:25_000] for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}


async def _send_from_page(
    request: Request,
    user: StaffUser,
    action: UrgentAction,
    form: FormData,
    *,
    prefix: str,
    change: Callable[[AsyncSession], Awaitable[object]],
    notice: str,
) -> Response:
    """A follow-up or a close posted from the action's page: done, back to the page with a
    notice; refused, the page again with the errors beside the fields named ``prefix-…``."""
    try:
        async with database_of(request).write() as session:
            await change(session)
    except ValidationError as exc:
        errors = _update_errors(exc, prefix)
    except domain.InvalidFollowUp as exc:
        errors = {f"{prefix}-content": exc.message}
    except domain.ActionConflict as exc:
        raise ConsoleError(409, "Not published", str(exc)) from None
    else:
        request.app.state.runtime.relay.notify()
        return see_other(f"/actions/{action.id}?notice={notice}")
    return await _action_page(
        request, user, action, errors=errors, values=_form_values(form), status=422
    )


@router.post("/actions/{action_id}/updates")
async def follow_up(request: Request, action_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    form = await read_form(request)
    kind = form.get("kind")
    outcome = form.get("outcome") or None
    payload = {
        "kind": kind,
        "outcome": outcome if kind == "outcome" else None,
        "content": _update_content(form, list(action.content), "update"),
    }

    async def add(session: AsyncSession) -> object:
        update_in = ActionUpdateCreate.model_validate(payload)
        return await domain.add_follow_up(
            session=session, action_id=action.id, update_in=update_in, actor=actor_of(user)
        )

    return await _send_from_page(
        request, user, action, form, prefix="update", change=add, notice="update"
    )


@router.post("/actions/{action_id}/close")
async def close(request: Request, action_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    form = await read_form(request)
    content = _update_content(form, list(action.content), "close")
    payload = {"outcome": form.get("close-outcome") or None, "content": content or None}

    async def close_it(session: AsyncSession) -> object:
        close_in = ActionClose.model_validate(payload)
        return await domain.close_action(
            session=session, action_id=action.id, close_in=close_in, actor=actor_of(user)
        )

    return await _send_from_page(
        request, user, action, form, prefix="close", change=close_it, notice="closed"
    )


@router.post("/actions/{action_id}/targets/fix")
async def fix_target(request: Request, action_id: str) -> Response:
    """Replace a target's bounced address (the warning's form) on a draft or published action."""
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    form = await read_form(request)
    old = str(form.get("old_address") or "").strip().lower()
    new = str(form.get("new_address") or "").strip()
    targets = [dict(t) for t in action.targets]
    matched = [t for t in targets if str(t.get("email") or "").lower() == old and old]
    errors: dict[str, str] = {}
    if not matched:
        errors["fix-new_address"] = "That address is no longer among the targets."
    elif not new:
        errors["fix-new_address"] = "Enter the new email address."
    elif new.lower() == old:
        errors["fix-new_address"] = "That is the address that bounced: enter the correct one."
    else:
        for target in matched:
            target["email"] = new
        try:
            replaced = TargetsReplace.model_validate({"targets": targets})
            async with database_of(request).write() as session:
                await domain.replace_targets(
                    session=session,
                    action_id=action.id,
                    targets=replaced,
                    actor=actor_of(user),
                )
        except ValidationError as exc:
            errors["fix-new_address"] = _email_error(exc)
        except domain.ActionConflict as exc:
            raise ConsoleError(409, "Closed", str(exc)) from None
        else:
            request.app.state.runtime.relay.notify()
            return see_other(f"/actions/{action.id}?notice=target")
    values = {"fix-old_address": old, "fix-new_address": new[:320]}
    return await _action_page(request, user, action, errors=errors, values=values, status=422)


def _email_error(exc: ValidationError) -> str:
    """The reason pydantic gives for the new address, in a sentence staff can act on."""
    for err in exc.errors():
        if "email" in [str(p) for p in err.get("loc", ())]:
            return "Not a valid email address: " + str(err.get("msg", "")).removeprefix(
                "value is not a valid email address: "
            )
    return "Not a valid target."


@router.get("/actions/{action_id}/chart.svg")
async def chart(request: Request, action_id: str) -> Response:
    await require_user(request)
    action = await load_action(request, action_id)
    async with database_of(request).read() as session:
        buckets = await read_activity(session=session, action_id=action.id)
    minutes = [Minute(b.minute, b.sent, b.delivered, b.actions) for b in buckets]
    start = action.published_at or (minutes[0].minute if minutes else action.created_at)
    end = action.closed_at or utcnow()
    if minutes:
        end = max(end, minutes[-1].minute)
    return Response(
        activity_svg(minutes, start=start, end=end),
        media_type="image/svg+xml",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/actions/{action_id}/stats.csv")
async def csv_export(request: Request, action_id: str) -> Response:
    await require_user(request)
    action = await load_action(request, action_id)
    async with database_of(request).read() as session:
        counts = await read_stats(session=session, action_id=action.id)
    return Response(
        stats_csv(counts),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{csv_filename(counts.reference)}"'},
    )
