"""A TCP proxy that puts a peer far away: every chunk read from either side is held RTT/2, then
written to the other side, in order. This kernel has no netem; benchmarks and fault tests use
this to put the SMTP relay (or anything else) 20 ms away.

    python -m devtools.latency_proxy --listen-port 2525 --upstream 127.0.0.1:25 --rtt-ms 20

It prints ``listening on HOST:PORT`` once ready, then a line ``connections open=N peak=P
total=T`` whenever a connection opens or closes. From Python, ``start_latency_proxy`` runs it
as a subprocess (its own process, so its CPU is not the caller's) and waits until it listens.
On uvloop when installed, which keeps its own CPU small.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parents[1]
# Timers fire up to this early rather than sleeping again for a fraction of a millisecond.
_SLACK = 0.0005


class _Delay:
    """Chunks from one side, written to the other ``delay`` seconds after they arrived."""

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        self.loop = loop
        self.delay = delay
        self.target: asyncio.Transport | None = None
        # (due, chunk); None as chunk: the source closed, close the target too.
        self._queue: deque[tuple[float, bytes | None]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._ended = False

    def push(self, chunk: bytes | None) -> None:
        if self._ended:
            return
        self._ended = chunk is None
        due = self.loop.time() + self.delay
        self._queue.append((due, chunk))
        if self._timer is None:
            self._timer = self.loop.call_at(due, self._flush)

    def _flush(self) -> None:
        self._timer = None
        now = self.loop.time() + _SLACK
        target = self.target
        while self._queue and self._queue[0][0] <= now:
            chunk = self._queue.popleft()[1]
            if target is None or target.is_closing():
                continue
            if chunk is None:
                target.close()  # after what is buffered; no half-open connections
            else:
                target.write(chunk)
        if self._queue:
            self._timer = self.loop.call_at(self._queue[0][0], self._flush)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._queue.clear()


class _Side(asyncio.Protocol):
    """One end of a proxied connection: what it reads goes, delayed, to the other end."""

    def __init__(self, outgoing: _Delay, on_closed: asyncio.Future[None]) -> None:
        self.outgoing = outgoing
        self.peer: _Side | None = None
        self.transport: asyncio.Transport | None = None
        self.on_closed = on_closed

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.outgoing.push(data)

    def eof_received(self) -> bool:
        self.outgoing.push(None)
        return False  # closes this side; the other one follows after the delay

    def connection_lost(self, exc: Exception | None) -> None:
        # A reset or close: the other end learns of it after the delay, like a real path.
        self.outgoing.push(None)
        if not self.on_closed.done():
            self.on_closed.set_result(None)

    # Flow control: a peer that cannot take more stops us reading from this side.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


@dataclass
class LatencyProxy:
    upstream_host: str
    upstream_port: int
    rtt_ms: float
    open: int = 0
    peak: int = 0
    total: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(
            self._accept, host, port, reuse_address=True
        )

    def _accept(self) -> asyncio.Protocol:
        loop = asyncio.get_running_loop()
        half = self.rtt_ms / 2000
        to_upstream, to_client = _Delay(loop, half), _Delay(loop, half)
        closed = loop.create_future()
        client = _Side(to_upstream, closed)
        task = loop.create_task(self._connect(client, to_upstream, to_client, closed))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return client

    async def _connect(
        self, client: _Side, to_upstream: _Delay, to_client: _Delay, closed: asyncio.Future[None]
    ) -> None:
        loop = asyncio.get_running_loop()
        upstream_closed = loop.create_future()
        self.open += 1
        self.total += 1
        self.peak = max(self.peak, self.open)
        self._report()
        try:
            try:
                transport, upstream = await loop.create_connection(
                    lambda: _Side(to_client, upstream_closed),
                    self.upstream_host,
                    self.upstream_port,
                )
            except OSError:
                if client.transport is not None:
                    client.transport.abort()
                return
            to_upstream.target = transport
            to_client.target = client.transport
            client.peer, upstream.peer = upstream, client
            await asyncio.wait([closed, upstream_closed], return_when=asyncio.FIRST_COMPLETED)
            # The other direction still carries what was in flight, then ends; a peer that
            # never closes its side is cut off.
            await asyncio.wait([closed, upstream_closed], timeout=self.rtt_ms / 1000 + 5)
            for side in (client, upstream):
                if side.transport is not None:
                    side.transport.abort()
        finally:
            self.open -= 1
            self._report()
            to_upstream.cancel()
            to_client.cancel()

    def _report(self) -> None:
        print(f"connections open={self.open} peak={self.peak} total={self.total}", flush=True)


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    proxy = LatencyProxy(host or "127.0.0.1", int(port), args.rtt_ms)
    server = await proxy.serve(args.listen_host, args.listen_port)
    listening = server.sockets[0].getsockname()
    print(f"listening on {listening[0]}:{listening[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, required=True, help="0: any free port")
    parser.add_argument("--upstream", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, default=20.0, help="round trip added")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        runner = asyncio.run
    else:
        runner = uvloop.run
    try:
        runner(_main(args))
    except KeyboardInterrupt:
        pass


class LatencyProxyProcess:
    """The proxy as a subprocess; ``peak`` and ``total`` connections as it reports them."""

    def __init__(self, process: subprocess.Popen[str], host: str, port: int) -> None:
        self.process = process
        self.host = host
        self.port = port
        self.open = 0
        self.peak = 0
        self.total = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("connections "):
                counts = dict(part.split("=") for part in line.split()[1:])
                self.open, self.peak, self.total = (
                    int(counts["open"]),
                    int(counts["peak"]),
                    int(counts["total"]),
                )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_latency_proxy(
    upstream: str, rtt_ms: float, *, listen_port: int = 0, timeout: float = 15.0
) -> LatencyProxyProcess:
    """Run the proxy in its own process in front of ``upstream`` (``HOST:PORT``) and return
    once it listens (``.port`` is where; ``listen_port=0`` picks a free one)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devtools.latency_proxy",
            "--listen-port",
            str(listen_port),
            "--upstream",
            upstream,
            "--rtt-ms",
            str(rtt_ms),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    stdout = process.stdout
    assert stdout is not None
    ready: list[str] = []
    reader = threading.Thread(target=lambda: ready.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    line = ready[0] if ready else ""
    if not line.startswith("listening on "):
        process.kill()
        process.wait()
        raise RuntimeError(f"latency proxy did not start: {line.strip() or 'no answer'}")
    host, _, port = line.removeprefix("listening on ").strip().rpartition(":")
    return LatencyProxyProcess(process, host, int(port))


if __name__ == "__main__":
    main()
