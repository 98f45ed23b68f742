"""API tokens, learnt from the publisher's events (``subscriptions.tokens``), and the check of
``Authorization: Bearer`` on the admin endpoints.

Tokens are created only by the publisher (``uanet token create``); only their SHA-256 travels and
is stored here, as there.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.models import ApiToken, Outbox, ProcessedMessage
from services.subscriptions.web import ServiceState
from shared import events
from shared.access import Guard, forbidden, unauthorized
from shared.db import already_processed, outbox_row, utcnow
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
                expires_at=event.expires_at,
            )
        )
        return
    # Known already: a revocation that overtook it. The hash is recorded; it stays revoked.
    row.name = event.name[:200]
    row.role = event.role
    row.token_hash = event.token_hash.lower()
    row.issued_at = event.occurred_at
    row.expires_at = event.expires_at


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


async def caller_of(session: AsyncSession, token: str) -> Caller | None:
    """The live token's name and role, or None for an unknown, expired or revoked one."""
    row = (
        await session.execute(
            select(ApiToken).where(
                ApiToken.token_hash == hash_token(token),
                ApiToken.revoked_at.is_(None),
                or_(ApiToken.expires_at.is_(None), ApiToken.expires_at > utcnow()),
            )
        )
    ).scalar_one_or_none()
    if row is None:
        return None
    return Caller(
        token_id=row.token_id, name=row.name, role=row.role, last_used_at=row.last_used_at
    )


# auto_error=False: a missing header must be our 401 with WWW-Authenticate, not FastAPI's 403.
bearer = HTTPBearer(auto_error=False)


@dataclass(frozen=True)
class Caller:
    """A live token, as the publisher issued it."""

    token_id: uuid.UUID
    name: str
    role: str
    last_used_at: datetime | None = None


# A token's use is reported at most this often (a write and an event per request would cost
# more than the figure tells).
USE_REPORT_INTERVAL = timedelta(minutes=1)


async def report_use(state: ServiceState, caller: Caller) -> None:
    """Tell the publisher this token was used (``uanet token list`` shows it)."""
    now = utcnow()
    if caller.last_used_at is not None and now - caller.last_used_at < USE_REPORT_INTERVAL:
        return
    async with state.unit_of_work() as session:
        marked = await session.execute(
            update(ApiToken)
            .where(
                ApiToken.token_id == caller.token_id,
                or_(
                    ApiToken.last_used_at.is_(None),
                    ApiToken.last_used_at < now - USE_REPORT_INTERVAL,
                ),
            )
            .values(last_used_at=now)
        )
        # Another request of the same minute got there first: one report is enough.
        if marked.rowcount:  # type: ignore[attr-defined]
            session.add(
                outbox_row(Outbox, events.ApiTokenUsed(token_id=caller.token_id, used_at=now))
            )


class AdminGuard(Guard):
    """401 without a live token, 403 for a token of another role (run before anything else of
    the request is read: see ``shared.access``)."""

    async def presented(self, request: Request) -> str | None:
        """The token the request carries (``Authorization: Bearer``), if any."""
        credentials = await bearer(request)
        return credentials.credentials if credentials is not None else None

    async def check(self, request: Request) -> Caller:
        token = await self.presented(request)
        if not token:
            raise unauthorized("a bearer token is required")
        if len(token) > MAX_TOKEN_LENGTH:
            raise unauthorized("unknown, expired or revoked token")
        sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
        async with sessionmaker() as session:
            caller = await caller_of(session, token)
        if caller is None:
            raise unauthorized("unknown, expired or revoked token")
        await report_use(request.app.state.subscriptions, caller)
        if caller.role != ADMIN:
            raise forbidden("admin role required")
        return caller

    async def __call__(
        self,
        request: Request,
        # Declared for the OpenAPI document's security scheme; check() reads the header itself.
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> Caller:
        caller: Caller = await self.caller(request)
        return caller


ADMIN_GUARD = AdminGuard()
AdminDep = Annotated[Caller, Depends(ADMIN_GUARD)]
