"""Faults outside the dispatcher: SMTP and Twilio errors, the broker dropping every connection, an
action closed mid-run, two dispatchers on the same queues. Each ends with every recipient served
once (or, where the fault says so, counted failed and suppressed)."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
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

OpenStack = Callable[..., Awaitable[FaultStack]]


@pytest.fixture
async def open_faults(
    amqp_url: str, database_urls: dict[str, str], tmp_path: Path
) -> AsyncIterator[OpenStack]:
    opened: list[FaultStack] = []

    async def open_with(**env: str) -> FaultStack:
        running = await open_fault_stack(
            amqp_url=amqp_url,
            database_urls=database_urls,
            log_dir=tmp_path,
            secret=SECRET,
            env=env,
        )
        opened.append(running)
        return running

    try:
        yield open_with
    finally:
        for running in opened:
            await close_fault_stack(running)


def served_once(accepted: Counter[str], expected: list[str]) -> None:
    assert set(accepted) == set(expected)
    twice = [a for a, n in accepted.items() if n > 1]
    assert not twice, f"{len(twice)} recipients got it more than once"


async def test_smtp_and_twilio_errors_retry_fail_and_suppress(open_faults: OpenStack) -> None:
    faults = await open_faults()
    addresses, numbers = await seed_subscribers(
        faults.database_urls["subscriptions"], emails=100, phones=8
    )
    faults.smtp.greylist.update(addresses[::5])  # a fifth answered 451 at first
    bounced = addresses[1:20:6]  # 550 for good
    faults.smtp.bounce.update(bounced)
    # Twilio: rate limited and a server error (retried later), and one who replied STOP.
    faults.twilio.failures[numbers[0]] = [(429, 20429)]
    faults.twilio.failures[numbers[1]] = [(500, None), (503, None)]
    opted_out = numbers[2]
    faults.twilio.failures[opted_out] = [(400, 21610)]
    token = await faults.token()
    first = await faults.publish(token)

    delivered = [a for a in addresses if a not in bounced]
    texted = [n for n in numbers if n != opted_out]
    await eventually(
        lambda: faults.smtp.total >= len(delivered) and len(faults.twilio.messages) >= len(texted),
        timeout=60,
        what="every alert after retries",
    )

    async def settled() -> bool:
        ledger = await faults.ledger(first)
        return (
            ledger["sent"] == len(delivered) + len(texted) and ledger["failed"] == len(bounced) + 1
        )

    await eventually(settled, timeout=30, what="the ledger final")
    served_once(faults.smtp.accepted, delivered)
    assert Counter(m.to for m in faults.twilio.messages) == Counter(texted)
    for address in addresses[::5]:
        if address not in bounced:
            assert faults.smtp.attempts[address] == 2, "greylisted: one retry, then accepted"
    for address in bounced:
        assert faults.smtp.attempts[address] == 1, "a 550 is never retried"

    async def counted() -> bool:
        stats = await faults.stats(token, first)
        email, sms = stats["deliveries"]["email"], stats["deliveries"]["sms"]
        return bool(
            email == {"sent": len(delivered), "delivered": 0, "failed": len(bounced)}
            and sms["sent"] == len(texted)
            and sms["failed"] == 1
        )

    await eventually(counted, timeout=30, what="failures counted by the publisher")

    # The hard bounces and the STOP are suppressed: a later action does not try them at all.
    async def suppressed() -> bool:
        handled = await faults.metric(
            "subscriptions",
            'uanet_messages_consumed_total{outcome="ok",queue="subscriptions.suppressions"}',
        )
        return handled >= len(bounced) + 1

    await eventually(suppressed, timeout=30, what="suppressions handled by subscriptions")
    second = await faults.publish(token)

    async def second_settled() -> bool:
        ledger = await faults.ledger(second)
        return ledger["sent"] == len(delivered) + len(texted)

    await eventually(second_settled, timeout=60, what="the second action out")
    for address in bounced:
        assert faults.smtp.attempts[address] == 1, "a bounced address was tried again"
    assert faults.smtp.accepted == Counter(dict.fromkeys(delivered, 2))
    assert [m.to for m in faults.twilio.messages].count(opted_out) == 0
    assert sum((await faults.ledger(second)).values()) == len(delivered) + len(texted)


async def test_broker_connections_closed_mid_run_every_service_reconnects(
    open_faults: OpenStack,
) -> None:
    faults = await open_faults(UANET_EMAIL_RATE="400")
    addresses, _ = await seed_subscribers(faults.database_urls["subscriptions"], emails=1500)
    token = await faults.token()
    action_id = await faults.publish(token, channels=["email"])
    await eventually(lambda: faults.smtp.total >= 300, timeout=60, what="the fan-out under way")
    closed = subprocess.run(
        ["rabbitmqctl", "-q", "close_all_connections", "-p", faults.vhost, "test"],
        capture_output=True,
        timeout=60,
    )
    assert closed.returncode == 0, closed.stderr
    assert faults.smtp.total < len(addresses), "closed too late to test anything"

    await eventually(lambda: faults.smtp.total >= len(addresses), timeout=90, what="all sent")

    async def counted() -> bool:
        stats = await faults.stats(token, action_id)
        return bool(stats["deliveries"]["email"]["sent"] == len(addresses))

    await eventually(counted, timeout=60, what="the publisher's count after reconnecting")
    served_once(faults.smtp.accepted, addresses)
    async with httpx.AsyncClient() as client:
        for service in SERVICES:
            # A service with nothing left to do may still be between two reconnection tries.
            async def ready(url: str = faults.stack.url(service) + "/readyz") -> bool:
                return (await client.get(url)).status_code == 200

            await eventually(ready, timeout=30, what=f"{service} reconnected")


async def test_closing_an_action_cancels_what_has_not_gone_out(open_faults: OpenStack) -> None:
    faults = await open_faults(UANET_EMAIL_RATE="40")
    addresses, _ = await seed_subscribers(faults.database_urls["subscriptions"], emails=400)
    token = await faults.token()
    action_id = await faults.publish(token, channels=["email"])
    await eventually(lambda: faults.smtp.total >= 20, timeout=60, what="the first alerts")
    async with httpx.AsyncClient(timeout=30) as client:
        closed = await client.post(
            f"{faults.stack.url('publisher')}/api/v1/actions/{action_id}/close",
            json={"outcome": "released"},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert closed.status_code == 200, closed.text

    async def settled() -> Counter[str] | None:
        ledger = await faults.ledger(action_id)
        pending = ledger["sending"] + ledger["retry"]
        return ledger if ledger["cancelled"] and not pending else None

    ledger = await eventually(settled, timeout=30, what="the rest cancelled")
    assert ledger["sent"] < len(addresses) / 2
    await asyncio.sleep(0)
    # Exactly what the ledger says went out arrived, once each; nothing after the close.
    assert faults.smtp.total == ledger["sent"]
    assert max(faults.smtp.accepted.values()) == 1


async def test_two_dispatchers_share_the_work_without_duplicates(open_faults: OpenStack) -> None:
    faults = await open_faults(UANET_SMTP_CONCURRENCY="4")
    faults.start_dispatcher("dispatcher-2")
    await faults.ready("dispatcher-2")
    addresses, _ = await seed_subscribers(faults.database_urls["subscriptions"], emails=1500)
    token = await faults.token()
    action_id = await faults.publish(token, channels=["email"])
    await eventually(lambda: faults.smtp.total >= len(addresses), timeout=90, what="all sent")

    async def settled() -> bool:
        return (await faults.ledger(action_id))["sent"] == len(addresses)

    await eventually(settled, timeout=30, what="the ledger final")
    served_once(faults.smtp.accepted, addresses)
    shares = [
        await faults.metric(name, 'uanet_dispatcher_sent_total{channel="email"}')
        for name in ("dispatcher", "dispatcher-2")
    ]
    assert sum(shares) == len(addresses)
    assert all(share > 0 for share in shares), f"one dispatcher did all the work: {shares}"
