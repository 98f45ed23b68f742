"""The hub's side: its sections (``uanet sections add|list|remove``), the counts they report
(newest wins, never summed twice) and the network's stats (the hub's own plus every section's).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher import audit
from services.publisher.audit import Actor
from services.publisher.federation.models import Section, SectionCounts
from services.publisher.federation.wire import (
    ACTION_TYPES,
    INBOX_PATH,
    SECTION_CODE,
    CountsReport,
)
from services.publisher.models import UrgentAction
from services.publisher.schemas import (
    ActionStats,
    ChannelDeliveries,
    CountryCounts,
    NetworkStats,
    ResponseCounts,
    SectionStats,
)
from services.publisher.webhooks.models import (
    ACTIVE,
    PENDING,
    SECTION_INBOX,
    WebhookDelivery,
    WebhookEndpoint,
)
from services.publisher.webhooks.registry import check_endpoint_url
from services.publisher.webhooks.standard import new_secret
from shared.db import insert_or_ignore, utcnow
from shared.sealing import seal

CHANNELS = ("email", "sms")
KINDS = ("letter", "email", "call", "sms_reply", "other")
# A section's row for an action sent to it that it has not reported on yet.
SENT = "sent"


class SectionError(ValueError):
    """A section that cannot be added or removed; ``str()`` says why."""


@dataclass(frozen=True)
class SectionRow:
    code: str
    name: str
    url: str
    last_heard_at: datetime | None
    waiting: int


def _code(raw: str) -> str:
    code = raw.strip().upper()
    if not SECTION_CODE.match(code):
        raise SectionError("CODE: letters and digits only, at most 16 (e.g. UK)")
    return code


async def add_section(
    session: AsyncSession, *, code: str, name: str, url: str, secret_key: str, actor: Actor
) -> tuple[Section, str]:
    """A section and the key it signs with (printed once); its inbox becomes an endpoint that
    takes the hub's actions, follow-ups and closes."""
    code = _code(code)
    if not name.strip():
        raise SectionError("--name: must not be empty")
    try:
        base = check_endpoint_url(url).rstrip("/")
    except ValueError as exc:
        raise SectionError(f"--url: {exc}") from None
    existing = await session.get(Section, code)
    if existing is not None and existing.removed_at is None:
        raise SectionError(f"section {code} exists already (uanet sections remove {code} first)")
    key = new_secret()
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        kind=SECTION_INBOX,
        section_code=code,
        url=base + INBOX_PATH,
        description=f"section {code}: {name.strip()}",
        events=list(ACTION_TYPES),
        secret_sealed=seal(secret_key, key),
        state=ACTIVE,
        created_at=utcnow(),
        failures_in_a_row=0,
    )
    session.add(endpoint)
    if existing is not None:  # added again after a removal: a new key, a new inbox
        await session.delete(existing)
        await session.flush()
    section = Section(
        code=code,
        name=name.strip()[:200],
        url=base,
        key_sealed=seal(secret_key, key),
        created_at=utcnow(),
        endpoint_id=endpoint.id,
    )
    session.add(section)
    audit.record(
        session,
        actor=actor,
        event=audit.SECTION_ADDED,
        subject=f"section {code} ({section.name}) {base}",
    )
    return section, key


async def remove_section(session: AsyncSession, *, code: str, actor: Actor) -> None:
    """Nothing more goes to it or is taken from it (its counts so far stay)."""
    section = await session.get(Section, _code(code))
    if section is None or section.removed_at is not None:
        raise SectionError(f"no section {code.upper()} (see `uanet sections list`)")
    section.removed_at = utcnow()
    # What it never confirmed having is no longer waited for (nor followed up, if re-added).
    await session.execute(
        delete(SectionCounts)
        .where(SectionCounts.section_code == section.code, SectionCounts.status == SENT)
        .execution_options(synchronize_session=False)
    )
    if section.endpoint_id is not None:
        endpoint = await session.get(WebhookEndpoint, section.endpoint_id)
        if endpoint is not None:
            await session.delete(endpoint)  # its waiting deliveries go with it
    audit.record(
        session, actor=actor, event=audit.SECTION_REMOVED, subject=f"section {section.code}"
    )


