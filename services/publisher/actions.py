"""The life of an urgent action: draft, edit, publish, follow up, close.

Functions here work inside the caller's transaction and never commit: the caller (a route) decides
where the unit of work ends. Every state change another service must hear of is written to the
outbox in that same transaction.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher import audit
from services.publisher.audit import Actor
from services.publisher.bounces import settle_bounces
from services.publisher.federation import hub as federation
from services.publisher.models import ActionTally, ActionUpdate, Outbox, UrgentAction
from services.publisher.schemas import (
    ActionClose,
    ActionUpdateCreate,
    TargetsReplace,
    UrgentActionCreate,
    UrgentActionRead,
)
from services.publisher.webhooks.record import record_event
from shared import events
from shared.db import outbox_row, utcnow

log = logging.getLogger(__name__)


class ActionNotFound(Exception):
    pass


class ActionConflict(Exception):
    """The action is not in a state that allows this (HTTP 409)."""


class InvalidField(Exception):
    """A request that is well formed but does not fit what is here (HTTP 422 naming ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class InvalidFollowUp(InvalidField):
    """A follow-up that does not fit its action."""


async def _check_sections(session: AsyncSession, codes: list[str] | None) -> None:
    """An action's ``sections`` name sections of this hub (`uanet sections list`)."""
    unknown = await federation.unknown_sections(session, codes or [])
    if unknown:
        raise InvalidField(
            "sections", f"no such section here: {', '.join(unknown)} (see uanet sections list)"
        )


def parse_action_id(raw: str) -> uuid.UUID:
    """A malformed id is as unknown as a missing one."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ActionNotFound(raw) from None


async def get_action(*, session: AsyncSession, action_id: uuid.UUID) -> UrgentAction:
    action = await session.get(UrgentAction, action_id)
    if action is None:
        raise ActionNotFound(str(action_id))
    return action


async def _lock_action(session: AsyncSession, action_id: uuid.UUID) -> UrgentAction:
    # FOR UPDATE on PostgreSQL: two staff publishing at once publish once. (SQLite ignores it;
    # there the Database write gate serializes.)
    action = (
        await session.execute(
            select(UrgentAction)
            .where(UrgentAction.id == action_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if action is None:
        raise ActionNotFound(str(action_id))
    return action


async def list_actions(
    *, session: AsyncSession, limit: int, offset: int, status: str | None = None
) -> tuple[list[UrgentAction], int]:
    """Newest first; returns the page and the total."""
    query = select(UrgentAction)
    count = select(func.count()).select_from(UrgentAction)
    if status is not None:
        query = query.where(UrgentAction.status == status)
        count = count.where(UrgentAction.status == status)
    query = query.order_by(
        UrgentAction.created_at.desc(), UrgentAction.year.desc(), UrgentAction.number.desc()
    )
    rows = (await session.execute(query.limit(limit).offset(offset))).scalars().all()
    total = int((await session.execute(count)).scalar_one())
    return list(rows), total


def _stored_fields(action_in: UrgentActionCreate) -> dict[str, Any]:
    data = action_in.model_dump(mode="json")
    data["deadline"] = action_in.deadline
    return data


async def create_action(
    *,
    session: AsyncSession,
    action_in: UrgentActionCreate,
    actor: Actor,
    now: datetime | None = None,
) -> UrgentAction:
    """A new draft with the next reference of the year.

    Two drafts created at once on PostgreSQL may pick the same number: the unique constraint
    refuses the second (IntegrityError at flush) and the caller retries in a new transaction.
    """
    await _check_sections(session, action_in.sections)
    now = now or utcnow()
    last = (
        await session.execute(
            select(func.max(UrgentAction.number)).where(UrgentAction.year == now.year)
        )
    ).scalar_one_or_none()
    action = UrgentAction(
        id=uuid.uuid4(),
        year=now.year,
        number=(last or 0) + 1,
        status="draft",
        created_at=now,
        updated_at=now,
        **_stored_fields(action_in),
    )
    session.add(action)
    await session.flush()  # the action before its tally row (no ORM relationship orders them)
    # Every action has its tally row from the start: counters are only ever added to.
    session.add(ActionTally(action_id=action.id, updated_at=now))
    await session.flush()
    audit.record_for_action(session, actor=actor, event=audit.ACTION_CREATED, action=action)
    return action


def _current_fields(action: UrgentAction) -> dict[str, Any]:
    return {
        "title": action.title,
        "country": action.country,
        "themes": action.themes,
        "urgency": action.urgency,
        "channels": action.channels,
        "deadline": action.deadline,
        "audience": action.audience,
        "targets": action.targets,
        "content": action.content,
        "default_language": action.default_language,
        "sections": action.sections,
    }


async def edit_draft(
    *, session: AsyncSession, action_id: uuid.UUID, changes: dict[str, Any], actor: Actor
) -> UrgentAction:
    """Apply a partial edit; the result is validated whole (pydantic's ValidationError if not)."""
    action = await _lock_action(session, action_id)
    if action.status != "draft":
        raise ActionConflict(f"{action.reference} is {action.status}; only a draft can be edited")
    merged = UrgentActionCreate.model_validate({**_current_fields(action), **changes})
    if "sections" in changes:  # a section removed since does not hold back other edits
        await _check_sections(session, merged.sections)
    changed = []
    for name, value in _stored_fields(merged).items():
        if getattr(action, name) != value:
            changed.append(name)
        setattr(action, name, value)
    action.updated_at = utcnow()
    # The names of the fields changed, not their text: the action itself holds that.
    audit.record_for_action(
        session, actor=actor, event=audit.ACTION_EDITED, action=action, details={"fields": changed}
    )
    return action


def _published_event(action: UrgentAction) -> events.ActionPublished:
    assert action.published_at is not None
    return events.ActionPublished(
        action_id=action.id,
        reference=action.reference,
        title=action.title,
        country=action.country,
        themes=action.themes,
        urgency=action.urgency,
        channels=action.channels,
        deadline=action.deadline,
        default_language=action.default_language,
        audience=events.Audience.model_validate(action.audience),
        targets=[events.Target.model_validate(t) for t in action.targets],
        content={
            lang: events.ActionContent.model_validate(text) for lang, text in action.content.items()
        },
        published_at=action.published_at,
    )


async def publish_action(
    *, session: AsyncSession, action_id: uuid.UUID, actor: Actor
) -> UrgentAction:
    """Publish a draft: ActionPublished goes out through the outbox and alerts follow."""
    action = await _lock_action(session, action_id)
    if action.status != "draft":
        raise ActionConflict(f"{action.reference} is already {action.status}")
    now = utcnow()
    action.status = "published"
    action.published_at = now
    action.updated_at = now
    session.add(outbox_row(Outbox, _published_event(action)))
    await record_event(
        session,
        "action.published",
        UrgentActionRead.model_validate(action).model_dump(mode="json"),
        occurred_at=now,
        sections=await federation.send_to_sections(session, action),
    )
    audit.record_for_action(session, actor=actor, event=audit.ACTION_PUBLISHED, action=action)
    return action


async def replace_targets(
    *, session: AsyncSession, action_id: uuid.UUID, targets: TargetsReplace, actor: Actor
) -> UrgentAction:
    """Set the action's targets. A draft just changes; a published action tells the services
    that send letters and show the action page (``ActionTargetsChanged``). Closed: 409.

    A bounced address no longer among the targets is marked fixed."""
    action = await _lock_action(session, action_id)
    if action.status == "closed":
        raise ActionConflict(f"{action.reference} is closed; its targets no longer change")
    now = utcnow()
    before = action.targets
    action.targets = [t.model_dump(mode="json") for t in targets.targets]
    action.updated_at = now
    fixed = await settle_bounces(
        session=session, action_id=action.id, before=before, after=action.targets, now=now
    )
    if action.status == "published":
        session.add(
            outbox_row(
                Outbox,
                events.ActionTargetsChanged(
                    action_id=action.id,
                    reference=action.reference,
                    targets=[events.Target.model_validate(t) for t in action.targets],
                ),
            )
        )
    audit.record_for_action(
        session,
        actor=actor,
        event=audit.ACTION_TARGETS_CHANGED,
        action=action,
        details={
            "status": action.status,
            "targets": len(action.targets),
            "bounces_fixed": fixed,
            # Officials' names and addresses are public and the point of the change.
            "before": [_target_line(t) for t in before],
            "after": [_target_line(t) for t in action.targets],
        },
    )
    # Ids and counts only: the addresses stay out of the logs.
    log.info(
        "action targets replaced",
        extra={
            "action_id": str(action.id),
            "reference": action.reference,
            "status": action.status,
            "targets": len(action.targets),
            "bounces_fixed": fixed,
        },
    )
    return action


def _target_line(target: dict[str, Any]) -> str:
    email = target.get("email")
    return f"{target.get('name', '')} <{email}>" if email else str(target.get("name", ""))


def _check_follow_up_content(action: UrgentAction, content: dict[str, Any] | None) -> None:
    if content is None:
        return
    if action.default_language not in content:
        raise InvalidFollowUp(
            "content", f"must include the action's default language ({action.default_language})"
        )
    if "sms" in action.channels:
        missing = sorted(lang for lang, text in content.items() if not text.sms)
        if missing:
            raise InvalidFollowUp(
                "content", f"sms text required: the action goes by SMS ({', '.join(missing)})"
            )


async def add_follow_up(
    *, session: AsyncSession, action_id: uuid.UUID, update_in: ActionUpdateCreate, actor: Actor
) -> ActionUpdate:
    """A follow-up for those who received the action (only once it is published)."""
    action = await _lock_action(session, action_id)
    if action.status != "published":
        raise ActionConflict(f"{action.reference} is {action.status}; follow-ups need it published")
    _check_follow_up_content(action, update_in.content)
    now = utcnow()
    update = ActionUpdate(
        id=uuid.uuid4(),
        action_id=action.id,
        kind=update_in.kind,
        outcome=update_in.outcome,
        content={lang: text.model_dump() for lang, text in update_in.content.items()},
        created_at=now,
    )
    session.add(update)
    if update_in.outcome is not None:
        action.outcome = update_in.outcome
    action.updated_at = now
    session.add(
        outbox_row(
            Outbox,
            events.ActionUpdated(
                action_id=action.id,
                update_id=update.id,
                reference=action.reference,
                kind=update_in.kind,
                outcome=update_in.outcome,
                content={
                    lang: events.UpdateContent.model_validate(text.model_dump())
                    for lang, text in update_in.content.items()
                },
                default_language=action.default_language,
            ),
        )
    )
    await session.flush()
    await record_event(
        session,
        "action.updated",
        {
            "action_id": str(action.id),
            "reference": action.reference,
            "kind": update_in.kind,
            "outcome": update_in.outcome,
            "content": update.content,
        },
        occurred_at=now,
        sections=await federation.sent_to(session, action.id),
    )
    details: dict[str, Any] = {"kind": update_in.kind, "update_id": str(update.id)}
    if update_in.outcome is not None:
        details["outcome"] = update_in.outcome
    audit.record_for_action(
        session, actor=actor, event=audit.ACTION_FOLLOW_UP, action=action, details=details
    )
    return update


async def close_action(
    *, session: AsyncSession, action_id: uuid.UUID, close_in: ActionClose, actor: Actor
) -> UrgentAction:
    """Close with an outcome; alerts not yet out are cancelled by the services that send them."""
    action = await _lock_action(session, action_id)
    if action.status != "published":
        raise ActionConflict(f"{action.reference} is {action.status}; only a published one closes")
    _check_follow_up_content(action, close_in.content)
    now = utcnow()
    content = (
        {lang: text.model_dump() for lang, text in close_in.content.items()}
        if close_in.content is not None
        else None
    )
    # The closing message is recorded like a follow-up: its id keys the deliveries it causes.
    closing = ActionUpdate(
        id=uuid.uuid4(),
        action_id=action.id,
        kind="closed",
        outcome=close_in.outcome,
        content=content,
        created_at=now,
    )
    session.add(closing)
    action.status = "closed"
    action.outcome = close_in.outcome
    action.closed_at = now
    action.updated_at = now
    session.add(
        outbox_row(
            Outbox,
            events.ActionClosed(
                action_id=action.id,
                update_id=closing.id,
                reference=action.reference,
                outcome=close_in.outcome,
                content=(
                    {
                        lang: events.UpdateContent.model_validate(text)
                        for lang, text in content.items()
                    }
                    if content is not None
                    else None
                ),
                default_language=action.default_language,
            ),
        )
    )
    await record_event(
        session,
        "action.closed",
        {
            "action_id": str(action.id),
            "reference": action.reference,
            "outcome": close_in.outcome,
            # With closing text, sections send it to their recipients like a follow-up (§9).
            **({"content": content} if content is not None else {}),
        },
        occurred_at=now,
        sections=await federation.sent_to(session, action.id),
    )
    audit.record_for_action(
        session,
        actor=actor,
        event=audit.ACTION_CLOSED,
        action=action,
        details={"outcome": close_in.outcome, "message_sent": content is not None},
    )
    return action
