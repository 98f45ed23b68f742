"""The audit log: every change staff make, who made it, to what and when (contract §7).

An entry is written in the same transaction as the change it records, so there is no change
without its entry and no entry for a change that rolled back. Entries are never changed or
removed (the database refuses it too; see migration 0005). Subscriber erasures happen in the
subscriptions service, which reports them (``SubscriberErased``, queue ``publisher.audit``).

Entries name people and tokens, never a token's secret, and of subscribers only their id.
"""

from __future__ import annotations

import getpass
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.database import Database
from services.publisher.models import ApiToken, AuditEntry, ProcessedMessage, UrgentAction
from shared import events
from shared.db import already_processed, utcnow
from shared.messaging import Delivery, Reject

log = logging.getLogger(__name__)

AUDIT_QUEUE = "publisher.audit"

# "hub": the international office, acting on a section through federation (contract §9).
ActorKind = Literal["token", "account", "cli", "hub"]

# What staff can do, as the log names it.
ACTION_CREATED = "action.created"
ACTION_EDITED = "action.edited"
ACTION_PUBLISHED = "action.published"
ACTION_FOLLOW_UP = "action.follow_up"
ACTION_CLOSED = "action.closed"
ACTION_TARGETS_CHANGED = "action.targets_changed"
TOKEN_CREATED = "token.created"
TOKEN_REVOKED = "token.revoked"
ACCOUNT_CREATED = "account.created"
ACCOUNT_DISABLED = "account.disabled"
SUBSCRIBER_ERASED = "subscriber.erased"
WEBHOOK_ADDED = "webhook.added"
WEBHOOK_REMOVED = "webhook.removed"
WEBHOOK_REPLAYED = "webhook.replayed"
SECTION_ADDED = "section.added"
SECTION_REMOVED = "section.removed"
HUB_ACTION_RECEIVED = "hub_action.received"
HUB_ACTION_DECLINED = "hub_action.declined"
HUB_ACTION_AUTO_PUBLISHED = "hub_action.auto_published"
HUB_ACTION_REFUSED = "hub_action.refused"
EVENTS: tuple[str, ...] = (
    ACTION_CREATED,
    ACTION_EDITED,
    ACTION_PUBLISHED,
    ACTION_FOLLOW_UP,
    ACTION_CLOSED,
    ACTION_TARGETS_CHANGED,
    TOKEN_CREATED,
    TOKEN_REVOKED,
    ACCOUNT_CREATED,
    ACCOUNT_DISABLED,
    SUBSCRIBER_ERASED,
    WEBHOOK_ADDED,
    WEBHOOK_REMOVED,
    WEBHOOK_REPLAYED,
    SECTION_ADDED,
    SECTION_REMOVED,
    HUB_ACTION_RECEIVED,
    HUB_ACTION_DECLINED,
    HUB_ACTION_AUTO_PUBLISHED,
    HUB_ACTION_REFUSED,
)


@dataclass(frozen=True)
class Actor:
    """Who made a change: an API token (its name), a console account (its email), or an
    operator at the command line (their login on the host)."""

    kind: ActorKind
    name: str

    @classmethod
    def command_line(cls) -> Actor:
        try:
            login = getpass.getuser()
        except (KeyError, OSError):  # no login name in a bare container
            login = "unknown"
        return cls("cli", login)

    @property
    def label(self) -> str:
        prefix = {"token": "token ", "account": "", "cli": "command line, ", "hub": ""}
        return prefix[self.kind] + self.name


def record(
    session: AsyncSession,
    *,
    actor: Actor,
    event: str,
    subject: str,
    action_id: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditEntry:
    """Add an entry to the caller's transaction."""
    entry = AuditEntry(
        at=at or utcnow(),
        actor_kind=actor.kind,
        actor=actor.name[:320],
        event=event,
        action_id=action_id,
        subject=subject[:500],
        details=details or {},
    )
    session.add(entry)
    return entry


def record_for_action(
    session: AsyncSession,
    *,
    actor: Actor,
    event: str,
    action: UrgentAction,
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    return record(
        session,
        actor=actor,
        event=event,
        subject=f"{action.reference}: {action.title}",
        action_id=action.id,
        details=details,
    )


async def list_entries(
    *,
    session: AsyncSession,
    limit: int,
    offset: int,
    action_id: uuid.UUID | None = None,
    event: str | None = None,
) -> tuple[list[AuditEntry], int]:
    """Newest first; returns the page and the total."""
    query = select(AuditEntry)
    count = select(func.count()).select_from(AuditEntry)
    if action_id is not None:
        query = query.where(AuditEntry.action_id == action_id)
        count = count.where(AuditEntry.action_id == action_id)
    if event is not None:
        query = query.where(AuditEntry.event == event)
        count = count.where(AuditEntry.event == event)
    query = query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    rows = (await session.execute(query.limit(limit).offset(offset))).scalars().all()
    total = int((await session.execute(count)).scalar_one())
    return list(rows), total


class AuditConsumer:
    """The handler of ``publisher.audit``: what staff did in another service (erasures, for the
    log; a token's use, for ``uanet token list``)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def __call__(self, event: events.Message, delivery: Delivery | None = None) -> None:
        if isinstance(event, events.ApiTokenUsed):
            await self._token_used(event)
            return
        if not isinstance(event, events.SubscriberErased):
            raise Reject(f"{AUDIT_QUEUE} does not take {type(event).__name__}")
        async with self.database.write() as session:
            if await already_processed(session, ProcessedMessage, event.message_id):
                return
            # Only the subscriber's id: their data is gone, and must not come back here.
            record(
                session,
                actor=Actor("token", event.erased_by or "unknown"),
                event=SUBSCRIBER_ERASED,
                subject=f"subscriber {event.subscriber_id}",
                at=event.occurred_at,
            )
        log.info("subscriber erasure audited")

    async def _token_used(self, event: events.ApiTokenUsed) -> None:
        # Other services know a token by an id made of its hash's first half (auth.py).
        prefix = event.token_id.hex
        async with self.database.write() as session:
            await session.execute(
                update(ApiToken)
                .where(
                    ApiToken.token_hash.startswith(prefix, autoescape=True),
                    or_(ApiToken.last_used_at.is_(None), ApiToken.last_used_at < event.used_at),
                )
                .values(last_used_at=event.used_at)
            )
