"""OSDI people benchmark: N confirmed subscribers, then what a CRM does. A full walk through
``GET /osdi/v1/people`` (per_page=100, following ``_links.next``) and a nightly sync (the
``modified_date gt`` filter, 1% of the people changed). Prints the time of the walk, its first,
median and last page, the sync's, and how much the process's peak memory grew during the walk.

    .venv/bin/python bench/osdi_sync.py [-n 100000] [--postgres]

The subscriptions app runs in-process (ASGI, no network), on a migrated database of its own.
Not a test. Needs RabbitMQ (for the scratch vhost) and PostgreSQL with --postgres.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import resource
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import insert, update

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch  # noqa: E402
from services.subscriptions.app import create_app  # noqa: E402
from services.subscriptions.models import ApiToken, Subscriber  # noqa: E402
from shared.migrations import upgrade  # noqa: E402
from shared.settings import Settings  # noqa: E402

TOKEN = "uat_osdi-bench-admin"
PUBLIC_URL = "http://subscriptions.bench"
CHUNK = 5_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def seed(app: object, n: int) -> datetime:
    """N confirmed people, all last changed a day ago; 1% changed since. Returns the sync's
    ``since``."""
    sessionmaker = app.state.runtime.sessionmaker  # type: ignore[attr-defined]
    long_ago = datetime.now(UTC) - timedelta(days=1)
    async with sessionmaker() as session, session.begin():
        session.add(
            ApiToken(
                token_id=uuid.uuid4(),
                name="bench",
                role="admin",
                token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
                issued_at=long_ago,
            )
        )
    for start in range(0, n, CHUNK):
        rows = [
            {
                "public_id": uuid.uuid4(),
                "email": f"person{i}@example.net",
                "name": f"Person {i}",
                "country": "GB",
                "language": "en",
                "timezone": "Europe/London",
                "themes": ["torture"],
                "frequency": "immediate",
                "email_status": "confirmed",
                "confirmations_in_window": 0,
                "created_at": long_ago,
                "updated_at": long_ago,
            }
            for i in range(start, min(n, start + CHUNK))
        ]
        async with sessionmaker() as session, session.begin():
            await session.execute(insert(Subscriber), rows)
    since = datetime.now(UTC) - timedelta(hours=1)
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(Subscriber).where(Subscriber.id % 100 == 0).values(updated_at=datetime.now(UTC))
        )
    return since


async def walk(client: httpx.AsyncClient, url: str) -> tuple[int, list[float]]:
    seen, times = 0, []
    next_url: str | None = url
    while next_url is not None:
        started = time.perf_counter()
        response = await client.get(next_url.removeprefix(PUBLIC_URL))
        times.append(time.perf_counter() - started)
        response.raise_for_status()
        page = response.json()
        seen += len(page["_embedded"]["osdi:people"])
        next_url = page["_links"].get("next", {}).get("href")
    return seen, times


async def run(n: int, postgres: bool) -> None:
    with scratch("osdi-bench", postgres=postgres) as place:
        url = place.database_urls["subscriptions"]
        await asyncio.to_thread(upgrade, "subscriptions", url)
        settings = Settings(
            _env_file=None,
            amqp_url=place.amqp_url,
            secret_key="bench-secret",
            subscriptions_database_url=url,
            public_url=PUBLIC_URL,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            since = await seed(app, n)
            transport = httpx.ASGITransport(app=app)
            headers = {"OSDI-API-Token": TOKEN}
            async with httpx.AsyncClient(
                transport=transport, base_url=PUBLIC_URL, headers=headers, timeout=120
            ) as client:
                before = peak_rss_mb()
                started = time.perf_counter()
                seen, times = await walk(client, f"{PUBLIC_URL}/osdi/v1/people?per_page=100")
                total = time.perf_counter() - started
                grown = peak_rss_mb() - before
                stamp = since.isoformat().replace("+00:00", "Z")
                started = time.perf_counter()
                changed, _ = await walk(
                    client,
                    f"{PUBLIC_URL}/osdi/v1/people?per_page=100&filter=modified_date gt '{stamp}'",
                )
                sync = time.perf_counter() - started
    engine = "PostgreSQL" if postgres else "SQLite"
    print(f"OSDI people, {n:,} confirmed subscribers on {engine}, per_page=100")
    print(
        f"  full walk: {seen:,} people in {len(times)} pages, {total:.1f} s "
        f"({seen / total:,.0f} people/s); page first {times[0] * 1000:.0f} ms, "
        f"median {statistics.median(times) * 1000:.0f} ms, last {times[-1] * 1000:.0f} ms"
    )
    print(f"  nightly sync (1% changed): {changed:,} people in {sync:.1f} s")
    print(f"  peak memory grew by {grown:.0f} MB during the walk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=100_000)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    asyncio.run(run(args.n, args.postgres))


if __name__ == "__main__":
    main()
