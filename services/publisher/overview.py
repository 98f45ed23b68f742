"""Figures across actions for the coordinators' overview: reach, response rate, top countries."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.models import ActionTally, CountryTally, UrgentAction


@dataclass(frozen=True)
class CountryRow:
    country: str
    recipients: int
    people: int
    actions: int


@dataclass(frozen=True)
class ActionRow:
    action: UrgentAction
    reached: int
    people: int
    actions: int


@dataclass(frozen=True)
class Overview:
    since: datetime
    published: int
    reached: int  # people the actions were sent to, summed over actions
    people: int  # people who reported acting, summed over actions
    actions: int
    top_countries: list[CountryRow]
    rows: list[ActionRow]

    @property
    def response_rate(self) -> float | None:
        return self.people / self.reached if self.reached else None


async def read_overview(*, session: AsyncSession, since: datetime, top: int = 10) -> Overview:
    """Actions published since ``since`` (e.g. the first of this month)."""
    published = UrgentAction.published_at >= since
    reached_by_action = (
        select(CountryTally.action_id, func.sum(CountryTally.recipients).label("reached"))
        .group_by(CountryTally.action_id)
        .subquery()
    )
    result = await session.execute(
        select(
            UrgentAction,
            func.coalesce(reached_by_action.c.reached, 0),
            ActionTally.people,
            ActionTally.actions,
        )
        .join(ActionTally, ActionTally.action_id == UrgentAction.id)
        .outerjoin(reached_by_action, reached_by_action.c.action_id == UrgentAction.id)
        .where(published)
        .order_by(UrgentAction.published_at.desc())
    )
    rows = [
        ActionRow(action=a, reached=int(reached), people=int(people), actions=int(actions))
        for a, reached, people, actions in result.all()
    ]
    countries = await session.execute(
        select(
            CountryTally.country,
            func.sum(CountryTally.recipients),
            func.sum(CountryTally.people),
            func.sum(CountryTally.actions),
        )
        .join(UrgentAction, UrgentAction.id == CountryTally.action_id)
        .where(published)
        .group_by(CountryTally.country)
        .order_by(func.sum(CountryTally.actions).desc(), CountryTally.country)
        .limit(top)
    )
    return Overview(
        since=since,
        published=len(rows),
        reached=sum(r.reached for r in rows),
        people=sum(r.people for r in rows),
        actions=sum(r.actions for r in rows),
        top_countries=[
            CountryRow(country=c, recipients=int(r or 0), people=int(p or 0), actions=int(n or 0))
            for c, r, p, n in countries.all()
        ],
        rows=rows,
    )
