"""API tokens, learnt from the publisher's events (``subscriptions.tokens``), and the check of
``Authorization: Bearer`` on the admin endpoints.

Tokens are created only by the publisher (``uanet token create``); only their SHA-256 travels and
is stored here, as there.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.models import ApiToken, ProcessedMessage
from shared import events
from shared.db import already_processed
from shared.messaging import Delivery, Handler, Reject

log = logging.getLogger(__name__)

ADMIN = "admin"
# Longer than any token the publisher makes: refused before hashing.
MAX_TOKEN_LENGTH = 200


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def token_issued(session: AsyncSession, event: events.ApiTokenIssued) -> None:
    row = await session.get(ApiToken, event.token_id)
    if row is None:
        session.add(
            ApiToken(
                token_id=event.token_id,
                name=event.name[:200],
                role=event.role,
                token_hash=event.token_hash.lower(),
                issued_at=event.occurred_at,
            )
        )
        return
    # Known already: a revocation that overtook it. The hash is recorded; it stays revoked.
    row.name = event.name[:200]
    row.role = event.role
    row.token_hash = event.token_hash.lower()
    row.issued_at = event.occurred_at


async def token_revoked(session: AsyncSession, event: events.ApiTokenRevoked) -> None:
    row = await session.get(ApiToken, event.token_id)
    if row is None:
        session.add(ApiToken(token_id=event.token_id, revoked_at=event.occurred_at))
    elif row.revoked_at is None:
        row.revoked_at = event.occurred_at


def make_token_handler(sessionmaker: async_sessionmaker[AsyncSession]) -> Handler:
    async def on_token_event(message: events.Message, delivery: Delivery) -> None:
        if isinstance(message, events.ApiTokenIssued):
            if len(message.token_hash) != 64 or not _is_hex(message.token_hash):
                raise Reject("token_hash is not a hex SHA-256")
        elif not isinstance(message, events.ApiTokenRevoked):
            raise Reject(f"unexpected {type(message).__name__} on {delivery.queue}")
        async with sessionmaker() as session, session.begin():
            if await already_processed(session, ProcessedMessage, message.message_id):
                return
            if isinstance(message, events.ApiTokenIssued):
                await token_issued(session, message)
            else:
                await token_revoked(session, message)
        log.info("api token event", extra={"kind": type(message).__name__})

    return on_token_event


def _is_hex(value: str) -> bool:
    try:
        int(value, 16)
    except ValueError:
        return False
    return True


async def role_of(session: AsyncSession, token: str) -> str | None:
    """The role of a live token, or None for an unknown or revoked one."""
    row = (
        await session.execute(
            select(ApiToken).where(
                ApiToken.token_hash == hash_token(token), ApiToken.revoked_at.is_(None)
            )
        )
    ).scalar_one_or_none()
    return row.role if row is not None else None


# auto_error=False: a missing header must be our 401 with WWW-Authenticate, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": "Bearer"},
    )


async def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """401 without a live token, 403 for a token of another role; returns the role."""
    if credentials is None or not credentials.credentials:
        raise _unauthorized("a bearer token is required")
    token = credentials.credentials
    if len(token) > MAX_TOKEN_LENGTH:
        raise _unauthorized("unknown or revoked token")
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
    async with sessionmaker() as session:
        role = await role_of(session, token)
    if role is None:
        raise _unauthorized("unknown or revoked token")
    if role != ADMIN:
        raise HTTPException(status_code=status.HTTP_403_FORBIDDEN, detail="admin role required")
    return role


AdminDep = Annotated[str, Depends(require_admin)]
