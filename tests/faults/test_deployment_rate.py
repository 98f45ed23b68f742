"""Contract §10: UANET_SMS_RATE is the deployment's, however many dispatchers run. Two dispatcher
processes on one PostgreSQL send 200 SMS at 10 segments a second: the Twilio-compatible endpoint
sees at most 10 segments in any second (give or take two messages: sends arriving a little late
behind ones on time, as a loaded two-core host delays them), within 5% over any 10 s, and both
dispatchers sent."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shared.settings import SERVICES
from tests.conftest import SECRET
from tests.faults.harness import (
    FaultStack,
    close_fault_stack,
    open_fault_stack,
    seed_subscribers,
)
from tests.support import eventually

pytestmark = pytest.mark.e2e

RATE = 10
RECIPIENTS = 200


@pytest.fixture
async def faults(
    amqp_url: str, pg_database: Callable[[], str], tmp_path: Path
) -> AsyncIterator[FaultStack]:
    running = await open_fault_stack(
        amqp_url=amqp_url,
        database_urls={s: pg_database() for s in SERVICES},
        log_dir=tmp_path,
        secret=SECRET,
        env={"UANET_SMS_RATE": str(RATE)},
    )
    try:
        running.start_dispatcher("dispatcher-2")
        await running.ready("dispatcher-2")
        yield running
    finally:
        await close_fault_stack(running)


async def test_two_dispatchers_hold_one_sms_rate_together(faults: FaultStack) -> None:
    await seed_subscribers(faults.database_urls["subscriptions"], phones=RECIPIENTS)
    token = await faults.token()
    await faults.publish(token, channels=["sms"])
    twilio = faults.twilio
    await eventually(lambda: len(twilio.messages) >= RECIPIENTS, timeout=180, what="every SMS sent")
    arrivals = sorted((m.created_at.timestamp(), m.num_segments) for m in twilio.messages)
    segments = sum(n for _, n in arrivals)
    longest = max(n for _, n in arrivals)
    # Arrival times carry the host's jitter: two sends held up a tenth of a second land in the
    # next second beside ones on time (seen once in CI: 12 in a second). The 10 s bound is tight.
    assert _most_in(arrivals, 1.0) <= RATE + 2 * longest
    assert _most_in(arrivals, 10.0) <= 10 * RATE * 1.05
    took = arrivals[-1][0] - arrivals[0][0]
    # The rate held, not merely not exceeded: the segments took about segments/RATE seconds.
    assert took >= (segments - RATE - 1) / RATE
    assert took <= segments / RATE * 1.2 + 2
    sent = [
        await faults.metric(name, 'uanet_dispatcher_sent_total{channel="sms"}')
        for name in ("dispatcher", "dispatcher-2")
    ]
    assert all(n > 0 for n in sent), sent
    assert sum(sent) == RECIPIENTS


def _most_in(arrivals: list[tuple[float, int]], window: float) -> int:
    """The most segments that arrived within any ``window`` seconds."""
    most, start, inside = 0, 0, 0
    for at, n in arrivals:
        inside += n
        while at - arrivals[start][0] >= window:
            inside -= arrivals[start][1]
            start += 1
        most = max(most, inside)
    return most
