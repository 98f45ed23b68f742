"""Console sessions: a signed cookie (itsdangerous) naming the staff account and holding the
session's CSRF token.

The cookie is HttpOnly and SameSite=Lax, Secure when the console is reached over https. Every
state-changing form carries the CSRF token in a hidden ``csrf_token`` field; a POST whose field
does not match the session's token gets 403. Signed-out visitors get a session too (with no
account), so the sign-in form itself is protected; signing in starts a new session (new token).
"""

from __future__ import annotations

import hmac
import logging
import secrets
from dataclasses import dataclass

from fastapi import Request, Response
from itsdangerous import BadData, URLSafeTimedSerializer

from services.publisher.models import StaffUser
from shared.settings import Settings

log = logging.getLogger(__name__)

COOKIE = "uanet_console"
MAX_AGE = 12 * 3600  # a working day; then sign in again
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class ConsoleSession:
    csrf_token: str
    user_id: int | None = None

    @classmethod
    def fresh(cls, user_id: int | None = None) -> ConsoleSession:
        return cls(csrf_token=secrets.token_urlsafe(32), user_id=user_id)


class SessionSigner:
    def __init__(self, settings: Settings) -> None:
        if settings.secret_key is not None and settings.secret_key.get_secret_value():
            secret = settings.secret_key.get_secret_value()
        else:
            # `uanet serve` refuses to start without a key; this is for an app built bare.
            log.warning("UANET_SECRET_KEY unset: console sessions end when this process stops")
            secret = secrets.token_urlsafe(32)
        self._serializer = URLSafeTimedSerializer(secret, salt="uanet.console-session")

    def dumps(self, session: ConsoleSession) -> str:
        return self._serializer.dumps({"c": session.csrf_token, "u": session.user_id})

    def loads(self, cookie: str) -> ConsoleSession | None:
        try:
            data = self._serializer.loads(cookie, max_age=MAX_AGE)
        except (BadData, UnicodeError, ValueError, TypeError):
            return None
        if not isinstance(data, dict):
            return None
        csrf, user_id = data.get("c"), data.get("u")
        if not isinstance(csrf, str) or not (user_id is None or isinstance(user_id, int)):
            return None
        return ConsoleSession(csrf_token=csrf, user_id=user_id)


def _signer(request: Request) -> SessionSigner:
    signer: SessionSigner = request.app.state.session_signer
    return signer


def read_session(request: Request) -> ConsoleSession | None:
    cookie = request.cookies.get(COOKIE)
    if not cookie or len(cookie) > 4096:
        return None
    return _signer(request).loads(cookie)


def write_session(request: Request, response: Response, session: ConsoleSession) -> None:
    response.set_cookie(
        COOKIE,
        _signer(request).dumps(session),
        max_age=MAX_AGE,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
    )


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(
        COOKIE, path="/", httponly=True, samesite="lax", secure=request.url.scheme == "https"
    )


def csrf_valid(session: ConsoleSession | None, submitted: object) -> bool:
    if session is None or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(session.csrf_token.encode(), submitted.encode())


async def signed_in_user(request: Request) -> StaffUser | None:
    """The account of this request's session, if it is still there and not disabled."""
    session = read_session(request)
    if session is None or session.user_id is None:
        return None
    async with request.app.state.database.read() as db:
        user: StaffUser | None = await db.get(StaffUser, session.user_id)
    if user is None or user.disabled_at is not None:
        return None
    return user
