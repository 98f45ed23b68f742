"""API tokens: created by ``uanet token create``, sent as ``Authorization: Bearer <token>``.

Only a SHA-256 of each token is stored. Tokens are long random strings, so a plain hash (no salt,
no slow KDF) is enough: there is nothing to guess, and lookup stays one indexed query.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.publisher.models import ApiToken, Outbox
from shared import events
from shared.db import outbox_row, utcnow

Role = Literal["admin", "staff", "coordinator"]
ROLES: tuple[Role, ...] = ("admin", "staff", "coordinator")
TOKEN_PREFIX = "uat_"

# Who may do what (contract §3): staff write, coordinators read, admin does both.
WRITE_ROLES: frozenset[str] = frozenset({"staff", "admin"})
READ_ROLES: frozenset[str] = frozenset({"coordinator", "admin"})


@dataclass(frozen=True)
class Principal:
    token_id: int
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
    return Principal(token_id=row.id, name=row.name, role=row.role)


# auto_error=False: a missing header must be our 401 with WWW-Authenticate, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise _unauthorized("a bearer token is required")
    token = credentials.credentials
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        raise _unauthorized("unknown or revoked token")
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
    async with sessionmaker() as session:
        principal = await principal_for_token(session, token)
    if principal is None:
        raise _unauthorized("unknown or revoked token")
    return principal


def require_role(allowed: frozenset[str]) -> Callable[..., Awaitable[Principal]]:
    async def dependency(principal: Annotated[Principal, Depends(authenticate)]) -> Principal:
        if principal.role not in allowed:
            raise HTTPException(
                status_code=status.HTTP_403_FORBIDDEN,
                detail=f"the {principal.role} role may not do this",
            )
        return principal

    return dependency


Writer = Annotated[Principal, Depends(require_role(WRITE_ROLES))]
Reader = Annotated[Principal, Depends(require_role(READ_ROLES))]
