"""API tokens: created by ``uanet token create``, sent as ``Authorization: Bearer <token>``.

Only a SHA-256 of each token is stored. Tokens are long random strings, so a plain hash (no salt,
no slow KDF) is enough: there is nothing to guess, and lookup stays one indexed query.

A token may carry an expiry. Revoked or expired, it is refused here at once and by subscriptions
as soon as the events reach it (``ApiTokenIssued`` carries the expiry, ``ApiTokenRevoked`` the
revocation). Each creation and revocation is in the audit log.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.publisher.audit import TOKEN_CREATED, TOKEN_REVOKED, Actor, record
from services.publisher.database import Database
from services.publisher.models import ApiToken, Outbox
from services.publisher.sessions import COOKIE, signed_in_user
from shared import events
from shared.access import Guard, forbidden, unauthorized
from shared.db import outbox_row, utcnow

Role = Literal["admin", "staff", "coordinator"]
ROLES: tuple[Role, ...] = ("admin", "staff", "coordinator")
TOKEN_PREFIX = "uat_"
LAST_USED_RESOLUTION = timedelta(minutes=1)

# Who may do what (contract §3): staff write, coordinators read, admin does both.
WRITE_ROLES: frozenset[str] = frozenset({"staff", "admin"})
READ_ROLES: frozenset[str] = frozenset({"coordinator", "admin"})
ADMIN_ROLES: frozenset[str] = frozenset({"admin"})


@dataclass(frozen=True)
class Principal:
    """Who is calling: an API token (by its name) or a console account (by its email)."""

    kind: Literal["token", "account"]
    id: int
    name: str
    role: str

    @property
    def actor(self) -> Actor:
        return Actor(self.kind, self.name)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_public_id(token_hash: str) -> uuid.UUID:
    """The id other services know a token by: derived from its hash, so it needs no column and
    is the same whenever it is computed (issue and revoke)."""
    return uuid.UUID(token_hash[:32])


def _validated(role: str, name: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    name = name.strip()
    if not name:
        raise ValueError("a token needs a name")
    return name[:200]


async def create_api_token(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    role: str,
    name: str,
    expires_at: datetime | None = None,
    actor: Actor | None = None,
) -> str:
    """Store a new token's hash and return the token itself (shown once, never stored)."""
    name = _validated(role, name)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_hash = hash_token(token)
    now = utcnow()
    async with sessionmaker() as session, session.begin():
        session.add(
            ApiToken(
                name=name, role=role, token_hash=token_hash, created_at=now, expires_at=expires_at
            )
        )
        # Same transaction: subscriptions learns of every token that exists, and only of those.
        session.add(
            outbox_row(
                Outbox,
                events.ApiTokenIssued(
                    token_id=token_public_id(token_hash),
                    name=name,
                    role=role,
                    token_hash=token_hash,
                    expires_at=expires_at,
                ),
            )
        )
        details: dict[str, str] = {"role": role}
        if expires_at is not None:
            details["expires_at"] = expires_at.isoformat()
        record(
            session,
            actor=actor or Actor.command_line(),
            event=TOKEN_CREATED,
            subject=f"token {name} ({role})",
            details=details,
        )
    return token


async def revoke_api_token(
    sessionmaker: async_sessionmaker[AsyncSession], *, name: str, actor: Actor | None = None
) -> int:
    """Revoke every live token of that name; returns how many. The publisher refuses them at
    once; subscriptions hears of it through the outbox (relayed within a second)."""
    async with sessionmaker() as session, session.begin():
        revoked = (
            await session.execute(
                update(ApiToken)
                .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .returning(ApiToken.token_hash, ApiToken.role)
            )
        ).all()
        for token_hash, role in revoked:
            session.add(
                outbox_row(Outbox, events.ApiTokenRevoked(token_id=token_public_id(token_hash)))
            )
            record(
                session,
                actor=actor or Actor.command_line(),
                event=TOKEN_REVOKED,
                subject=f"token {name} ({role})",
            )
    return len(revoked)


@dataclass(frozen=True)
class TokenListing:
    """What ``uanet token list`` shows of a token: never its secret (nor its hash)."""

    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "live"


