"""Memory of the webhook deliverer with a long backlog for a dead endpoint (issue 15: "memory
stays flat with 100,000 events waiting for a dead endpoint").

For each backlog (1,000 and 100,000 deliveries waiting, by default), on a fresh publisher
database: the deliverer in this process tries the same number of them against a port that
refuses connections (claim, try, record the retry), and tracemalloc measures Python's
allocations over those passes: the most held above the start, and what is still held at the
end. Flat means the figures do not grow with the backlog.

    .venv/bin/python bench/webhook_backlog.py [--waiting 1000,100000] [--tries 800] [--postgres]

Not a test (tests/publisher/test_webhook_delivery.py asserts the same bound, faster). Needs
PostgreSQL with --postgres, like the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch  # noqa: E402
from tests.publisher.webhook_lanes import backlog_memory, publisher_database  # noqa: E402

MB = 1024 * 1024


async def run(waitings: list[int], tries: int, postgres: bool) -> None:
    engine = "PostgreSQL" if postgres else "SQLite"
    print(f"{engine}; {tries} failed tries measured after a warm-up, per backlog")
    print("waiting     set up  tries/s  peak above start  held after  RSS growth")
    for waiting in waitings:
        with scratch("uanet-backlog", postgres=postgres) as infra:
            async with publisher_database(infra.database_urls["publisher"]) as database:
                began = time.monotonic()
                figures = await backlog_memory(database, waiting=waiting, tries=tries)
                set_up = time.monotonic() - began - figures.seconds
        print(
            f"{waiting:>7}  {set_up:>8.1f}s  {figures.tries / figures.seconds:>7.0f}"
            f"  {figures.peak_growth / MB:>13.2f} MB  {figures.held_growth / MB:>7.2f} MB"
            f"  {figures.rss_growth / MB:>7.1f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waiting", default="1000,100000")
    parser.add_argument("--tries", type=int, default=800)
    parser.add_argument("--postgres", action="store_true")
    args = parser.parse_args()
    waitings = [int(w) for w in args.waiting.split(",")]
    if args.tries >= min(waitings):
        raise SystemExit("--tries must be fewer than the smallest backlog")
    asyncio.run(run(waitings, args.tries, args.postgres))


if __name__ == "__main__":
    main()