async def list_sections(session: AsyncSession) -> list[SectionRow]:
    sections = (
        (
            await session.execute(
                select(Section).where(Section.removed_at.is_(None)).order_by(Section.code)
            )
        )
        .scalars()
        .all()
    )
    rows = []
    for s in sections:
        waiting = (
            await session.execute(
                select(func.count())
                .select_from(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == s.endpoint_id)
                .where(WebhookDelivery.state == PENDING)
            )
        ).scalar_one()
        rows.append(SectionRow(s.code, s.name, s.url, s.last_heard_at, int(waiting)))
    return rows


async def live_section(session: AsyncSession, code: str) -> Section | None:
    section = await session.get(Section, code.strip().upper()) if code else None
    return section if section is not None and section.removed_at is None else None


async def send_to_sections(session: AsyncSession, action: UrgentAction) -> list[str]:
    """At publish: the live sections the action goes to (all, or those of its ``sections``),
    each remembered with a row (``sent``) so its follow-ups and close go to them alone."""
    query = select(Section.code).where(Section.removed_at.is_(None))
    if action.sections:
        query = query.where(Section.code.in_(action.sections))
    codes = list((await session.execute(query.order_by(Section.code))).scalars())
    now = utcnow()
    # One statement; a section's row that exists already (a report came first) is kept.
    await insert_or_ignore(
        session,
        SectionCounts,
        [
            {
                "section_code": code,
                "action_id": action.id,
                "status": SENT,
                "counts": {},
                "version": 0,
                "updated_at": now,
                "sent_at": now,
            }
            for code in codes
        ],
    )
    return codes


async def unknown_sections(session: AsyncSession, codes: list[str]) -> list[str]:
    """Those of ``codes`` that name no live section of this hub."""
    if not codes:
        return []
    query = select(Section.code).where(Section.code.in_(codes), Section.removed_at.is_(None))
    live = set((await session.execute(query)).scalars())
    return [code for code in codes if code not in live]


async def sent_to(
    session: AsyncSession, action_id: uuid.UUID, *, removed_too: bool = False
) -> list[str]:
    """The sections the action went to (or that reported on it). Live ones only by default:
    its follow-ups and close go to these (a section added later never got it, and would be
    asked for something it cannot place). ``removed_too`` for the console's table, where a
    removed section's counts stay: a line each, waiting until it reports."""
    query = select(SectionCounts.section_code).where(SectionCounts.action_id == action_id)
    if not removed_too:
        query = query.join(Section, Section.code == SectionCounts.section_code).where(
            Section.removed_at.is_(None)
        )
    return list((await session.execute(query.order_by(SectionCounts.section_code))).scalars())


async def take_counts(session: AsyncSession, section: Section, report: CountsReport) -> bool:
    """Keep the report if it is newer than what the section said before; True if kept."""
    section.last_heard_at = utcnow()
    if await session.get(UrgentAction, report.action_id) is None:
        return False  # not one of ours: nothing to count it against
    counts = {
        "recipients": report.recipients,
        "deliveries": {c: d.model_dump() for c, d in report.deliveries.items()},
        "responses": report.responses.model_dump(),
        "by_country": {c: n.model_dump() for c, n in report.by_country.items()},
    }
    row = await session.get(SectionCounts, (section.code, report.action_id), with_for_update=True)
    if row is not None and row.version >= report.version:
        return False  # a retry or a late one: the newer stays
    if row is None:
        row = SectionCounts(section_code=section.code, action_id=report.action_id)
        session.add(row)
    row.status = report.status
    row.reference = report.reference
    row.counts = counts
    row.version = report.version
    row.updated_at = report.updated_at
    row.published_at = report.published_at
    return True