async def list_api_tokens(sessionmaker: async_sessionmaker[AsyncSession]) -> list[TokenListing]:
    async with sessionmaker() as session:
        rows = await session.execute(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id))
        return [
            TokenListing(
                name=row.name,
                role=row.role,
                created_at=row.created_at,
                last_used_at=row.last_used_at,
                expires_at=row.expires_at,
                revoked_at=row.revoked_at,
            )
            for row in rows.scalars()
        ]


async def principal_for_token(
    session: AsyncSession, token: str, now: datetime | None = None
) -> tuple[Principal, datetime | None] | None:
    """The live token's principal and when it was last used; None if unknown, revoked or
    expired."""
    now = now or utcnow()
    row = (
        await session.execute(
            select(ApiToken).where(
                ApiToken.token_hash == hash_token(token),
                ApiToken.revoked_at.is_(None),
                or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > now),
            )
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    return Principal(kind="token", id=row.id, name=row.name, role=row.role), row.last_used_at


async def note_use(database: Database, token_id: int, last_used_at: datetime | None) -> None:
    """Record that a token was used, at most once a minute per token."""
    now = utcnow()
    if last_used_at is not None and now - last_used_at < LAST_USED_RESOLUTION:
        return
    async with database.write() as session:
        await session.execute(
            update(ApiToken)
            .where(
                ApiToken.id == token_id,
                or_(
                    ApiToken.last_used_at.is_(None),
                    ApiToken.last_used_at < now - LAST_USED_RESOLUTION,
                ),
            )
            .values(last_used_at=now)
        )


# auto_error=False: a missing header must be our 401 with WWW-Authenticate, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False)


class TokenGuard(Guard):
    """A live token of one of ``roles`` (401 without one, then 403); with ``console_session``,
    the console's signed-in session cookie also does, for any staff role (the action page's
    live stream)."""

    def __init__(self, roles: frozenset[str], *, console_session: bool = False) -> None:
        self.roles = roles
        self.console_session = console_session

    async def presented(self, request: Request) -> str | None:
        """The token the request carries (``Authorization: Bearer``), if any."""
        credentials = await bearer(request)
        return credentials.credentials if credentials is not None else None

    async def check(self, request: Request) -> Principal:
        if self.console_session and "authorization" not in request.headers:
            user = await signed_in_user(request)
            if user is not None:
                return Principal(kind="account", id=user.id, name=user.email, role=user.role)
        token = await self.presented(request)
        if not token:
            raise unauthorized("a bearer token is required")
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise unauthorized("unknown, expired or revoked token")
        database: Database = request.app.state.database
        async with database.read() as session:
            found = await principal_for_token(session, token)
        if found is None:
            raise unauthorized("unknown, expired or revoked token")
        principal, last_used_at = found
        await note_use(database, principal.id, last_used_at)
        if principal.role not in self.roles:
            raise forbidden(f"the {principal.role} role may not do this")
        return principal

    async def __call__(
        self,
        request: Request,
        # Declared for the OpenAPI document's security scheme; check() reads the header itself.
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Principal:
        principal: Principal = await self.caller(request)
        return principal


Writer = Annotated[Principal, Depends(TokenGuard(WRITE_ROLES))]
Reader = Annotated[Principal, Depends(TokenGuard(READ_ROLES))]
Admin = Annotated[Principal, Depends(TokenGuard(ADMIN_ROLES))]
# Declared for the OpenAPI document only: the session cookie is read by signed_in_user.
_console_cookie = APIKeyCookie(name=COOKIE, auto_error=False, scheme_name="ConsoleSession")


class SessionOrTokenGuard(TokenGuard):
    """TokenGuard with ``console_session``, whose document names both ways in (alternatives)."""

    def __init__(self, roles: frozenset[str]) -> None:
        super().__init__(roles, console_session=True)

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        session: Annotated[str | None, Depends(_console_cookie)] = None,
    ) -> Principal:
        principal: Principal = await self.caller(request)
        return principal


STREAM_GUARD = SessionOrTokenGuard(READ_ROLES)
StreamReader = Annotated[Principal, Depends(STREAM_GUARD)]
