"""What every console page shares: the templates, rendering with the session and CSRF token,
the signed-in user and their role, forms, the action a URL names, and the console's errors."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.datastructures import FormData

from services.publisher import actions as domain
from services.publisher import audit
from services.publisher.audit import Actor
from services.publisher.auth import ROLES, WRITE_ROLES
from services.publisher.database import Database
from services.publisher.models import StaffUser, UrgentAction
from services.publisher.sessions import (
    CSRF_FIELD,
    ConsoleSession,
    csrf_valid,
    read_session,
    signed_in_user,
    write_session,
)
from shared.events import Outcome
from shared.web import SecurityHeaders

# The publisher's templates and static files, beside this package.
HERE = Path(__file__).resolve().parents[1]
PAGE_SIZE = 25
HISTORY_SIZE = 50  # an action's page shows its latest changes; the audit log has them all
OUTCOMES: tuple[str, ...] = Outcome.__args__  # type: ignore[attr-defined]
UPDATE_FIELDS = ("subject", "body", "sms")
# Console pages load only what we serve, run no inline script and are never framed elsewhere
# (clickjacking a publish button). The preview page also lets the email's own inline styles
# apply inside its sandboxed iframe (scripts stay blocked there and everywhere).
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'; object-src 'none'"
)
PREVIEW_CSP = CSP.replace("style-src 'self'", "style-src 'self' 'unsafe-inline'")
# Every response of the publisher (console and API), set once by shared.web.install_common.
CONSOLE_HEADERS = SecurityHeaders(CSP, referrer_policy="same-origin")


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
    "declined": "Declined",
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
    audit.WEBHOOK_ADDED: "Webhook endpoint added",
    audit.WEBHOOK_REMOVED: "Webhook endpoint removed",
    audit.WEBHOOK_REPLAYED: "Webhook events replayed",
    audit.SECTION_ADDED: "Section added",
    audit.SECTION_REMOVED: "Section removed",
    audit.HUB_ACTION_RECEIVED: "Received from the international office",
    audit.HUB_ACTION_DECLINED: "Declined (from the international office)",
    audit.HUB_ACTION_AUTO_PUBLISHED: "Published on arrival (from the international office)",
    audit.HUB_ACTION_REFUSED: "Could not be taken (from the international office)",
}
_templates.globals["OUTCOME_LABELS"] = {
    "released": "Released",
    "charges_dropped": "Charges dropped",
    "sentence_commuted": "Sentence commuted",
    "improved": "Situation improved",
    "no_change": "No change",
    "other": "Other",
}


class ConsoleError(Exception):
    """Ends a console request with an HTML error page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.message = message


class SignInRequired(Exception):
    pass


def database_of(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    user: StaffUser | None = None,
    csp: str | None = None,
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
    if csp is not None:  # a page that needs another policy than the service's
        response.headers["Content-Security-Policy"] = csp
    if fresh:
        write_session(request, response, session)
    return response


def actor_of(user: StaffUser) -> Actor:
    return Actor("account", user.email)


def see_other(url: str) -> RedirectResponse:
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
        async with database_of(request).read() as session:
            return await domain.get_action(session=session, action_id=action_id)
    except domain.ActionNotFound:
        raise ConsoleError(404, "Not found", "There is no such urgent action.") from None


def safe_next(raw: object) -> str:
    """Only a path on this site: never an open redirect."""
    if isinstance(raw, str) and raw.startswith("/") and not raw.startswith(("//", "/\\")):
        return raw[:500]
    return "/"
