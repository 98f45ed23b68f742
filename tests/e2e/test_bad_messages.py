"""A malformed message on any queue is dead-lettered with its reason, the consumer goes on, and
`uanet dead-letters list|replay` shows and re-queues it."""

from __future__ import annotations

import httpx
import pytest

from shared.messaging import QUEUES, Broker
from shared.settings import SERVICES
from tests.e2e.stack import Stack
from tests.support import eventually

pytestmark = pytest.mark.e2e


async def test_malformed_messages_are_dead_lettered_and_consumers_go_on(stack: Stack) -> None:
    broker = Broker(stack.env["UANET_AMQP_URL"], name="test")
    await broker.connect()
    try:
        for spec in QUEUES:
            # Straight onto each work queue, as a buggy or hostile producer would.
            await broker.publish(
                spec.name,
                b'{"not": "what you expect"',
                message_id=f"bad-{spec.name}",
                headers={"x-uanet-routing-key": spec.bindings[0]},
                exchange="",
            )
    finally:
        await broker.close()

    def listed() -> list[str]:
        result = stack.cli("dead-letters", "list")
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.startswith("bad-")]
        return lines if len(lines) == len(QUEUES) else []

    lines = await eventually(listed, what="every bad message dead-lettered")
    for spec in QUEUES:
        line = next(line for line in lines if line.startswith(f"bad-{spec.name}\t"))
        assert f"\t{spec.name}\t" in line
        assert "malformed" in line

    # Every service is still up and its consumers still work: a sign-up's confirmation goes out
    # through subscriptions' outbox and the dispatcher's message consumer.
    async with httpx.AsyncClient(timeout=30) as client:
        for service in SERVICES:
            assert (await client.get(stack.url(service) + "/readyz")).status_code == 200
        signed_up = await client.post(
            stack.url("subscriptions") + "/api/v1/subscribers",
            json={
                "email": "after@example.net",
                "country": "GB",
                "language": "en",
                "timezone": "Europe/London",
                "channels": ["email"],
            },
        )
        assert signed_up.status_code == 202
    await eventually(lambda: stack.smtp.to("after@example.net"), what="confirmation email")

    # Replay one: it goes back to its queue, fails again the same way, and is listed again.
    replayed = stack.cli("dead-letters", "replay", "--id", "bad-dispatcher.batches")
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 1" in replayed.stdout
    await eventually(listed, what="the replayed message dead-lettered again")
