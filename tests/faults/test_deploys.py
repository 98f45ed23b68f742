"""The dispatcher stopped at the worst moment: mid-fan-out, sends in flight at full speed to a
relay 20 ms away, on SQLite and on PostgreSQL.

SIGTERM (every deploy, every container stop) must cost nothing: 0 lost, 0 sent twice. SIGKILL
loses nothing; what the relay had accepted and the dying process had not yet recorded goes
again (bounded: at most 64), as the same message (the Message-ID of its first send).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import SECRET
from tests.faults.harness import (
    FaultStack,
    close_fault_stack,
    open_fault_stack,
    seed_subscribers,
)
from tests.support import eventually

pytestmark = pytest.mark.e2e

FAN_OUT = 2000
RTT_MS = 20
# Contract §6: a stopped dispatcher exits within 30 s; what SIGKILL may send again, at most.
EXIT_WITHIN = 30.0
IN_DOUBT_BOUND = 64


@pytest.fixture
async def far_relay(
    amqp_url: str, database_urls: dict[str, str], tmp_path: Path
) -> AsyncIterator[FaultStack]:
    running = await open_fault_stack(
        amqp_url=amqp_url,
        database_urls=database_urls,
        log_dir=tmp_path,
        secret=SECRET,
        rtt_ms=RTT_MS,
    )
    try:
        yield running
    finally:
        await close_fault_stack(running)


def _moment() -> int:
    """A random point of the fan-out (printed, and repeatable with UANET_FAULT_SEED)."""
    seed = int(os.environ.get("UANET_FAULT_SEED") or time.time_ns() % 1_000_000)
    at = random.Random(seed).randint(FAN_OUT // 10, FAN_OUT * 6 // 10)
    print(f"fault seed {seed}: stopping after {at} of {FAN_OUT} accepted")
    return at


async def _in_full_flow(faults: FaultStack, at: int) -> int:
    """Wait until ``at`` messages were accepted *and* sends are in flight at this instant (a
    transaction begun at the relay, not yet answered): the worst moment, not a quiet one.
    Returns the sends in flight then."""
    deadline = asyncio.get_running_loop().time() + 120
    while True:
        in_flight = faults.smtp.in_flight
        if faults.smtp.total >= at and in_flight > 0:
            return in_flight
        if faults.smtp.total >= FAN_OUT or asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never caught the fan-out in flight ({faults.smtp.total})")
        await asyncio.sleep(0.001)


async def _finish_and_settle(faults: FaultStack, token: str, action_id: str) -> None:
    faults.start_dispatcher()
    await eventually(
        lambda: len(faults.smtp.accepted) >= FAN_OUT, timeout=180, what="every recipient served"
    )

    async def settled() -> bool:
        ledger = await faults.ledger(action_id)
        return ledger["sent"] == FAN_OUT and sum(ledger.values()) == FAN_OUT

    await eventually(settled, timeout=60, what="every ledger row sent")

    seen: list[object] = []

    async def counted() -> bool:
        stats = await faults.stats(token, action_id)
        seen[:] = [stats["deliveries"]["email"]]
        return bool(stats["deliveries"]["email"]["sent"] == FAN_OUT)

    try:
        await eventually(counted, timeout=60, what="the publisher's count")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the publisher's email deliveries: {seen}") from None


async def test_sigterm_mid_fan_out_sends_nothing_twice(far_relay: FaultStack) -> None:
    faults = far_relay
    addresses, _ = await seed_subscribers(faults.database_urls["subscriptions"], emails=FAN_OUT)
    token = await faults.token()
    action_id = await faults.publish(token, channels=["email"])

    in_flight = await _in_full_flow(faults, _moment())
    process = faults.stack.processes.pop("dispatcher")
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(process.wait, EXIT_WITHIN)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError(f"the dispatcher did not exit within {EXIT_WITHIN:.0f} s") from None
    took = time.monotonic() - started
    accepted_at_exit = faults.smtp.total
    print(f"SIGTERM with {in_flight} sends in flight: exited in {took:.2f} s")

    # Everything the relay accepted was recorded before the process exited: nothing in doubt.
    assert (await faults.ledger(action_id))["sent"] == accepted_at_exit
    # uvicorn re-raises the signal once shut down: the exit status says "stopped by SIGTERM".
    assert process.returncode in (0, -signal.SIGTERM), faults.stack.log("dispatcher")[-2000:]

    await _finish_and_settle(faults, token, action_id)
    assert set(faults.smtp.accepted) == set(addresses)
    assert faults.smtp.sent_twice() == {}, "a deploy sent someone the alert twice"
    assert faults.smtp.total == FAN_OUT


async def test_sigkill_mid_fan_out_resends_few_and_as_the_same_message(
    far_relay: FaultStack,
) -> None:
    faults = far_relay
    addresses, _ = await seed_subscribers(faults.database_urls["subscriptions"], emails=FAN_OUT)
    token = await faults.token()
    action_id = await faults.publish(token, channels=["email"])

    in_flight = await _in_full_flow(faults, _moment())
    faults.stack.kill("dispatcher", signal.SIGKILL)
    # What was still on its way to the relay lands now (or never); then count what is in doubt.
    await asyncio.sleep(RTT_MS / 1000 * 5)
    recorded = (await faults.ledger(action_id))["sent"]
    in_doubt = faults.smtp.total - recorded
    print(f"SIGKILL with {in_flight} sends in flight: {in_doubt} accepted but not recorded")
    assert 0 <= in_doubt <= IN_DOUBT_BOUND

    await _finish_and_settle(faults, token, action_id)
    assert set(faults.smtp.accepted) == set(addresses), "an alert was lost"
    again = faults.smtp.sent_twice()
    print(f"sent again after the restart: {sum(again.values())}")
    assert sum(again.values()) <= in_doubt
    assert max(again.values(), default=0) <= 1
    for address in again:
        first, second = faults.smtp.message_ids[address]
        assert first and first == second, "a resend must carry its first send's Message-ID"
