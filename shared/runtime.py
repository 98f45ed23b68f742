"""The life of one service process: database, broker, outbox relay and consumers.

Opened in FastAPI's ``lifespan`` and closed in its ``finally``; nothing connects at import time.
If the broker is not there yet, the service still answers HTTP (``/readyz`` says not ready) and
keeps trying; aio-pika's robust connection then reconnects by itself after any later loss.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from shared import events
from shared.broker_users import SenderCheck
from shared.db import OutboxMixin, OutboxRelay, make_engine, make_sessionmaker, ping
from shared.messaging import QUEUES, Broker, Handler, QueueSpec
from shared.settings import SERVICES, Settings

log = logging.getLogger(__name__)

# A deploy stops a process with SIGTERM and kills it 30 s later (Docker's default is 10 s:
# docker-compose.yml sets stop_grace_period): handlers under way get most of that to finish.
DRAIN_TIMEOUT = 20.0
FINAL_RELAY_TIMEOUT = 3.0


@dataclass(frozen=True)
class Subscription:
    queue: str
    handler: Handler
    models: Sequence[type[events.Message]]
    prefetch: int = 20


@dataclass
class ServiceRuntime:
    service: str
    settings: Settings
    outbox_model: type[OutboxMixin]
    engine: AsyncEngine = field(init=False)
    sessionmaker: async_sessionmaker[AsyncSession] = field(init=False)
    broker: Broker = field(init=False)
    relay: OutboxRelay = field(init=False)
    _starter: asyncio.Task[None] | None = field(init=False, default=None)
    _started: asyncio.Event = field(init=False, default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.engine = make_engine(
            self.settings.database_url(self.service),
            connections=self.settings.database_connections,
        )
        self.sessionmaker = make_sessionmaker(self.engine)
        self.broker = Broker(
            self.settings.service_amqp_url(self.service),
            name=f"uanet-{self.service}",
            queues=self._queues(),
            sender_check=SenderCheck.for_service(
                self.settings.amqp_url,
                {name: getattr(self.settings, f"{name}_amqp_url", None) for name in SERVICES},
                self.service,
            ),
        )
        self.relay = OutboxRelay(self.sessionmaker, self.outbox_model, self.broker)

    def _queues(self) -> tuple[QueueSpec, ...]:
        """The whole topology, declared by whichever service starts first; with a broker user
        of its own (allowed only its own queues), only its own queues: `uanet broker users
        --apply` declared the rest."""
        if getattr(self.settings, f"{self.service}_amqp_url", None) is None:
            return QUEUES
        return tuple(q for q in QUEUES if q.name.startswith(f"{self.service}."))

    async def start(self, subscriptions: Sequence[Subscription]) -> None:
        self._starter = asyncio.create_task(self._connect_and_consume(subscriptions))
        self._starter.add_done_callback(self._starter_done)

    def _starter_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # Otherwise silent: the service would answer HTTP but never consume.
            log.error("%s could not start consuming", self.service, exc_info=task.exception())

    async def wait_started(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self._started.wait(), timeout)

    async def _connect_and_consume(self, subscriptions: Sequence[Subscription]) -> None:
        delay = 0.5
        while True:
            try:
                await self.broker.connect()
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep trying; /readyz reports it
                log.warning(
                    "broker not reachable (%s); retrying in %.1fs", type(exc).__name__, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        for sub in subscriptions:
            await self.broker.consume(sub.queue, sub.handler, sub.models, prefetch=sub.prefetch)
        self.relay.start()
        self._started.set()
        log.info("%s connected and consuming", self.service)

    async def ready(self) -> dict[str, bool]:
        # Ready on the broker side once connected *and* consuming (not merely connected).
        broker = self.broker.connected and self._started.is_set()
        return {"database": await ping(self.engine), "broker": broker}

    async def stop(self, *, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        """A graceful stop (SIGTERM, a deploy): take no new message, let the ones under way
        finish, commit and settle, publish what they wrote to the outbox, then close. What a
        handler had not started goes back to its queue for the next process."""
        if self._starter is not None:
            self._starter.cancel()
            try:
                await self._starter
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.broker.stop_consuming()
        if not await self.broker.drain(timeout=drain_timeout):
            log.warning("%s stopped with messages still being handled", self.service)
        await self.relay.stop()
        if self.broker.connected:
            try:
                # Counts and events the last handlers committed go out now, not at next start.
                await asyncio.wait_for(self.relay.relay_once(), FINAL_RELAY_TIMEOUT)
            except Exception:  # noqa: BLE001 - the outbox keeps them for the next process
                log.warning("final outbox pass failed; the next start publishes the rest")
        await self.broker.close()
        await self.engine.dispose()


def broker_node_of(app: Any) -> str | None:
    """The broker node of the app's runtime (for /readyz); None before it started."""
    runtime = getattr(app.state, "runtime", None)
    return runtime.broker.node if isinstance(runtime, ServiceRuntime) else None
