"""A section's side: what arrives from the hub (an action as a draft, its follow-ups, its close),
staff declining a hub action or sending a follow-up that waited, and the counts reported back.

The inbox is idempotent (each call's ``webhook-id`` is handled once; an action is taken once by
its hub id), so the hub's retries change nothing twice. The hub's calls are not ordered (a
publish tried again can come after its close): a follow-up or close of an action not here yet
is refused with nothing changed, and the hub's deliverer sends it again until it fits.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from datetime import timedelta
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher import actions as domain
from services.publisher import audit
from services.publisher.audit import Actor
from services.publisher.database import Database
from services.publisher.federation.wire import COUNTS_PATH, COUNTS_TYPE, CountsReport
from services.publisher.models import ProcessedMessage, UrgentAction
from services.publisher.schemas import (
    ActionClose,
    ActionUpdateCreate,
    UrgentActionCreate,
)
from services.publisher.tally import read_stats
from services.publisher.webhooks.models import ACTIVE, HUB_COUNTS, WebhookEndpoint
from services.publisher.webhooks.record import record_event
from shared.db import already_processed, utcnow
from shared.sealing import seal
from shared.settings import Settings

log = logging.getLogger(__name__)

HUB = Actor("hub", "international office")
AutoPublish = Literal["none", "urgent", "all"]
REPORT_EVERY = 2.0
KEEP_REPORTING = timedelta(days=7)


class NotReceivedYet(Exception):
    """A follow-up or close of a hub action this section has not received: the hub's calls to
    one section are not ordered, so the action may still be on its way (409, tried again)."""


# Marks (as processed messages) the hub actions this section could not take, so their
# follow-ups and close are not asked for again and again.
_REFUSED = uuid.UUID("6f0c1f8e-2d55-4b8e-9a53-5d1e0c3a9b71")


def _refused_mark(hub_action_id: uuid.UUID) -> str:
    return str(uuid.uuid5(_REFUSED, str(hub_action_id)))


def _hub_action_id(data: dict[str, Any]) -> uuid.UUID:
    return uuid.UUID(str(data.get("action_id") or data.get("id")))


def _covered(auto: AutoPublish, urgency: str) -> bool:
    return auto == "all" or (auto == "urgent" and urgency == "urgent")


async def _by_origin(session: AsyncSession, hub_action_id: uuid.UUID) -> UrgentAction | None:
    query = (
        select(UrgentAction)
        .where(UrgentAction.origin_action_id == hub_action_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def take_from_hub(
    session: AsyncSession,
    *,
    webhook_id: str,
    event_type: str,
    data: dict[str, Any],
    hub_url: str,
    auto: AutoPublish,
) -> str:
    """Apply one call from the hub; returns what was done (for the log, not the hub)."""
    if await already_processed(session, ProcessedMessage, webhook_id):
        return "already taken"
    hub_action_id = _hub_action_id(data)
    local = await _by_origin(session, hub_action_id)
    if event_type == "action.published":
        if local is not None:
            return "already received"
        return await _receive(session, data, hub_url=hub_url, auto=auto)
    if local is None:
        if await session.get(ProcessedMessage, _refused_mark(hub_action_id)) is not None:
            return "of an action that could not be taken"
        # The hub sends follow-ups and closes only to sections it sent the action to: it is
        # on its way. Refused (and this transaction undone) so the hub sends it again.
        raise NotReceivedYet(str(hub_action_id))
    if event_type == "action.updated":
        return await _follow_up(session, local, data, auto=auto)
    if event_type == "action.closed":
        return await _close(session, local, data)
    return "ignored"


async def _receive(
    session: AsyncSession, data: dict[str, Any], *, hub_url: str, auto: AutoPublish
) -> str:
    # As the hub wrote it, for every member (audience empty): staff adapt it here.
    action_in = UrgentActionCreate.model_validate(
        {
            "title": data["title"],
            "country": data["country"],
            "themes": data.get("themes") or [],
            "urgency": data["urgency"],
            "channels": data["channels"],
            "deadline": data.get("deadline"),
            "targets": data["targets"],
            "content": data["content"],
            "default_language": data["default_language"],
        }
    )
    action = await domain.create_action(session=session, action_in=action_in, actor=HUB)
    action.origin = {"hub": hub_url, "action_id": str(data["id"]), "reference": data["reference"]}
    action.origin_action_id = uuid.UUID(str(data["id"]))
    audit.record_for_action(
        session,
        actor=HUB,
        event=audit.HUB_ACTION_RECEIVED,
        action=action,
        details={"hub_reference": data["reference"]},
    )
    if _covered(auto, action.urgency):
        await session.flush()
        await domain.publish_action(session=session, action_id=action.id, actor=HUB)
        audit.record_for_action(
            session, actor=HUB, event=audit.HUB_ACTION_AUTO_PUBLISHED, action=action
        )
        return "published on arrival"
    return "draft"


async def _follow_up(
    session: AsyncSession, local: UrgentAction, data: dict[str, Any], *, auto: AutoPublish
) -> str:
    if local.status not in ("draft", "published"):
        return f"ignored: {local.status}"
    pending = {
        "id": str(uuid.uuid4()),
        "kind": data.get("kind") or "further_information",
        "outcome": data.get("outcome"),
        "content": data.get("content") or {},
        "received_at": utcnow().isoformat(),
    }
    if local.status == "published" and _covered(auto, local.urgency):
        try:
            await _send(session, local, pending, HUB)
            return "sent on arrival"
        except (domain.InvalidFollowUp, ValidationError) as exc:
            log.warning("a hub follow-up waits for staff: %s", type(exc).__name__)
    local.pending_updates = [*(local.pending_updates or []), pending]
    local.updated_at = utcnow()
    return "waiting for staff"


async def _send(
    session: AsyncSession, local: UrgentAction, pending: dict[str, Any], actor: Actor
) -> None:
    update_in = ActionUpdateCreate.model_validate(
        {"kind": pending["kind"], "outcome": pending.get("outcome"), "content": pending["content"]}
    )
    async with session.begin_nested():
        await domain.add_follow_up(
            session=session, action_id=local.id, update_in=update_in, actor=actor
        )


async def send_pending(
    session: AsyncSession,
    *,
    action_id: uuid.UUID,
    pending_id: str,
    content: dict[str, Any] | None,
    actor: Actor,
) -> UrgentAction:
    """Staff send a hub follow-up that waited (``content``: their edit, or the hub's text)."""
    local = await session.get(UrgentAction, action_id, with_for_update=True)
    if local is None:
        raise domain.ActionNotFound(str(action_id))
    waiting = list(local.pending_updates or [])
    found = next((p for p in waiting if p["id"] == pending_id), None)
    if found is None:
        raise domain.ActionNotFound(pending_id)
    if local.status != "published":
        raise domain.ActionConflict(f"{local.reference} is {local.status}; publish it first")
    await _send(session, local, {**found, "content": content or found["content"]}, actor)
    local.pending_updates = [p for p in waiting if p["id"] != pending_id]
    return local


async def _close(session: AsyncSession, local: UrgentAction, data: dict[str, Any]) -> str:
    outcome = data.get("outcome") or "other"
    if local.status == "published":
        content = data.get("content")
        try:
            close_in = ActionClose.model_validate({"outcome": outcome, "content": content})
            async with session.begin_nested():
                await domain.close_action(
                    session=session, action_id=local.id, close_in=close_in, actor=HUB
                )
        except (domain.InvalidFollowUp, ValidationError):
            # Its text does not fit this section's action: closed all the same, quietly.
            close_in = ActionClose.model_validate({"outcome": outcome})
            await domain.close_action(
                session=session, action_id=local.id, close_in=close_in, actor=HUB
            )
        local.pending_updates = []
        return "closed"
    if local.status == "draft":
        now = utcnow()
        local.status, local.outcome, local.closed_at, local.updated_at = "closed", outcome, now, now
        local.pending_updates = []
        audit.record_for_action(session, actor=HUB, event=audit.ACTION_CLOSED, action=local)
        return "closed before it went out"
    return f"ignored: {local.status}"


async def refuse(
    session: AsyncSession, *, webhook_id: str, event_type: str, data: dict[str, Any], why: str
) -> None:
    """A signed hub event that can never be taken here (its action does not validate): taken
    as handled, so the hub does not send it for ever, and left in the audit log for staff
    (the hub then sees this section never report on it)."""
    if await already_processed(session, ProcessedMessage, webhook_id):
        return
    try:
        hub_action_id = _hub_action_id(data)
    except ValueError:
        hub_action_id = None
    if hub_action_id is not None and event_type == "action.published":
        await already_processed(session, ProcessedMessage, _refused_mark(hub_action_id))
    audit.record(
        session,
        actor=HUB,
        event=audit.HUB_ACTION_REFUSED,
        subject=f"{event_type} {data.get('reference') or hub_action_id}: could not be taken",
        details={"hub_action_id": str(hub_action_id), "why": why},
    )


async def decline(session: AsyncSession, *, action_id: uuid.UUID, actor: Actor) -> UrgentAction:
    """Staff decide this section will not send a hub action."""
    local = await session.get(UrgentAction, action_id, with_for_update=True)
    if local is None:
        raise domain.ActionNotFound(str(action_id))
    if local.origin is None or local.status != "draft":
        raise domain.ActionConflict(
            f"{local.reference} is {local.status}; only a draft from the hub can be declined"
        )
    local.status = "declined"
    local.updated_at = utcnow()
    audit.record_for_action(session, actor=actor, event=audit.HUB_ACTION_DECLINED, action=local)
    return local


# ---- counts, reported up --------------------------------------------------------------------


async def ensure_hub_endpoint(database: Database, settings: Settings, sealing_key: str) -> None:
    """The hub's counts as an endpoint of the deliverer (kind ``hub``), as the settings say."""
    hub_url, code, key = settings.require_section()
    url = hub_url + COUNTS_PATH
    async with database.write() as session:
        found = (
            (
                await session.execute(
                    select(WebhookEndpoint).where(WebhookEndpoint.kind == HUB_COUNTS)
                )
            )
            .scalars()
            .all()
        )
        endpoint = found[0] if found else None
        for extra in found[1:]:
            await session.delete(extra)
        if endpoint is None:
            endpoint = WebhookEndpoint(id=uuid.uuid4(), kind=HUB_COUNTS, failures_in_a_row=0)
            session.add(endpoint)
        endpoint.url = url
        endpoint.section_code = code
        endpoint.events = [COUNTS_TYPE]
        endpoint.description = "the hub's counts"
        endpoint.secret_sealed = seal(sealing_key, key)
        endpoint.state = ACTIVE
        endpoint.created_at = endpoint.created_at or utcnow()


_STATUS = {"draft": "received", "published": "published", "declined": "declined"}


class CountsReporter:
    """Every few seconds, each hub action whose status or counts changed is reported to the hub
    (the newest snapshot replaces one still waiting): within 15 s of a change."""

    def __init__(self, database: Database, notify: Any) -> None:
        self.database = database
        self.notify = notify
        self._sent: dict[uuid.UUID, tuple[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="federation-counts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                if await self.report_once():
                    self.notify()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database away: the next pass reports
                log.warning("reporting counts to the hub failed; retrying", exc_info=True)
            await asyncio.sleep(REPORT_EVERY)

    async def report_once(self) -> int:
        async with self.database.read() as session:
            rows = (
                await session.execute(
                    select(UrgentAction.id, UrgentAction.status, UrgentAction.updated_at)
                    .where(UrgentAction.origin_action_id.is_not(None))
                    # Late receipts and responses still count a week after the close.
                    .where(
                        or_(
                            UrgentAction.status.in_(("draft", "published")),
                            UrgentAction.updated_at >= utcnow() - KEEP_REPORTING,
                        )
                    )
                )
            ).all()
        reported = 0
        for action_id, status, updated_at in rows:
            async with self.database.read() as session:
                stats = await read_stats(session=session, action_id=action_id)
            mark = (status, (updated_at, stats.updated_at))
            if self._sent.get(action_id) == mark:
                continue
            async with self.database.write() as session:
                local = await session.get(UrgentAction, action_id)
                if local is None or local.origin_action_id is None:
                    continue
                report = CountsReport(
                    action_id=local.origin_action_id,
                    status=_STATUS.get(local.status, "closed"),
                    reference=local.reference,
                    version=time.time_ns() // 1000,
                    updated_at=utcnow(),
                    published_at=local.published_at,
                    recipients=stats.recipients,
                    deliveries={c: d.model_dump() for c, d in stats.deliveries.items()},
                    responses=stats.responses.model_dump(),
                    by_country={c: n.model_dump() for c, n in stats.by_country.items()},
                )
                await record_event(
                    session,
                    COUNTS_TYPE,
                    report.model_dump(mode="json"),
                    topic=f"counts:{local.origin_action_id}",
                )
            self._sent[action_id] = mark
            reported += 1
        return reported
