"""Sign-up: ``POST /api/v1/subscribers`` (JSON, or the form of ``GET /signup``); a person's data
as JSON and its erasure (admin token)."""

from __future__ import annotations

import logging
import uuid
from typing import Literal

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError

from services.subscriptions.data_rights import erase_subscriber, export_subscriber
from services.subscriptions.limits import retry_after_header
from services.subscriptions.models import ConsentSource
from services.subscriptions.schemas import FieldError, SubscriberCreate
from services.subscriptions.subscribers import sign_up
from services.subscriptions.tokens import AdminDep
from services.subscriptions.web import (
    BadBody,
    StateDep,
    errors_by_field,
    field_error,
    is_json,
    parse,
    read_body,
)
from shared.access import CallerFirstRoute
from shared.web import HTML, error_responses, invalid_body, request_body

log = logging.getLogger(__name__)

# CallerFirstRoute: on the admin endpoints the token is checked before the path and the body.
router = APIRouter(route_class=CallerFirstRoute)

# The same answer whether the address is new or known: a sign-up reveals nothing about who is
# subscribed.
ACCEPTED = {"status": "pending", "detail": "check your inbox or phone to confirm"}


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
        **error_responses(422, 429, html=True),
    },
)
async def create_subscriber(request: Request, state: StateDep) -> Response:
    as_json = is_json(request)
    try:
        data = await read_body(request)
    except BadBody as exc:
        return invalid_body(str(exc))
    try:
        try:
            subscriber_in = parse(SubscriberCreate, data, from_form=not as_json).checked()
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
        erased = await erase_subscriber(session, subscriber_id, erased_by=admin.name)
    if not erased:
        return _not_found()
    return Response(status_code=204)
