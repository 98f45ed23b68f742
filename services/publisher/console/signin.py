"""Signing in (throttled, contract §7) and out."""

from __future__ import annotations

import math

from fastapi import APIRouter, Request, Response

from services.publisher.console.common import (
    database_of,
    read_form,
    render,
    safe_next,
    see_other,
)
from services.publisher.sessions import (
    ConsoleSession,
    end_session,
    signed_in_user,
    start_session,
    write_session,
)
from services.publisher.sign_in_throttle import SignInThrottle
from services.publisher.staff import check_sign_in
from shared.web import client_address, client_key

router = APIRouter(include_in_schema=False)


@router.get("/login")
async def login_page(request: Request, next: str = "/") -> Response:
    if await signed_in_user(request) is not None:
        return see_other(safe_next(next))
    return render(request, "login.html.j2", {"next": safe_next(next), "error": None, "email": ""})


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request)
    email = form.get("email")
    password = form.get("password")
    email = email[:320] if isinstance(email, str) else ""
    password = password if isinstance(password, str) else ""
    target = safe_next(form.get("next"))
    throttle: SignInThrottle = request.app.state.sign_in_throttle
    # A client is an IPv4 address or an IPv6 /64: one host holds a whole /64, and counted per
    # address a spray from it would never run out of fresh addresses.
    address = client_key(client_address(request, request.app.state.settings.trusted_proxy_set))
    failed_context = {"next": target, "email": email}
    async with database_of(request).read() as session:
        # Counted by the email as typed, account or not: the answers tell no one which it is.
        wait = await throttle.wait(email=email, address=address)
        if wait is not None:
            refused = render(
                request,
                "login.html.j2",
                {**failed_context, "error": "Too many failed attempts. Wait a few minutes."},
                status=429,
            )
            refused.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return refused
        user = await check_sign_in(session, email=email, password=password)
    if user is None:
        await throttle.failed(email=email, address=address)
        return render(
            request,
            "login.html.j2",
            {**failed_context, "error": "That email and password do not match an account."},
            status=401,
        )
    await throttle.succeeded(email=email, address=address)
    response = see_other(target)
    # A new session on sign-in: a token planted before it (session fixation) is worthless.
    write_session(request, response, await start_session(request, user))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    await read_form(request)
    await end_session(request)
    response = see_other("/login")
    write_session(request, response, ConsoleSession.fresh())
    return response