def _section_stats(row: SectionCounts) -> SectionStats:
    counts = row.counts
    return SectionStats(
        status=row.status,
        reference=row.reference,
        updated_at=row.updated_at,
        published_at=row.published_at,
        recipients={c: int(counts.get("recipients", {}).get(c, 0)) for c in CHANNELS},
        deliveries={
            c: ChannelDeliveries(
                **{
                    "sent": 0,
                    "delivered": 0,
                    "failed": 0,
                    **counts.get("deliveries", {}).get(c, {}),
                }
            )
            for c in CHANNELS
        },
        responses=ResponseCounts(
            people=int(counts.get("responses", {}).get("people", 0)),
            actions=int(counts.get("responses", {}).get("actions", 0)),
            by_kind={
                k: int(counts.get("responses", {}).get("by_kind", {}).get(k, 0)) for k in KINDS
            },
        ),
        by_country={
            country: CountryCounts(**n) for country, n in counts.get("by_country", {}).items()
        },
    )


async def network_of(
    session: AsyncSession, stats: ActionStats
) -> tuple[dict[str, SectionStats], NetworkStats]:
    """Each section's newest counts of the action, and the whole network's (ours + theirs)."""
    rows = (
        (
            await session.execute(
                select(SectionCounts)
                .where(SectionCounts.action_id == stats.action_id, SectionCounts.status != SENT)
                .order_by(SectionCounts.section_code)
            )
        )
        .scalars()
        .all()
    )
    sections = {row.section_code: _section_stats(row) for row in rows}
    recipients = dict(stats.recipients)
    deliveries = {c: stats.deliveries[c].model_copy() for c in CHANNELS}
    people, actions = stats.responses.people, stats.responses.actions
    by_kind = dict(stats.responses.by_kind)
    by_country = {c: n.model_copy() for c, n in stats.by_country.items()}
    for part in sections.values():
        for c in CHANNELS:
            recipients[c] = recipients.get(c, 0) + part.recipients[c]
            mine, theirs = deliveries[c], part.deliveries[c]
            deliveries[c] = ChannelDeliveries(
                sent=mine.sent + theirs.sent,
                delivered=mine.delivered + theirs.delivered,
                failed=mine.failed + theirs.failed,
            )
        people += part.responses.people
        actions += part.responses.actions
        for k in KINDS:
            by_kind[k] = by_kind.get(k, 0) + part.responses.by_kind[k]
        for country, n in part.by_country.items():
            have = by_country.get(country) or CountryCounts(recipients=0, people=0, actions=0)
            by_country[country] = CountryCounts(
                recipients=have.recipients + n.recipients,
                people=have.people + n.people,
                actions=have.actions + n.actions,
            )
    network = NetworkStats(
        recipients=recipients,
        deliveries=deliveries,
        responses=ResponseCounts(people=people, actions=actions, by_kind=by_kind),
        by_country=dict(sorted(by_country.items())),
    )
    return sections, network


async def with_network(session: AsyncSession, stats: ActionStats) -> ActionStats:
    """On a hub, the action's stats with its sections' and the network's (contract §9); a
    uanet that never had a section answers the plain shape of §3."""
    is_hub = (await session.execute(select(Section.code).limit(1))).first() is not None
    if not is_hub:
        return stats
    sections, network = await network_of(session, stats)
    return stats.model_copy(update={"sections": sections, "network": network})


@dataclass(frozen=True)
class SectionMonth:
    """A section's share of the hub's actions published since a date (the overview)."""

    code: str
    actions_sent: int  # hub actions it published
    reached: int
    people: int
    actions: int


async def sections_since(session: AsyncSession, since: datetime) -> list[SectionMonth]:
    rows = (
        await session.execute(
            select(SectionCounts.section_code, SectionCounts.status, SectionCounts.counts)
            .join(UrgentAction, UrgentAction.id == SectionCounts.action_id)
            .where(UrgentAction.published_at >= since, SectionCounts.status != SENT)
            .order_by(SectionCounts.section_code)
        )
    ).all()
    totals: dict[str, list[int]] = {}
    for code, status, counts in rows:
        total = totals.setdefault(code, [0, 0, 0, 0])
        total[0] += status in ("published", "closed")
        total[1] += sum(int(n.get("recipients", 0)) for n in counts.get("by_country", {}).values())
        total[2] += int(counts.get("responses", {}).get("people", 0))
        total[3] += int(counts.get("responses", {}).get("actions", 0))
    return [SectionMonth(code, *values) for code, values in totals.items()]
