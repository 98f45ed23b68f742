"""A process stopped while it is still connecting to the broker leaves nothing behind: aio-pika's
robust connection keeps a reconnect task of its own, which took a cancellation for one more failed
attempt and went on connecting for ever (seen as a test's event loop that never closed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from shared import broker_nodes
from shared.broker_nodes import connect_cluster
from tests.support import free_port


@pytest.fixture
async def silent_broker() -> AsyncIterator[str]:
    """A port that accepts connections and never says a word: the AMQP handshake waits."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    port = free_port()
    server = await asyncio.start_server(accept, "127.0.0.1", port)
    try:
        yield f"amqp://guest:guest@127.0.0.1:{port}/"
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_connection_cancelled_while_connecting_leaves_no_task(silent_broker: str) -> None:
    before = asyncio.all_tasks()
    connecting = asyncio.create_task(connect_cluster(silent_broker, name="uanet-test"))
    await asyncio.sleep(0.3)  # the handshake under way

    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    await asyncio.sleep(0.1)

    left = {t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()}
    assert not {t for t in left if not t.done()}, [t.get_coro() for t in left]


async def test_a_reconnection_to_a_node_that_never_answers_moves_on(
    silent_broker: str, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's node goes away and the next one in turn takes the TCP connection but
    never answers (a node shutting down): the attempt gives up after CONNECT_TIMEOUT and the
    next node is tried. Without a bound, the reconnection waited there for ever."""
    monkeypatch.setattr(broker_nodes, "CONNECT_TIMEOUT", 1.0)
    monkeypatch.setattr(broker_nodes.random, "randrange", lambda _: 0)  # the real node first
    connection = await connect_cluster(f"{amqp_url},{silent_broker}", name="uanet-test")
    try:
        real = connection.node
        assert connection.transport is not None
        # The node closes it (as a node stopping does): the next attempt goes to the silent one.
        await connection.transport.connection.close(ConnectionError("node going away"))
        async with asyncio.timeout(15):
            while not (connection.connected.is_set() and connection.transport is not None):
                await asyncio.sleep(0.1)
        assert connection.node == real
    finally:
        await connection.close()
