"""The staff console and the coordinators' dashboard (contract §3, "The console").

Who sees what: every signed-in role (staff, coordinator, admin) may read the actions, their
previews, their live counts and the overview, because staff follow the actions they wrote.
Composing, editing, publishing, follow-ups and closing are for staff and admin, as in the API.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from pydantic import ValidationError
from sqlalchemy import select
from starlette.datastructures import FormData
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint

from rendering.renderer import Renderer
from services.publisher import actions as domain
from services.publisher import audit
from services.publisher.api import save_new_draft
from services.publisher.audit import Actor
from services.publisher.auth import ADMIN_ROLES, ROLES, WRITE_ROLES
from services.publisher.bounces import bounces_of
from services.publisher.charts import SERIES, Minute, activity_svg
from services.publisher.database import Database
from services.publisher.feedback import action_feedback, month_feedback
from services.publisher.forms import DraftForm
from services.publisher.models import CHANNELS, ActionTally, StaffUser, UrgentAction
from services.publisher.overview import read_overview
from services.publisher.preview import preview_action
from services.publisher.reports import csv_filename, stats_csv
from services.publisher.schemas import ActionClose, ActionUpdateCreate, TargetsReplace
from services.publisher.sessions import (
    CSRF_FIELD,
    ConsoleSession,
    SessionSigner,
    csrf_valid,
    read_session,
    signed_in_user,
    write_session,
)
from services.publisher.staff import SignInThrottle, check_sign_in
from services.publisher.tally import read_activity, read_stats
from shared.db import utcnow
from shared.events import Outcome
from shared.web import client_address

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 25
HISTORY_SIZE = 50  # an action's page shows its latest changes; the audit log has them all
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]
UPDATE_FIELDS = ("subject", "body", "sms")
# Console pages load only what we serve. The preview page also lets the email's own inline
# styles apply inside its sandboxed iframe (scripts stay blocked there and everywhere).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)
PREVIEW_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")

router = APIRouter(include_in_schema=False)

_templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters["number"] = lambda n: f"{int(n):,}"
_templates.filters["channel_label"] = lambda c: {"email": "Email", "sms": "SMS"}.get(c, c)
_templates.tests["startswith"] = lambda value, prefix: str(value).startswith(prefix)
_templates.globals["STATUS_LABELS"] = {
    "draft": "Draft",
    "published": "Published",
    "closed": "Closed",
}
_templates.globals["EVENT_LABELS"] = {
    audit.ACTION_CREATED: "Draft created",
    audit.ACTION_EDITED: "Draft edited",
    audit.ACTION_PUBLISHED: "Published",
    audit.ACTION_FOLLOW_UP: "Follow-up sent",
    audit.ACTION_CLOSED: "Closed",
    audit.ACTION_TARGETS_CHANGED: "Targets changed",
    audit.TOKEN_CREATED: "API token created",
    audit.TOKEN_REVOKED: "API token revoked",
    audit.ACCOUNT_CREATED: "Console account created",
    audit.ACCOUNT_DISABLED: "Console account disabled",
    audit.SUBSCRIBER_ERASED: "Subscriber erased",
}
_templates.globals["OUTCOME_LABELS"] = {
    "released": "Released",
    "charges_dropped": "Charges dropped",
    "sentence_commuted": "Sentence commuted",
    "improved": "Situation improved",
    "no_change": "No change",
    "other": "Other",
}


# ---- errors, sign-in and rendering -------------------------------------------------------


class ConsoleError(Exception):
    """Ends a console request with an HTML error page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.message = message


class SignInRequired(Exception):
    pass


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    user: StaffUser | None = None,
    csp: str = CSP,
) -> HTMLResponse:
    session = read_session(request)
    fresh = session is None
    if session is None:
        session = ConsoleSession.fresh()
    body = _templates.get_template(template).render(
        {
            **context,
            "user": user,
            "can_write": user is not None and user.role in WRITE_ROLES,
            "csrf_token": session.csrf_token,
            "csrf_field": CSRF_FIELD,
            "path": request.url.path,
        }
    )
    response = HTMLResponse(body, status_code=status)
    response.headers["Content-Security-Policy"] = csp
    if fresh:
        write_session(request, response, session)
    return response


def _actor(user: StaffUser) -> Actor:
    return Actor("account", user.email)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


async def require_user(request: Request, roles: frozenset[str] = frozenset(ROLES)) -> StaffUser:
    user = await signed_in_user(request)
    if user is None:
        raise SignInRequired()
    if user.role not in roles:
        raise ConsoleError(403, "Not allowed", f"The {user.role} role may not do this.")
    return user


async def read_form(request: Request) -> FormData:
    """The posted form, its CSRF token checked (403 otherwise)."""
    try:
        form = await request.form(max_files=0, max_fields=3000)
    except Exception:  # noqa: BLE001 - a body that is not a form is bad input, not a 500
        raise ConsoleError(400, "Bad request", "The form could not be read.") from None
    if not csrf_valid(read_session(request), form.get(CSRF_FIELD)):
        raise ConsoleError(
            403,
            "Form expired",
            "This form is no longer valid (its security token is missing or old). "
            "Go back, reload the page and try again.",
        )
    return form


