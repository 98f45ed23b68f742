"""Sign-up: ``POST /api/v1/subscribers`` (JSON, or the form of ``GET /signup``)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from sqlalchemy.exc import IntegrityError

from services.subscriptions.models import ConsentSource
from services.subscriptions.schemas import FieldError, SubscriberCreate
from services.subscriptions.subscribers import sign_up
from services.subscriptions.web import (
    BadBody,
    StateDep,
    errors_by_field,
    field_error,
    is_json,
    parse,
    read_body,
)

log = logging.getLogger(__name__)

router = APIRouter()

# The same answer whether the address is new or known: a sign-up reveals nothing about who is
# subscribed.
ACCEPTED = {"status": "pending", "detail": "check your inbox or phone to confirm"}


@router.post("/api/v1/subscribers", status_code=202, response_model=None)
async def create_subscriber(request: Request, state: StateDep) -> Response:
    as_json = is_json(request)
    try:
        data = await read_body(request)
    except BadBody as exc:
        return JSONResponse({"detail": str(exc)}, status_code=422)
    try:
        try:
            subscriber_in = parse(SubscriberCreate, data).checked()
        except FieldError as exc:
            raise field_error(exc) from None
    except RequestValidationError as exc:
        if as_json:
            raise
        return state.page(
            request, "signup.html", {"errors": errors_by_field(exc), "values": data}, status=422
        )
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


@router.get("/signup", response_class=HTMLResponse)
async def signup_page(request: Request, state: StateDep) -> HTMLResponse:
    return state.page(request, "signup.html", {"errors": {}, "values": {}})
