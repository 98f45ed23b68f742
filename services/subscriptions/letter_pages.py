"""Letters to the officials from the action page (mail-to-target), and the link that sends a
letter whose reply address is not the subscriber's confirmed email (``/letters/{token}``: a page
with a button, whose POST sends it once; see ``letters``)."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import IntegrityError

from services.subscriptions import letters
from services.subscriptions import page_docs as docs
from services.subscriptions.audience import content_language
from services.subscriptions.models import KnownAction, Letter, Subscriber
from services.subscriptions.pages import _action_page, _invalid_link, _load_recipient
from services.subscriptions.schemas import LetterCreate
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
from shared.tokens import InvalidToken
from shared.web import invalid_body

router = APIRouter(tags=["pages"])

# Why a letter cannot be sent: (HTTP status, title, message) of the page or JSON answer.
LETTER_REFUSALS: dict[letters.Refusal, tuple[int, str, str]] = {
    "closed": (
        409,
        N_("This case is closed"),
        N_("Letters can no longer be sent for this case. Thank you for caring."),
    ),
    "deadline_passed": (
        410,
        N_("The deadline has passed"),
        N_("Letters can no longer be sent for this case: its deadline has passed."),
    ),
    "no_targets": (
        409,
        N_("No email address for this case"),
        N_("None of the officials for this case has an email address: please write by post."),
    ),
}
TOO_MANY_LETTERS = (
    N_("You have sent many letters already"),
    N_("Thank you! You have sent the most letters we can send for one person on this case."),
)
# The reply address's check was not sent: that mailbox had its few an hour, or bounced for good.
CHECK_REFUSED = (
    N_("We cannot email that address now"),
    N_(
        "We have sent that address as many messages as we may for now. Write with your own "
        "email address, or try again in an hour."
    ),
)


def _letter_refused(
    state: ServiceState,
    request: Request,
    as_json: bool,
    status: int,
    title: str,
    message: str,
    language: str,
) -> Response:
    if as_json:
        return JSONResponse({"detail": message}, status_code=status)
    return state.error_page(request, status, title, message, language=language)


@router.post("/act/{token}/letter", status_code=202, response_model=None, **docs.LETTER)
async def send_letter(token: str, request: Request, state: StateDep) -> Response:
    """Email the subscriber's letter to each target with an address (through the dispatcher)."""
    as_json = is_json(request)
    found = await _load_recipient(state, token)
    if found is None:
        return _invalid_link(state, request, as_json)
    recipient, action, subscriber = found
    refused = letters.refusal(action, utcnow().date())
    if refused is not None:
        status, title, message = LETTER_REFUSALS[refused]
        return _letter_refused(state, request, as_json, status, title, message, subscriber.language)
    try:
        data = await read_body(request)
    except BadBody as exc:
        return invalid_body(str(exc))
    try:
        letter = parse(LetterCreate, data)
    except RequestValidationError as exc:
        if as_json:
            raise
        values = {k: str(data.get(k) or "")[:20_000] for k in ("name", "email", "letter")}
        return await _action_page(
            state,
            request,
            token,
            action,
            subscriber,
            status=422,
            letter_errors=errors_by_field(exc),
            letter_values=values,
        )
    letter_id = letter.letter_id or uuid.uuid4()
    language = content_language(subscriber.language, action.content, action.default_language)
    try:
        async with state.unit_of_work() as session:
            outcome = await letters.request_letter(
                session=session,
                links=state.links,
                recipient=recipient,
                subscriber=subscriber,
                action=action,
                letter=letter,
                letter_id=letter_id,
                language=language,
            )
    except IntegrityError:
        outcome = "duplicate"  # the same letter id, raced in by a second submission
    if outcome in ("too_many", "check_refused"):
        title, message = TOO_MANY_LETTERS if outcome == "too_many" else CHECK_REFUSED
        return _letter_refused(state, request, as_json, 429, title, message, subscriber.language)
    targets = letters.email_targets(action)
    if outcome == "confirm_email" and not as_json:
        return state.page(
            request,
            "letter_check_sent.html",
            {"action_url": f"/act/{token}"},
            language=subscriber.language,
        )
    if as_json:
        return JSONResponse(
            {
                "status": outcome,
                "letter_id": str(letter_id),
                "targets": len(targets),
            },
            status_code=202,
        )
    return state.page(
        request,
        "letter_sent.html",
        {"targets": targets, "action_url": f"/act/{token}", "subject": _subject(action, language)},
        language=subscriber.language,
    )


def _subject(action: KnownAction, language: str) -> str:
    content: dict[str, Any] = action.content.get(language) or next(
        iter(action.content.values()), {}
    )
    return str(content.get("subject", ""))


# ---- the reply address's link ------------------------------------------------------------------


async def _pending(state: ServiceState, token: str) -> tuple[uuid.UUID, Letter] | None:
    try:
        letter_id = state.links.read_letter(token)
    except InvalidToken:
        return None
    async with state.sessionmaker() as session:
        letter = await session.get(Letter, letter_id)
        writer = await session.get(Subscriber, letter.subscriber_id) if letter else None
    if letter is None or writer is None or writer.erased_at is not None:
        return None  # an erased person's links stop working
    return letter_id, letter


@router.get("/letters/{token}", response_class=HTMLResponse, responses=docs.INVALID_LINK)
async def letter_confirm_page(token: str, request: Request, state: StateDep) -> Response:
    """The link emailed to a letter's reply address: a page with the button that sends it (a
    mail scanner following links sends nothing)."""
    found = await _pending(state, token)
    if found is None:
        return state.invalid_link(request)
    _, letter = found
    return state.page(
        request,
        "letter_confirm.html",
        {"action_url": f"/letters/{token}", "done": False},
        language=letter.language,
    )


@router.post("/letters/{token}", response_model=None, **docs.LETTER_CONFIRMED)
async def letter_confirm(token: str, request: Request, state: StateDep) -> Response:
    """Send the letter waiting on this reply address; pressed again, nothing more goes."""
    as_json = is_json(request)
    found = await _pending(state, token)
    if found is None:
        return _invalid_link(state, request, as_json)
    letter_id, letter = found
    async with state.unit_of_work() as session:
        outcome = await letters.send_pending(session, letter_id)
    if outcome in LETTER_REFUSALS:
        status, title, message = LETTER_REFUSALS[outcome]
        return _letter_refused(state, request, as_json, status, title, message, letter.language)
    if as_json:
        return JSONResponse({"status": outcome, "letter_id": str(letter_id)})
    return state.page(
        request,
        "letter_confirm.html",
        {"action_url": f"/letters/{token}", "done": True},
        language=letter.language,
    )
