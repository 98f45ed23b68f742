"""The actions list, and the overview across actions (with the month's bounce and complaint
rates)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response
from sqlalchemy import select

from services.publisher import actions as domain
from services.publisher.console.common import (
    PAGE_SIZE,
    database_of,
    render,
    require_user,
)
from services.publisher.federation.hub import sections_since
from services.publisher.feedback import month_feedback
from services.publisher.models import CHANNELS, ActionTally
from services.publisher.overview import read_overview

router = APIRouter(include_in_schema=False)


@router.get("/")
async def actions_list(request: Request, page: str = "1") -> Response:
    user = await require_user(request)
    number = int(page) if page.isdigit() and 0 < len(page) < 7 else 1
    async with database_of(request).read() as session:
        rows, total = await domain.list_actions(
            session=session, limit=PAGE_SIZE, offset=(number - 1) * PAGE_SIZE
        )
        ids = [row.id for row in rows]
        tallies = {
            t.action_id: t
            for t in (
                await session.execute(select(ActionTally).where(ActionTally.action_id.in_(ids)))
            ).scalars()
        }
    items = []
    for row in rows:
        tally = tallies.get(row.id)
        items.append(
            {
                "action": row,
                "recipients": sum(getattr(tally, f"recipients_{c}") for c in CHANNELS)
                if tally
                else 0,
                "sent": sum(getattr(tally, f"{c}_sent") for c in CHANNELS) if tally else 0,
                "delivered": sum(getattr(tally, f"{c}_delivered") for c in CHANNELS)
                if tally
                else 0,
                "people": tally.people if tally else 0,
                "actions": tally.actions if tally else 0,
            }
        )
    pages = max(1, math.ceil(total / PAGE_SIZE))
    return render(
        request,
        "actions.html.j2",
        {"items": items, "page": number, "pages": pages, "total": total},
        user=user,
    )


@router.get("/overview")
async def overview(request: Request) -> Response:
    user = await require_user(request)
    now = datetime.now(UTC)
    since = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    async with database_of(request).read() as session:
        figures = await read_overview(session=session, since=since)
        feedback = await month_feedback(session=session, since=since)
        sections = await sections_since(session, since)
    return render(
        request,
        "overview.html.j2",
        {"o": figures, "month": since, "feedback": feedback, "sections": sections},
        user=user,
    )