async def load_action(request: Request, raw_id: str) -> UrgentAction:
    try:
        action_id = domain.parse_action_id(raw_id)
        async with _database(request).read() as session:
            return await domain.get_action(session=session, action_id=action_id)
    except domain.ActionNotFound:
        raise ConsoleError(404, "Not found", "There is no such urgent action.") from None


def _safe_next(raw: object) -> str:
    """Only a path on this site: never an open redirect."""
    if isinstance(raw, str) and raw.startswith("/") and not raw.startswith(("//", "/\\")):
        return raw[:500]
    return "/"


# ---- sign in and out -----------------------------------------------------------------------


@router.get("/login")
async def login_page(request: Request, next: str = "/") -> Response:
    if await signed_in_user(request) is not None:
        return _see_other(_safe_next(next))
    return render(request, "login.html.j2", {"next": _safe_next(next), "error": None, "email": ""})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    email = form.get("email")
    password = form.get("password")
    email = email[:320] if isinstance(email, str) else ""
    password = password if isinstance(password, str) else ""
    target = _safe_next(form.get("next"))
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    address = client_address(request, request.app.state.settings.trusted_proxy_set)
    failed_context = {"next": target, "email": email}
    if throttle.blocked(email=email, address=address):
        return render(
            request,
            "login.html.j2",
            {**failed_context, "error": "Too many failed attempts. Wait a few minutes."},
            status=429,
        )
    async with _database(request).read() as session:
        user = await check_sign_in(session, email=email, password=password)
    if user is None:
        throttle.failed(email=email, address=address)
        return render(
            request,
            "login.html.j2",
            {**failed_context, "error": "That email and password do not match an account."},
            status=401,
        )
    throttle.succeeded(email=email)
    response = _see_other(target)
    # A new session on sign-in: a token planted before it (session fixation) is worthless.
    write_session(request, response, ConsoleSession.fresh(user.id))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await read_form(request)
    response = _see_other("/login")
    write_session(request, response, ConsoleSession.fresh())
    return response


# ---- actions list ----------------------------------------------------------------------------


@router.get("/")
async def actions_list(request: Request, page: str = "1") -> Response:
    user = await require_user(request)
    number = int(page) if page.isdigit() and 0 < len(page) < 7 else 1
    async with _database(request).read() as session:
        rows, total = await domain.list_actions(
            session=session, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
        )
        ids = [row.id for row in rows]
        tallies = {
            t.action_id: t
            for t in (
                await session.execute(select(ActionTally).where(ActionTally.action_id.in_(ids)))
            ).scalars()
        }
    items = []
    for row in rows:
        tally = tallies.get(row.id)
        items.append(
            {
                "action": row,
                "recipients": sum(getattr(tally, f"recipients_{c}") for c in CHANNELS)
                if tally
                else 0,
                "sent": sum(getattr(tally, f"{c}_sent") for c in CHANNELS) if tally else 0,
                "delivered": sum(getattr(tally, f"{c}_delivered") for c in CHANNELS)
                if tally
                else 0,
                "people": tally.people if tally else 0,
                "actions": tally.actions if tally else 0,
            }
        )
    pages = max(1, math.ceil(total / PAGE_SIZE))
    return render(
        request,
        "actions.html.j2",
        {"items": items, "page": number, "pages": pages, "total": total},
        user=user,
    )


# ---- compose and edit ------------------------------------------------------------------------


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
    database = _database(request)
    if action is None:
        saved = await save_new_draft(database, validated, _actor(user))
    else:
        try:
            async with database.write() as session:
                saved = await domain.edit_draft(
                    session=session,
                    action_id=action.id,
                    changes=validated.model_dump(),
                    actor=_actor(user),
                )
        except domain.ActionConflict as exc:
            raise ConsoleError(409, "Already published", str(exc)) from None
        except ValidationError:  # validated above; kept so a race can never become a 500
            return _compose(request, user, draft, action=action, errors={"form": "invalid"})
    return _see_other(f"/actions/{saved.id}")


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


# ---- preview and publish ---------------------------------------------------------------------


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
        return _see_other(f"/actions/{action.id}/publish")
    try:
        async with _database(request).write() as session:
            await domain.publish_action(session=session, action_id=action.id, actor=_actor(user))
    except domain.ActionConflict as exc:
        raise ConsoleError(409, "Already published", str(exc)) from None
    request.app.state.runtime.relay.notify()
    return _see_other(f"/actions/{action.id}")


# ---- the action's page: details, live counts, follow-ups, close ----------------------------


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
    async with _database(request).read() as session:
        stats = await read_stats(session=session, action_id=action.id)
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
    }
    return await _action_page(request, user, action, notice=messages.get(notice))


