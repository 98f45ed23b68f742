"""Bounces and complaints reported after the relay accepted an alert email, as staff read them:
per action (the action's page) and for the month (the overview). Mailbox providers judge a
sender by these two rates (keep bounces under 2 %, complaints under 0.1-0.3 %), so staff see
them next to what was sent.

Both rates are of the alert emails the relay accepted: those still counted sent, and those a
hard bounce later moved to failed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.models import ActionTally, UrgentAction


@dataclass(frozen=True)
class EmailFeedbackCounts:
    sent: int
    delivered: int
    hard_bounces: int
    soft_bounces: int
    complaints: int

    @property
    def accepted(self) -> int:
        return self.sent + self.hard_bounces

    @property
    def bounce_rate(self) -> float | None:
        return self.hard_bounces / self.accepted if self.accepted else None

    @property
    def complaint_rate(self) -> float | None:
        return self.complaints / self.accepted if self.accepted else None


_SUMS = (
    func.coalesce(func.sum(ActionTally.email_sent), 0),
    func.coalesce(func.sum(ActionTally.email_delivered), 0),
    func.coalesce(func.sum(ActionTally.email_hard_bounces), 0),
    func.coalesce(func.sum(ActionTally.email_soft_bounces), 0),
    func.coalesce(func.sum(ActionTally.email_complaints), 0),
)


async def action_feedback(*, session: AsyncSession, action_id: uuid.UUID) -> EmailFeedbackCounts:
    row = (await session.execute(select(*_SUMS).where(ActionTally.action_id == action_id))).one()
    return EmailFeedbackCounts(*(int(n) for n in row))


async def month_feedback(*, session: AsyncSession, since: datetime) -> EmailFeedbackCounts:
    """Over the actions published since ``since`` (the first of the month, as the overview)."""
    row = (
        await session.execute(
            select(*_SUMS)
            .join(UrgentAction, UrgentAction.id == ActionTally.action_id)
            .where(UrgentAction.published_at >= since)
        )
    ).one()
    return EmailFeedbackCounts(*(int(n) for n in row))
