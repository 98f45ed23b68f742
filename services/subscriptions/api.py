"""Sign-up: ``POST /api/v1/subscribers`` (JSON, or the form of ``GET /signup``); a person's data
as JSON and its erasure (admin token)."""

from __future__ import annotations

import logging
import random
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from services.subscriptions import confirmations, sms_numbers
from services.subscriptions.data_rights import erase_subscriber, export_subscriber
from services.subscriptions.limits import retry_after_header
from services.subscriptions.models import ConsentSource
from services.subscriptions.schemas import FieldError, SubscriberCreate
from services.subscriptions.subscribers import sign_up
from services.subscriptions.tokens import AdminDep
from services.subscriptions.web import (
    N_,
    BadBody,
    ServiceState,
    StateDep,
    errors_by_field,
    field_error,
    is_json,
    parse,
    read_body,
)
from shared.access import CallerFirstRoute
from shared.db import utcnow
from shared.web import HTML, ErrorBody, error_responses, invalid_body, request_body

log = logging.getLogger(__name__)

# CallerFirstRoute: on the admin endpoints the token is checked before the path and the body.
router = APIRouter(route_class=CallerFirstRoute)

# The same answer whether the address is new or known: a sign-up reveals nothing about who is
# subscribed.
ACCEPTED = {"status": "pending", "detail": "check your inbox or phone to confirm"}


# One sign-up in this many also clears the confirmation counts whose hour is over.
FORGET_SHARE = 0.05
CROSS_SITE_TITLE = N_("This form cannot be sent from here")
CROSS_SITE_MESSAGE = N_("Please sign up on our own page.")


def _check_phone(sign_up: SubscriberCreate, state: ServiceState) -> None:
    """A number we would not text is refused whatever the channels asked now: the preference
    centre could turn SMS on later."""
    if sign_up.phone is not None:
        refused = sms_numbers.refusal(sign_up.phone, state.settings.sms_country_set)
        if refused is not None:
            raise FieldError("phone", refused)


class SignUpAccepted(BaseModel):
    status: Literal["pending"]
    detail: str


@router.post(
    "/api/v1/subscribers",
    status_code=202,
    response_model=None,
    tags=["subscribers"],
    openapi_extra=request_body(SubscriberCreate),
    responses={
        202: {
            "description": "Taken (or already known: the answer is the same); a confirmation "
            "goes out. JSON for JSON, the confirmation page for a form",
            "model": SignUpAccepted,
            "content": HTML,
        },
        403: {
            "description": "Posted by a browser from another site than ours or a listed "
            "campaign site (UANET_SIGNUP_ORIGINS)",
            "model": ErrorBody,
            "content": HTML,
        },
        **error_responses(422, 429, html=True),
    },
)
async def create_subscriber(request: Request, state: StateDep) -> Response:
    as_json = is_json(request)
    origins = state.signup_origins
    if origins.refuses(request.headers, str(request.base_url)):
        log.info("cross-site sign-up refused")
        if as_json:
            return JSONResponse(
                {"detail": "sign-ups from this site are not accepted"}, status_code=403
            )
        return state.error_page(request, 403, CROSS_SITE_TITLE, CROSS_SITE_MESSAGE)
    response = await _sign_up(request, state, as_json)
    response.headers.update(origins.cors(request.headers))
    return response


@router.options(
    "/api/v1/subscribers",
    status_code=204,
    response_model=None,
    tags=["subscribers"],
    responses={
        204: {"description": "The CORS preflight of a listed campaign site (or a plain OPTIONS)"},
        403: {"description": "A preflight from a site that may not sign people up"},
    },
)
async def signup_preflight(request: Request, state: StateDep) -> Response:
    if "origin" not in request.headers:
        return Response(status_code=204, headers={"Allow": "POST, OPTIONS"})
    headers = state.signup_origins.preflight(request.headers)
    if headers is None:
        return Response(status_code=403, headers={"Vary": "Origin"})
    return Response(status_code=204, headers=headers)


async def _sign_up(request: Request, state: StateDep, as_json: bool) -> Response:
    try:
        data = await read_body(request)
    except BadBody as exc:
        return invalid_body(str(exc))
    try:
        try:
            subscriber_in = parse(SubscriberCreate, data, from_form=not as_json).checked()
            _check_phone(subscriber_in, state)
        except FieldError as exc:
            raise field_error(exc) from None
    except RequestValidationError as exc:
        if as_json:
            raise
        return state.page(
            request, "signup.html", {"errors": errors_by_field(exc), "values": data}, status=422
        )
    # Counted once the sign-up is valid: only those can make us write to someone.
    wait = state.signups.take(state.client(request))
    if wait is not None:
        log.info("sign-up rate limit reached")
        headers = {"Retry-After": retry_after_header(wait)}
        if as_json:
            return JSONResponse(
                {"detail": "too many sign-ups from this address; try again later"},
                status_code=429,
                headers=headers,
            )
        page = state.page(request, "rate_limited.html", status=429)
        page.headers.update(headers)
        return page
    source: ConsentSource = "api" if as_json else "page"
    try:
        async with state.unit_of_work() as session:
            await sign_up(
                session=session,
                links=state.links,
                sign_up=subscriber_in,
                origin=state.origin(request, source),
            )
    except IntegrityError:
        # Two sign-ups of one address at the same moment: the other one created it.
        log.info("concurrent sign-up of a known address")
    if random.random() < FORGET_SHARE:
        async with state.unit_of_work() as session:
            await confirmations.forget_expired(session, now=utcnow())
    if as_json:
        return JSONResponse(ACCEPTED, status_code=202)
    return state.page(request, "signup_done.html", status=202)


@router.get("/signup", response_class=HTMLResponse, tags=["pages"])
async def signup_page(request: Request, state: StateDep) -> HTMLResponse:
    return state.page(request, "signup.html", {"errors": {}, "values": {}})


# ---- data rights (admin token) -----------------------------------------------------------------


def _not_found() -> JSONResponse:
    return JSONResponse({"detail": "no such subscriber"}, status_code=404)


@router.get(
    "/api/v1/subscribers/{subscriber_id}/export",
    response_model=None,
    tags=["data rights"],
    responses={
        200: {
            "description": "Everything kept about the person, from every table",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **error_responses(404),
    },
)
async def export_subscriber_data(
    subscriber_id: uuid.UUID, state: StateDep, _admin: AdminDep
) -> Response:
    """Everything we keep about one person (their right of access and to portability)."""
    async with state.sessionmaker() as session:
        data = await export_subscriber(session, subscriber_id)
    if data is None:
        return _not_found()
    log.info("subscriber data exported")
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


@router.delete(
    "/api/v1/subscribers/{subscriber_id}",
    status_code=204,
    response_model=None,
    tags=["data rights"],
    responses={204: {"description": "Erased"}, **error_responses(404)},
)
async def erase_subscriber_data(
    subscriber_id: uuid.UUID, state: StateDep, admin: AdminDep
) -> Response:
    """Erase one person's data; what they did still counts, anonymously."""
    async with state.unit_of_work() as session:
        erased = await erase_subscriber(
            session, subscriber_id, erased_by=admin.name, signer=state.links.signer
        )
    if not erased:
        return _not_found()
    return Response(status_code=204)