def _form_values(form: FormData) -> dict[str, str]:
    return {k: v[:25_000] for k, v in form.items() if isinstance(v, str) and k != CSRF_FIELD}


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
    try:
        update_in = ActionUpdateCreate.model_validate(payload)
        async with _database(request).write() as session:
            await domain.add_follow_up(
                session=session, action_id=action.id, update_in=update_in, actor=_actor(user)
            )
    except ValidationError as exc:
        errors = _update_errors(exc, "update")
    except domain.InvalidFollowUp as exc:
        errors = {"update-content": exc.message}
    except domain.ActionConflict as exc:
        raise ConsoleError(409, "Not published", str(exc)) from None
    else:
        request.app.state.runtime.relay.notify()
        return _see_other(f"/actions/{action.id}?notice=update")
    return await _action_page(
        request, user, action, errors=errors, values=_form_values(form), status=422
    )


@router.post("/actions/{action_id}/close")
async def close(request: Request, action_id: str) -> Response:
    user = await require_user(request, WRITE_ROLES)
    action = await load_action(request, action_id)
    form = await read_form(request)
    content = _update_content(form, list(action.content), "close")
    payload = {"outcome": form.get("close-outcome") or None, "content": content or None}
    try:
        close_in = ActionClose.model_validate(payload)
        async with _database(request).write() as session:
            await domain.close_action(
                session=session, action_id=action.id, close_in=close_in, actor=_actor(user)
            )
    except ValidationError as exc:
        errors = _update_errors(exc, "close")
    except domain.InvalidFollowUp as exc:
        errors = {"close-content": exc.message}
    except domain.ActionConflict as exc:
        raise ConsoleError(409, "Not published", str(exc)) from None
    else:
        request.app.state.runtime.relay.notify()
        return _see_other(f"/actions/{action.id}?notice=closed")
    return await _action_page(
        request, user, action, errors=errors, values=_form_values(form), status=422
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
            async with _database(request).write() as session:
                await domain.replace_targets(
                    session=session,
                    action_id=action.id,
                    targets=replaced,
                    actor=_actor(user),
                )
        except ValidationError as exc:
            errors["fix-new_address"] = _email_error(exc)
        except domain.ActionConflict as exc:
            raise ConsoleError(409, "Closed", str(exc)) from None
        else:
            request.app.state.runtime.relay.notify()
            return _see_other(f"/actions/{action.id}?notice=target")
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
    async with _database(request).read() as session:
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
    async with _database(request).read() as session:
        counts = await read_stats(session=session, action_id=action.id)
    return Response(
        stats_csv(counts),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{csv_filename(counts.reference)}"'},
    )


# ---- audit log -------------------------------------------------------------------------------


@router.get("/audit")
async def audit_page(request: Request, page: str = "1", event: str = "") -> Response:
    """Every change staff made, newest first (admins only, as ``GET /api/v1/audit``)."""
    user = await require_user(request, ADMIN_ROLES)
    number = int(page) if page.isdigit() and 0 < len(page) < 7 else 1
    chosen = event if event in audit.EVENTS else None
    async with _database(request).read() as session:
        entries, total = await audit.list_entries(
            session=session, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE, event=chosen
        )
    return render(
        request,
        "audit.html.j2",
        {
            "entries": entries,
            "total": total,
            "page": number,
            "pages": max(1, math.ceil(total / PAGE_SIZE)),
            "event": chosen,
            "events": audit.EVENTS,
        },
        user=user,
    )


# ---- overview --------------------------------------------------------------------------------


@router.get("/overview")
async def overview(request: Request) -> Response:
    user = await require_user(request)
    now = datetime.now(UTC)
    since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    async with _database(request).read() as session:
        figures = await read_overview(session=session, since=since)
        feedback = await month_feedback(session=session, since=since)
    return render(
        request,
        "overview.html.j2",
        {"o": figures, "month": since, "feedback": feedback},
        user=user,
    )


# ---- wiring ----------------------------------------------------------------------------------


class ContentSecurityPolicy(BaseHTTPMiddleware):
    """Every page the console serves gets a self-only policy unless its route chose one."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if not request.url.path.startswith("/api/"):
            response.headers.setdefault("Content-Security-Policy", CSP)
            response.headers.setdefault("X-Content-Type-Options", "nosniff")
            response.headers.setdefault("Referrer-Policy", "same-origin")
        return response


def install_console(app: FastAPI) -> None:
    app.state.session_signer = SessionSigner(app.state.settings)
    app.state.sign_in_throttle = SignInThrottle()
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(ContentSecurityPolicy)

    @app.exception_handler(ConsoleError)
    async def console_error(request: Request, exc: ConsoleError) -> Response:
        user = await signed_in_user(request)
        return render(
            request,
            "error.html.j2",
            {"title": exc.title, "message": exc.message},
            status=exc.status,
            user=user,
        )

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return _see_other("/login?next=" + quote(target, safe=""))
