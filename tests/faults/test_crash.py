"""Processes that die mid-run: the dispatcher halfway through a fan-out, the publisher between
committing a publish and publishing its event. Each ends with every recipient served once."""

from __future__ import annotations

import asyncio
import signal
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

FAN_OUT = 5000


@pytest.fixture
async def faults(
    amqp_url: str, database_urls: dict[str, str], tmp_path: Path
) -> AsyncIterator[FaultStack]:
    running = await open_fault_stack(
        amqp_url=amqp_url, database_urls=database_urls, log_dir=tmp_path, secret=SECRET
    )
    try:
        yield running
    finally:
        await close_fault_stack(running)


async def test_dispatcher_killed_halfway_then_restarted_sends_each_alert_once(
    faults: FaultStack,
) -> None:
    addresses, _ = await seed_subscribers(faults.database_urls["subscriptions"], emails=FAN_OUT)
    half = FAN_OUT // 2
    # Halfway, the server stops answering: every send in flight is then one it never accepted.
    faults.smtp.hold_after = half
    token = await faults.token()
    action_id = await faults.publish(token, channels=["email"])

    await eventually(lambda: faults.smtp.held > 0, timeout=60, what="the fan-out halfway")
    assert faults.smtp.total == half

    async def ledger_caught_up() -> bool:
        # What the server accepted is recorded as sent (the commit right after each send).
        return (await faults.ledger(action_id))["sent"] == half

    await eventually(ledger_caught_up, timeout=10, what="the ledger to record what went out")
    faults.stack.kill("dispatcher", signal.SIGKILL)
    faults.smtp.release()

    faults.start_dispatcher()
    await eventually(lambda: faults.smtp.total >= FAN_OUT, timeout=90, what="the rest sent")

    async def settled() -> bool:
        ledger = await faults.ledger(action_id)
        return ledger["sent"] == FAN_OUT and sum(ledger.values()) == FAN_OUT

    await eventually(settled, timeout=30, what="every ledger row sent")
    assert faults.smtp.total == FAN_OUT
    assert set(faults.smtp.accepted) == set(addresses)
    assert max(faults.smtp.accepted.values()) == 1, "someone got the alert twice"

    async def counted() -> bool:
        stats = await faults.stats(token, action_id)
        return bool(stats["deliveries"]["email"]["sent"] == FAN_OUT)

    await eventually(counted, timeout=30, what="the publisher's count")
    assert (await faults.stats(token, action_id))["deliveries"]["email"]["sent"] == FAN_OUT


async def test_publisher_killed_after_commit_before_its_event_still_sends(
    faults: FaultStack, tmp_path: Path
) -> None:
    addresses, _ = await seed_subscribers(faults.database_urls["subscriptions"], emails=20)
    token = await faults.token()
    stack = faults.stack
    real_url = stack.env["UANET_AMQP_URL"]
    # The publisher reaches the broker through a relay the test can cut.
    relay = await _TcpRelay.open("127.0.0.1", 5672)
    vhost = real_url.rsplit("/", 1)[1]
    stack.kill("publisher", signal.SIGTERM)
    stack.env = {
        **stack.env,
        "UANET_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{relay.port}/{vhost}",
    }
    try:
        stack.start("publisher")
        await stack.wait_ready("publisher")
        relay.cut()  # broker unreachable: the publish commits, its event stays in the outbox
        action_id = await faults.publish(token, channels=["email"])
        stack.kill("publisher", signal.SIGKILL)
    finally:
        stack.env = {**stack.env, "UANET_AMQP_URL": real_url}
        await relay.close()
    assert faults.smtp.total == 0

    stack.start("publisher")
    await eventually(lambda: faults.smtp.total >= len(addresses), timeout=60, what="alerts")
    assert set(faults.smtp.accepted) == set(addresses)
    assert max(faults.smtp.accepted.values()) == 1

    async def counted() -> bool:
        stats = await faults.stats(token, action_id)
        return bool(stats["deliveries"]["email"]["sent"] == len(addresses))

    await eventually(counted, timeout=30, what="the publisher's count")


class _TcpRelay:
    """A TCP relay to the broker; ``cut()`` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._cut = False

    @classmethod
    async def open(cls, host: str, port: int) -> _TcpRelay:
        relay = cls((host, port))
        relay._server = await asyncio.start_server(relay._serve, "127.0.0.1", 0)
        relay.port = relay._server.sockets[0].getsockname()[1]
        return relay

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    if self._cut:
                        break
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        self._cut = True
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
