"""API tokens: created by ``uanet token create``, sent as ``Authorization: Bearer <token>``.

Only a SHA-256 of each token is stored. Tokens are long random strings, so a plain hash (no salt,
no slow KDF) is enough: there is nothing to guess, and lookup stays one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.publisher.models import ApiToken, Outbox
from services.publisher.sessions import signed_in_user
from shared import events
from shared.access import Guard, forbidden, unauthorized
from shared.db import outbox_row, utcnow

Role = Literal["admin", "staff", "coordinator"]
ROLES: tuple[Role, ...] = ("admin", "staff", "coordinator")
TOKEN_PREFIX = "uat_"

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


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_public_id(token_hash: str) -> uuid.UUID:
    """The id other services know a token by: derived from its hash, so it needs no column and
    is the same whenever it is computed (issue and revoke)."""
    return uuid.UUID(token_hash[:32])


async def create_api_token(
    sessionmaker: async_sessionmaker[AsyncSession], *, role: str, name: str
) -> str:
    """Store a new token's hash and return the token itself (shown once, never stored)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    name = name.strip()
    if not name:
        raise ValueError("a token needs a name")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token_hash = hash_token(token)
    async with sessionmaker() as session, session.begin():
        session.add(
            ApiToken(name=name[:200], role=role, token_hash=token_hash, created_at=utcnow())
        )
        # Same transaction: subscriptions learns of every token that exists, and only of those.
        session.add(
            outbox_row(
                Outbox,
                events.ApiTokenIssued(
                    token_id=token_public_id(token_hash),
                    name=name[:200],
                    role=role,
                    token_hash=token_hash,
                ),
            )
        )
    return token


async def revoke_api_token(sessionmaker: async_sessionmaker[AsyncSession], *, name: str) -> int:
    """Revoke every live token of that name; returns how many."""
    async with sessionmaker() as session, session.begin():
        hashes = (
            await session.execute(
                update(ApiToken)
                .where(ApiToken.name == name, ApiToken.revoked_at.is_(None))
                .values(revoked_at=utcnow())
                .returning(ApiToken.token_hash)
            )
        ).scalars()
        revoked = 0
        for token_hash in hashes:
            session.add(
                outbox_row(Outbox, events.ApiTokenRevoked(token_id=token_public_id(token_hash)))
            )
            revoked += 1
    return revoked


async def principal_for_token(session: AsyncSession, token: str) -> Principal | None:
    row = (
        await session.execute(
            select(ApiToken).where(
                ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
            )
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    return Principal(kind="token", id=row.id, name=row.name, role=row.role)


# auto_error=False: a missing header must be our 401 with WWW-Authenticate, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False)


class TokenGuard(Guard):
    """A live token of one of ``roles`` (401 without one, then 403); with ``console_session``,
    the console's signed-in session cookie also does, for any staff role (the action page's
    live stream)."""

    def __init__(self, roles: frozenset[str], *, console_session: bool = False) -> None:
        self.roles = roles
        self.console_session = console_session

    async def check(self, request: Request) -> Principal:
        if self.console_session and "authorization" not in request.headers:
            user = await signed_in_user(request)
            if user is not None:
                return Principal(kind="account", id=user.id, name=user.email, role=user.role)
        credentials = await bearer(request)
        if credentials is None or not credentials.credentials:
            raise unauthorized("a bearer token is required")
        token = credentials.credentials
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            raise unauthorized("unknown or revoked token")
        sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
        async with sessionmaker() as session:
            principal = await principal_for_token(session, token)
        if principal is None:
            raise unauthorized("unknown or revoked token")
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
StreamReader = Annotated[Principal, Depends(TokenGuard(READ_ROLES, console_session=True))]
