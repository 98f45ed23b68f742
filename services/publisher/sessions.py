"""Console sessions: a signed cookie (itsdangerous) holding the session's CSRF token and, once
signed in, a random session key whose record the server keeps (``StaffSession``): signing out
deletes the record, so the cookie stops working at once, even a copy of it; it lasts 12 hours.

The cookie is HttpOnly and SameSite=Lax, Secure when the console is reached over https (the
request's scheme, ``X-Forwarded-Proto`` from a trusted proxy, or an https
``UANET_CONSOLE_URL``). Every state-changing form carries the CSRF token in a hidden
``csrf_token`` field; a POST whose field does not match the session's token gets 403.
Signed-out visitors get a session too (with no account), so the sign-in form itself is
protected; signing in starts a new session (new token, new key).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request, Response
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import delete

from services.publisher.models import StaffSession, StaffUser
from shared.db import utcnow
from shared.settings import Settings
from shared.web import is_https

log = logging.getLogger(__name__)

COOKIE = "uanet_console"
MAX_AGE = 12 * 3600  # a working day; then sign in again
CSRF_FIELD = "csrf_token"


@dataclass(frozen=True)
class ConsoleSession:
    csrf_token: str
    user_id: int | None = None
    # The server-side record's key (signed-in sessions only).
    key: str | None = None

    @classmethod
    def fresh(cls, user_id: int | None = None) -> ConsoleSession:
        key = secrets.token_urlsafe(32) if user_id is not None else None
        return cls(csrf_token=secrets.token_urlsafe(32), user_id=user_id, key=key)


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


async def start_session(request: Request, user: StaffUser) -> ConsoleSession:
    """A new signed-in session, recorded on the server."""
    session = ConsoleSession.fresh(user.id)
    assert session.key is not None
    now = utcnow()
    async with request.app.state.database.write() as db:
        # Expired records of anyone go too: the table holds only live sessions.
        await db.execute(delete(StaffSession).where(StaffSession.expires_at <= now))
        db.add(
            StaffSession(
                key_hash=_key_hash(session.key),
                user_id=user.id,
                created_at=now,
                expires_at=now + timedelta(seconds=MAX_AGE),
            )
        )
    return session


async def end_session(request: Request) -> None:
    """Signing out: the session's record goes, so its cookie (or a copy) no longer works."""
    session = read_session(request)
    if session is None or session.key is None:
        return
    async with request.app.state.database.write() as db:
        await db.execute(
            delete(StaffSession).where(StaffSession.key_hash == _key_hash(session.key))
        )


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
        return self._serializer.dumps(
            {"c": session.csrf_token, "u": session.user_id, "k": session.key}
        )

    def loads(self, cookie: str) -> ConsoleSession | None:
        try:
            data = self._serializer.loads(cookie, max_age=MAX_AGE)
        except (BadData, UnicodeError, ValueError, TypeError):
            return None
        if not isinstance(data, dict):
            return None
        csrf, user_id, key = data.get("c"), data.get("u"), data.get("k")
        if not isinstance(csrf, str) or not (user_id is None or isinstance(user_id, int)):
            return None
        if not (key is None or isinstance(key, str)):
            return None
        return ConsoleSession(csrf_token=csrf, user_id=user_id, key=key)


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
        secure=_secure(request),
        path="/",
    )


def clear_session(request: Request, response: Response) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="lax", secure=_secure(request))


def _secure(request: Request) -> bool:
    settings: Settings = request.app.state.settings
    return settings.console_url.startswith("https://") or is_https(
        request, settings.trusted_proxy_set
    )


def csrf_valid(session: ConsoleSession | None, submitted: object) -> bool:
    if session is None or not isinstance(submitted, str) or not submitted:
        return False
    return hmac.compare_digest(session.csrf_token.encode(), submitted.encode())


async def signed_in_user(request: Request) -> StaffUser | None:
    """The account of this request's session, if it is still there and not disabled."""
    session = read_session(request)
    if session is None or session.user_id is None or session.key is None:
        return None
    async with request.app.state.database.read() as db:
        record = await db.get(StaffSession, _key_hash(session.key))
        if record is None or record.user_id != session.user_id or record.expires_at <= utcnow():
            return None  # signed out (or expired): the cookie alone proves nothing
        user: StaffUser | None = await db.get(StaffUser, session.user_id)
    if user is None or user.disabled_at is not None:
        return None
    return user
