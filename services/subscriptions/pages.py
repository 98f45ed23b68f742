"""Subscriber pages, each authorized by the signed token in its URL (no cookie, no CSRF token):
preferences and the action page (confirm and unsubscribe: ``consent_pages``)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from markdown_it import MarkdownIt
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from services.subscriptions import letters, responses, store
from services.subscriptions import page_docs as docs
from services.subscriptions.audience import content_language
from services.subscriptions.models import ActionRecipient, ActionUpdate, KnownAction, Subscriber
from services.subscriptions.schemas import PreferencesUpdate, ReportCreate
from services.subscriptions.subscribers import update_preferences
from services.subscriptions.web import (
    N_,
    BadBody,
    ServiceState,
    StateDep,
    errors_by_field,
    is_json,
    parse,
    read_body,
)
from shared.db import utcnow
from shared.i18n import language_name
from shared.tokens import InvalidToken
from shared.web import invalid_body

router = APIRouter(tags=["pages"])

TOO_MANY_REPORTS = (
    N_("Thank you, that is many reports"),
    N_("You have reported many times in the last hour. Please try again later."),
)
RETRY_IN_AN_HOUR = {"Retry-After": "3600"}

# Staff write Markdown; raw HTML in it is shown as text, and markdown-it refuses javascript: links.
_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})


def render_markdown(text: str) -> str:
    html: str = _markdown.render(text or "")
    return html


# ---- preferences ------------------------------------------------------------------------------


def _preferences_page(
    state: ServiceState,
    request: Request,
    token: str,
    subscriber: Subscriber,
    status: int = 200,
    **extra: Any,
) -> HTMLResponse:
    languages = dict(state.renderer.translations.languages_named)
    if subscriber.language not in languages:
        # Alerts may come in a language the pages are not translated into: keep it choosable.
        languages[subscriber.language] = language_name(subscriber.language)
    context = {
        "subscriber": subscriber,
        "language_choices": sorted(languages.items()),
        "action_url": f"/preferences/{token}",
        "errors": {},
        **extra,
    }
    return state.page(request, "preferences.html", context, status, language=subscriber.language)


def _preferences_json(subscriber: Subscriber, awaiting: list[str]) -> dict[str, Any]:
    return {
        "channels": {"email": subscriber.email_status, "sms": subscriber.sms_status},
        "themes": subscriber.themes,
        "language": subscriber.language,
        "timezone": subscriber.timezone,
        "frequency": subscriber.frequency,
        "awaiting_confirmation": awaiting,
    }


@router.get("/preferences/{token}", response_class=HTMLResponse, responses=docs.INVALID_LINK)
async def preferences_page(token: str, request: Request, state: StateDep) -> HTMLResponse:
    try:
        public_id = state.links.read_preferences(token)
    except InvalidToken:
        return state.invalid_link(request)
    async with state.sessionmaker() as session:
        subscriber = await store.subscriber_by_public_id(session, public_id)
    if subscriber is None:
        return state.invalid_link(request)
    return _preferences_page(state, request, token, subscriber)


@router.post("/preferences/{token}", response_model=None, **docs.SAVE_PREFERENCES)
async def save_preferences(token: str, request: Request, state: StateDep) -> Response:
    as_json = is_json(request)
    try:
        public_id = state.links.read_preferences(token)
    except InvalidToken:
        return _invalid_link(state, request, as_json)
    try:
        data = await read_body(request)
    except BadBody as exc:
        return invalid_body(str(exc))
    if not as_json:
        # An unticked check box sends nothing: from the form, no channel means none.
        data.setdefault("channels", [])
        data.setdefault("themes", [])
    try:
        update = parse(PreferencesUpdate, data, from_form=not as_json)
    except RequestValidationError as exc:
        if as_json:
            raise
        async with state.sessionmaker() as session:
            subscriber = await store.subscriber_by_public_id(session, public_id)
        if subscriber is None:
            return _invalid_link(state, request, as_json)
        return _preferences_page(
            state, request, token, subscriber, 422, errors=errors_by_field(exc)
        )
    async with state.unit_of_work() as session:
        subscriber = await store.subscriber_by_public_id(session, public_id, for_update=True)
        awaiting: list[str] = []
        if subscriber is not None:
            awaiting = list(
                await update_preferences(
                    session=session,
                    links=state.links,
                    subscriber=subscriber,
                    update=update,
                    origin=state.origin(request),
                )
            )
    if subscriber is None:
        return _invalid_link(state, request, as_json)
    if as_json:
        return JSONResponse(_preferences_json(subscriber, awaiting))
    return _preferences_page(state, request, token, subscriber, saved=True, awaiting=awaiting)


def _invalid_link(state: ServiceState, request: Request, as_json: bool) -> Response:
    if as_json:
        return JSONResponse({"detail": "unknown or invalid link"}, status_code=404)
    return state.invalid_link(request)


# ---- the action page and reports ---------------------------------------------------------------


async def _load_recipient(
    state: ServiceState, token: str
) -> tuple[ActionRecipient, KnownAction, Subscriber] | None:
    try:
        recipient_id = state.links.read_act(token)
    except InvalidToken:
        return None
    async with state.sessionmaker() as session:
        row = (
            await session.execute(
                select(ActionRecipient, KnownAction, Subscriber)
                .join(KnownAction, KnownAction.id == ActionRecipient.action_id)
                .join(Subscriber, Subscriber.id == ActionRecipient.subscriber_id)
                # An erased person's links stop working.
                .where(ActionRecipient.id == recipient_id, Subscriber.erased_at.is_(None))
            )
        ).one_or_none()
    if row is None:
        return None
    return row[0], row[1], row[2]


async def _updates(state: ServiceState, action: KnownAction, language: str) -> list[dict[str, str]]:
    async with state.sessionmaker() as session:
        updates = (
            await session.execute(
                select(ActionUpdate)
                .where(ActionUpdate.action_id == action.id)
                .order_by(ActionUpdate.created_at)
            )
        ).scalars()
        shown: list[dict[str, str]] = []
        for update in updates:
            chosen = content_language(language, update.content, update.default_language)
            text = update.content.get(chosen) or next(iter(update.content.values()), None)
            if text:
                shown.append(
                    {
                        "subject": str(text.get("subject", "")),
                        "body_html": render_markdown(str(text.get("body", ""))),
                    }
                )
    return shown


async def _action_page(
    state: ServiceState,
    request: Request,
    token: str,
    action: KnownAction,
    subscriber: Subscriber,
    *,
    status: int = 200,
    errors: dict[str, str] | None = None,
    letter_errors: dict[str, str] | None = None,
    letter_values: dict[str, str] | None = None,
) -> HTMLResponse:
    language = content_language(subscriber.language, action.content, action.default_language)
    content: dict[str, Any] = action.content.get(language) or next(
        iter(action.content.values()), {}
    )
    refused = letters.refusal(action, utcnow().date())
    context = {
        "letter_targets": letters.email_targets(action),
        "letter_refused": refused,
        "letter_id": uuid.uuid4(),
        "letter_errors": letter_errors or {},
        # Prefilled with the model letter in the language the page shows the case in, but never
        # with the subscriber's name or address: alerts get forwarded, and whoever holds the
        # link sees the page.
        "letter_values": letter_values
        or {"name": "", "email": "", "letter": str(content.get("model_letter") or "")},
        "content_lang": language,
        "action": action,
        "content": content,
        "body_html": render_markdown(str(content.get("body", ""))),
        "updates": await _updates(state, action, language),
        "report_id": uuid.uuid4(),
        "reported": request.query_params.get("reported") == "1",
        "action_url": f"/act/{token}",
        "errors": errors or {},
    }
    return state.page(request, "act.html", context, status, language=subscriber.language)


@router.get("/act/{token}", response_class=HTMLResponse, responses=docs.INVALID_LINK)
async def action_page(token: str, request: Request, state: StateDep) -> HTMLResponse:
    found = await _load_recipient(state, token)
    if found is None:
        return state.invalid_link(request)
    _, action, subscriber = found
    return await _action_page(state, request, token, action, subscriber)


@router.post("/act/{token}", status_code=202, response_model=None, **docs.REPORT)
async def report_action(token: str, request: Request, state: StateDep) -> Response:
    """Count what the subscriber did; a closed action still takes reports."""
    as_json = is_json(request)
    found = await _load_recipient(state, token)
    if found is None:
        return _invalid_link(state, request, as_json)
    recipient, action, subscriber = found
    try:
        data = await read_body(request)
    except BadBody as exc:
        return invalid_body(str(exc))
    try:
        report = parse(ReportCreate, data)
    except RequestValidationError as exc:
        if as_json:
            raise
        return await _action_page(
            state, request, token, action, subscriber, status=422, errors=errors_by_field(exc)
        )
    report_id = report.report_id or uuid.uuid4()
    outcome: responses.Recorded
    try:
        async with state.unit_of_work() as session:
            outcome = await responses.report(
                session=session,
                recipient=recipient,
                subscriber=subscriber,
                report_id=report_id,
                kind=report.kind,
                count=report.count,
                source="page",
            )
    except IntegrityError:
        # The report id was already taken by another message: treat it as a duplicate.
        outcome = "duplicate"
    if outcome == "too_many":
        title, message = TOO_MANY_REPORTS
        if as_json:
            return JSONResponse({"detail": message}, status_code=429, headers=RETRY_IN_AN_HOUR)
        page = state.error_page(request, 429, title, message, language=subscriber.language)
        page.headers.update(RETRY_IN_AN_HOUR)
        return page
    if as_json:
        return JSONResponse({"status": outcome, "report_id": str(report_id)}, status_code=202)
    return RedirectResponse(f"/act/{token}?reported=1#report", status_code=303)
