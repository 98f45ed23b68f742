"""An action published right after a bulk import is planned on what was imported (PostgreSQL).

A million imported subscribers had no statistics until autovacuum came by (never, where it is
off): the audience's page was planned as a sequential scan and a sort of the whole list, 190 ms
a page, and the million went at 0.38 of the floor instead of 0.55 (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from services.subscriptions import bulk
from services.subscriptions.audience import PAGE_SIZE, Audience, _alert_query
from shared.db import make_engine, make_sessionmaker
from shared.migrations import upgrade
from tests.subscriptions.conftest import action_published, known_action

# Enough that a page by the key is the only sane plan, few enough to import in seconds.
SUBSCRIBERS = 20_000


def _rows() -> list[tuple[int, dict[str, str]]]:
    return [
        (line, {"email": f"p{line}@example.org", "name": f"P{line}", "country": "GB"})
        for line in range(2, SUBSCRIBERS + 2)
    ]


async def test_the_audience_of_a_fresh_import_is_paged_by_its_key(
    pg_database: Callable[[], str],
) -> None:
    url = pg_database()
    await asyncio.to_thread(upgrade, "subscriptions", url)
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    try:
        report = await bulk.import_subscribers(
            sessionmaker=sessionmaker,
            rows=iter(_rows()),
            confirmed=True,
            links=None,
            on_refused=lambda refusal: None,
        )
        assert report.taken == SUBSCRIBERS

        action = known_action(action_published())
        audience = Audience.model_validate(action.audience)
        for after in (0, SUBSCRIBERS // 2):
            page = _alert_query(action, audience, after, PAGE_SIZE).compile(
                dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}
            )
            async with sessionmaker() as session:
                plan = "\n".join((await session.execute(text(f"EXPLAIN {page}"))).scalars())
            assert "Index Scan using subscribers_pkey" in plan, plan
            assert "Seq Scan" not in plan, plan
    finally:
        await engine.dispose()
