"""Helpers for the shared layer's tests: a test topology with short delays, a broker on the test
vhost, a recorder handler, and bounded polling."""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest

from shared import events
from shared.messaging import Broker, Delivery, QueueSpec
from tests import broker_admin

# A work queue bound to two event kinds, with 1-second retries (two of them).
WORK = QueueSpec(
    "test.work",
    (events.SubscriberErased.ROUTING_KEY, events.ResponseRecorded.ROUTING_KEY),
    (1, 1),
)
OTHER = QueueSpec("test.other", (events.AudienceCounted.ROUTING_KEY,), (1,))
TEST_QUEUES = (WORK, OTHER)


async def eventually(
    probe: Callable[[], Any], *, timeout: float = 15.0, interval: float = 0.05
) -> Any:
    """Poll ``probe`` (plain or async) until it returns something truthy (bounded); return that."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {probe!r}")
        await asyncio.sleep(interval)


@dataclass
class Recorder:
    """A handler that records what it got, and can be told to fail in given ways."""

    got: list[tuple[events.Message, Delivery]] = field(default_factory=list)
    # message_id -> callable raising the exception to raise for it (each time it is seen)
    fail: dict[str, Callable[[Delivery], None]] = field(default_factory=dict)
    seen: list[tuple[str, int]] = field(default_factory=list)

    async def __call__(self, message: events.Message, delivery: Delivery) -> None:
        key = str(message.message_id)
        self.seen.append((key, delivery.attempt))
        failure = self.fail.get(key)
        if failure is not None:
            failure(delivery)
        self.got.append((message, delivery))

    def ids(self) -> list[str]:
        return [str(m.message_id) for m, _ in self.got]


@pytest.fixture
async def broker(amqp_url: str) -> AsyncIterator[Broker]:
    b = Broker(amqp_url, name="uanet-test", queues=TEST_QUEUES)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


def erased() -> events.SubscriberErased:
    return events.SubscriberErased(subscriber_id=uuid.uuid4())


def vhost_of(amqp_url: str) -> str:
    return amqp_url.rsplit("/", 1)[1]


async def queue_depth(amqp_url: str, name: str) -> int:
    """Ready messages in a queue (a passive declare, on a connection of its own)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, passive=True)
        count = queue.declaration_result.message_count
        return int(count or 0)
    finally:
        await connection.close()


async def queue_arguments(amqp_url: str) -> dict[str, dict[str, Any]]:
    """Every queue of the vhost with its arguments and type, as the broker reports them."""
    rows = await asyncio.to_thread(broker_admin.list_queues, vhost_of(amqp_url))
    return {row["name"]: row for row in rows}


class TcpProxy:
    """A loopback TCP relay to RabbitMQ that a test can take down and bring back on the same port:
    the broker becomes unreachable for the client and then reachable again."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5672) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))

    def url(self, amqp_url: str, **query: str) -> str:
        rest = amqp_url.split("@", 1)[1].split("/", 1)[1]
        url = f"amqp://guest:guest@127.0.0.1:{self.port}/{rest}"
        if query:
            url += "?" + "&".join(f"{k}={v}" for k, v in query.items())
        return url
