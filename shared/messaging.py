"""The AMQP topology and a thin publish/consume layer over aio-pika.

Rules it enforces (see DESIGN.md):
- every work queue is a durable quorum queue with a delivery limit;
- messages are persistent and a publish returns only once the broker confirmed it;
- a handler's work is acked only after it returned (the handler commits before returning);
- a temporary failure goes to a delay queue (TTL, then dead-lettered back to its queue), so a retry
  never blocks the messages behind it; one that keeps failing, or that cannot be parsed, goes to the
  dead-letter queue with its reason in the headers, and the consumer goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from prometheus_client import Counter
from pydantic import ValidationError

from shared import events
from shared.broker_nodes import ClusterConnection, connect_cluster
from shared.broker_users import H_SENT_BY, SenderCheck, amqp_user

log = logging.getLogger(__name__)

EVENTS_EXCHANGE = "uanet.events"
DEAD_LETTER_EXCHANGE = "uanet.dead-letter"
DEAD_LETTER_QUEUE = "uanet.dead-letters"
# Broker-side safety net: a message redelivered this often (a consumer crashing on it) is
# dead-lettered by RabbitMQ itself.
DELIVERY_LIMIT = 10

H_ATTEMPT = "x-uanet-attempt"
H_REASON = "x-uanet-reason"
H_QUEUE = "x-uanet-queue"
H_ROUTING_KEY = "x-uanet-routing-key"
H_FAILED_AT = "x-uanet-failed-at"

MESSAGES_CONSUMED = Counter(
    "uanet_messages_consumed_total", "Messages handled from a queue", ["queue", "outcome"]
)


@dataclass(frozen=True)
class QueueSpec:
    name: str
    bindings: tuple[str, ...]
    # Seconds to wait before each retry; its length is how many retries a message gets.
    retry_delays: tuple[int, ...] = (2, 10, 60, 300)

    def delay_queue(self, delay: int) -> str:
        return f"{self.name}.retry.{delay}s"


QUEUES: tuple[QueueSpec, ...] = (
    QueueSpec(
        "publisher.tally",
        (
            events.AudienceCounted.ROUTING_KEY,
            events.DeliveriesReported.ROUTING_KEY,
            events.DeliveryStatusChanged.ROUTING_KEY,
            events.ResponseRecorded.ROUTING_KEY,
            events.EmailFeedback.ROUTING_KEY,
        ),
    ),
    QueueSpec(
        "subscriptions.actions",
        (
            events.ActionPublished.ROUTING_KEY,
            events.ActionUpdated.ROUTING_KEY,
            events.ActionClosed.ROUTING_KEY,
            events.ActionTargetsChanged.ROUTING_KEY,
        ),
    ),
    QueueSpec("subscriptions.suppressions", (events.RecipientSuppressed.ROUTING_KEY,)),
    # Admin tokens are issued by the publisher (`uanet token create`); subscriptions checks them
    # for the data-rights endpoints.
    QueueSpec(
        "subscriptions.tokens",
        (events.ApiTokenIssued.ROUTING_KEY, events.ApiTokenRevoked.ROUTING_KEY),
    ),
    QueueSpec(
        "dispatcher.actions",
        (
            events.ActionPublished.ROUTING_KEY,
            events.ActionUpdated.ROUTING_KEY,
            events.ActionClosed.ROUTING_KEY,
            events.ActionTargetsChanged.ROUTING_KEY,
            events.SubscriberErased.ROUTING_KEY,
        ),
    ),
    # A batch may arrive before the dispatcher has heard of its action: short first delays.
    QueueSpec("dispatcher.batches", (events.DeliveryBatch.ROUTING_KEY,), (1, 5, 30, 120, 600)),
    QueueSpec(
        "dispatcher.messages", (events.TransactionalMessage.ROUTING_KEY,), (1, 5, 30, 120, 600)
    ),
    # Letters to officials: 60 s is also the wait of a letter held back by a target's rate limit.
    QueueSpec("dispatcher.letters", (events.LetterRequested.ROUTING_KEY,), (1, 5, 60, 300, 900)),
    QueueSpec("publisher.targets", (events.TargetBounced.ROUTING_KEY,)),
    # OSDI outreaches: letters written, and erasures that take the person off them.
    QueueSpec(
        "publisher.outreaches",
        (events.LetterWritten.ROUTING_KEY, events.SubscriberErased.ROUTING_KEY),
    ),
    # What staff do in another service: erasures for the audit log, the last use of a token.
    QueueSpec(
        "publisher.audit",
        (events.SubscriberErased.ROUTING_KEY, events.ApiTokenUsed.ROUTING_KEY),
    ),
    # What the tools a campaign runs hear of (outbound webhooks, contract §8).
    QueueSpec(
        "publisher.webhooks",
        (
            events.SubscriberChanged.ROUTING_KEY,
            events.SubscriberUnsubscribed.ROUTING_KEY,
            events.SubscriberErased.ROUTING_KEY,
            events.ResponseRecorded.ROUTING_KEY,
        ),
    ),
)
QUEUES_BY_NAME = {q.name: q for q in QUEUES}


def queue_spec(name: str) -> QueueSpec:
    return QUEUES_BY_NAME[name]


# Replicas of every queue (Raft: a leader and followers), each on another node of the cluster;
# a queue survives the loss of any one node of three. Fewer nodes: one replica on each.
QUORUM_REPLICAS = 3


def _replicated() -> dict[str, Any]:
    return {"x-queue-type": "quorum", "x-quorum-initial-group-size": QUORUM_REPLICAS}


def work_queue_arguments() -> dict[str, Any]:
    """The arguments of every work queue (a redeclaration must repeat them exactly)."""
    return {
        **_replicated(),
        "x-delivery-limit": DELIVERY_LIMIT,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
    }


def delay_queue_arguments(spec: QueueSpec, delay: int) -> dict[str, Any]:
    """A delay queue: queue-wide TTL, then dead-lettered back to its work queue."""
    return {
        **_replicated(),
        "x-message-ttl": delay * 1000,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": spec.name,
        # The way back is at-least-once: a message whose wait ends while a leader changes is
        # moved again, not dropped (the default strategy, at-most-once, may drop it).
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def dead_letter_queue_arguments() -> dict[str, Any]:
    return _replicated()


async def _declare_queue(
    channel: AbstractChannel, name: str, arguments: dict[str, Any]
) -> AbstractQueue:
    """Declare a queue; one an older release declared with other arguments (a queue's arguments
    never change) is used as it is, so an upgrade needs no downtime; README: "Deploy on a
    cluster" says how to move such a queue to the replicated shape."""
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aio_pika.exceptions.ChannelPreconditionFailed:
        log.warning("queue %s keeps the arguments it was declared with", name)
        await channel.reopen()
        return await channel.declare_queue(name, passive=True)


async def declare_topology(
    channel: AbstractChannel, queues: Sequence[QueueSpec] = QUEUES
) -> AbstractExchange:
    """Declare every exchange, queue and binding (idempotent); return the events exchange.

    ``queues`` defaults to the project's topology; tests pass their own specs (short delays).
    """
    exchange = await channel.declare_exchange(
        EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
    )
    dlx = await channel.declare_exchange(
        DEAD_LETTER_EXCHANGE, aio_pika.ExchangeType.FANOUT, durable=True
    )
    dead = await _declare_queue(channel, DEAD_LETTER_QUEUE, dead_letter_queue_arguments())
    await dead.bind(dlx)
    for spec in queues:
        queue = await _declare_queue(channel, spec.name, work_queue_arguments())
        for key in spec.bindings:
            await queue.bind(exchange, routing_key=key)
        for delay in sorted(set(spec.retry_delays)):
            # Queue-wide TTL: every message in it waits the same, so none blocks another.
            await _declare_queue(
                channel, spec.delay_queue(delay), delay_queue_arguments(spec, delay)
            )
    return exchange


class Retry(Exception):
    """A temporary failure: handle this message again later (through a delay queue).

    ``defer=True`` is a wait, not a failure (e.g. a rate limit): it does not use up the
    message's retries, so it needs an end of its own (the letters' one is the action's close).
    """

    def __init__(self, reason: str, *, delay: int | None = None, defer: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay
        self.defer = defer


class Reject(Exception):
    """This message can never be handled: dead-letter it with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Delivery:
    """What a handler may want to know about the AMQP message it is handling."""

    queue: str
    routing_key: str
    attempt: int
    headers: dict[str, Any] = field(default_factory=dict)


M = TypeVar("M", bound=events.Message)
Handler = Callable[[Any, Delivery], Awaitable[None]]


def _header_int(value: object) -> int:
    """An integer header (the attempt count); anything unreadable counts as 0."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int | float | str | bytes):
        try:
            return max(int(value), 0)
        except ValueError:
            return 0
    return 0


def _header_str(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def _model_for(routing_key: str, models: Sequence[type[events.Message]]) -> type[events.Message]:
    for model in models:
        if model.ROUTING_KEY == routing_key:
            return model
    raise Reject(f"no handler for routing key {routing_key!r}")


# A reconnected connection whose channels are not back this many seconds after it is up is
# dropped and made again (see Broker._watch); checked this often.
RESTORE_TIMEOUT = 20.0
WATCH_INTERVAL = 2.0


class Broker:
    """One robust connection per process: a confirming channel to publish, one per consumer."""

    def __init__(
        self,
        url: str,
        *,
        name: str = "uanet",
        queues: Sequence[QueueSpec] | None = None,
        sender_check: SenderCheck | None = None,
    ) -> None:
        self.url = url
        self.name = name
        # Set on every message published (RabbitMQ checks it is the connection's user), and
        # what the sender check reads on the messages consumed (broker_users.py).
        self.user = amqp_user(url)
        self.sender_check = sender_check
        # The topology this broker declares and consumes (the project's own unless a test says).
        self.queues: tuple[QueueSpec, ...] = QUEUES if queues is None else tuple(queues)
        self._specs = {q.name: q for q in self.queues}
        self._connection: AbstractRobustConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._publish_lock = asyncio.Lock()
        # Handlers still running (see _run_shielded); close() lets them finish first.
        self._inflight: set[asyncio.Task[None]] = set()
        # Messages being handled, settling included (see drain()).
        self._handling: set[asyncio.Task[Any]] = set()
        # Every consumer started, to cancel on a graceful stop.
        self._consumers: list[tuple[AbstractQueue, str]] = []
        # Connections lost and made again (to the same node or another), since connect().
        self.reconnections = 0
        # Connections dropped by the watch because their channels did not come back.
        self.forced_reconnections = 0
        self._watch_task: asyncio.Task[None] | None = None
        # A channel of its own for queue_depth's passive declares.
        self._probe: AbstractRobustChannel | None = None

    async def connect(self) -> None:
        # One node of the cluster that answers; another when it goes away (broker_nodes).
        connection = await connect_cluster(self.url, name=self.name)
        try:
            # The topology on a channel of its own: a robust channel declares again, on every
            # reconnection, what was declared on it, and the queues need that only once.
            setup = await connection.channel(publisher_confirms=False)
            await declare_topology(setup, self.queues)
            await setup.close()
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(
                EVENTS_EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except BaseException:
            # Connected but the topology failed (or we were cancelled): do not leak a connection
            # that keeps reconnecting by itself when the caller tries again.
            await connection.close()
            raise
        connection.reconnect_callbacks.add(self._reconnected)
        self._connection, self._channel, self._exchange = connection, channel, exchange
        self._watch_task = asyncio.create_task(self._watch(), name=f"broker-watch-{self.name}")

    def _reconnected(self, connection: object) -> None:
        self.reconnections += 1
        log.info("reconnected to the broker", extra={"node": self.node})

    def _channels(self) -> list[AbstractChannel]:
        channels = [self._channel] if self._channel is not None else []
        return channels + [queue.channel for queue, _ in self._consumers]

    async def _watch(self) -> None:
        """Drop a connection that is up but whose channels are not all back, so it is made
        again.

        After a reconnection aio-pika restores each channel (its exchanges, queues, consumers)
        with broker calls it does not bound. A quorum queue declared while its replicas elect a
        new leader (the node that led it just went away) was seen never answered: the
        connection stayed open and the process published and consumed nothing from then on.
        Such a channel is open at the protocol level, so "closed" alone does not show it: a
        channel still being restored, or a consumer this process started that its channel no
        longer has, counts as not back. A connection made again declares them anew.
        """
        stuck_since: float | None = None
        loop = asyncio.get_running_loop()
        while self._connection is not None:
            await asyncio.sleep(WATCH_INTERVAL)
            try:
                stuck_since = await self._watch_once(stuck_since, loop.time())
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the watch must outlive whatever it looks at
                log.warning("broker watch failed; looking again", exc_info=True)
                stuck_since = None

    def _not_back(self) -> str | None:
        """Why the channels are not all working (None when they are)."""
        for channel in self._channels():
            if channel.is_closed:
                return "a channel closed"
            # RobustChannel's own flag: set once its exchanges, queues and consumers are back.
            restored = getattr(channel, "_RobustChannel__restored", None)
            if isinstance(restored, asyncio.Event) and not restored.is_set():
                return "a channel not restored"
        for queue, tag in self._consumers:
            underlay = getattr(getattr(queue.channel, "_channel", None), "channel", None)
            consumers = getattr(underlay, "consumers", None)
            if isinstance(consumers, dict) and tag not in consumers:
                return f"no consumer on {queue.name}"
        return None

    async def _watch_once(self, stuck_since: float | None, now: float) -> float | None:
        """One look: returns since when the channels have been stuck (None if they are not)."""
        connection = self._connection
        transport = connection.transport if connection is not None else None
        up = transport is not None and not transport.connection.is_closed
        if transport is None or not up:
            return None  # reconnecting, or the broker is away: aio-pika's own loop is on it
        why = self._not_back()
        if why is None:
            return None
        if stuck_since is None or now - stuck_since < RESTORE_TIMEOUT:
            return now if stuck_since is None else stuck_since
        self.forced_reconnections += 1
        log.warning(
            "broker channels not restored; connecting again",
            extra={"node": self.node, "after_s": RESTORE_TIMEOUT, "why": why},
        )
        try:
            async with asyncio.timeout(5):
                await transport.connection.close(ConnectionError("channels not restored"))
        except Exception:  # noqa: BLE001 - closing is all we want; the next look checks again
            log.warning("could not drop the broker connection", exc_info=True)
        return None

    async def stop_consuming(self) -> None:
        """A graceful stop begins: the broker delivers nothing more to this process (what it
        holds unacked goes back to the queue when the channel closes)."""
        consumers, self._consumers = self._consumers, []
        for queue, tag in consumers:
            try:
                await queue.cancel(tag, timeout=5)
            except Exception:  # noqa: BLE001 - the connection is going anyway
                log.warning("could not cancel a consumer", extra={"queue": queue.name})

    async def drain(self, *, timeout: float) -> bool:
        """Wait until every message under way is handled and settled (acked, retried or
        dead-lettered); True if they all were within ``timeout``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._handling or self._inflight:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.wait({*self._handling, *self._inflight}, timeout=left)
        return True

    async def close(self, *, drain_timeout: float = 10.0) -> None:
        if self._handling or self._inflight:
            # A graceful stop: let the handlers under way commit (bounded), then close.
            await self.drain(timeout=drain_timeout)
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            self._channel = None
            self._probe = None
            self._exchange = None
            await connection.close()

    @property
    def connected(self) -> bool:
        """True while the link to the broker is up (False while the connection reconnects)."""
        connection = self._connection
        return connection is not None and not connection.is_closed and connection.connected.is_set()

    @property
    def node(self) -> str | None:
        """host:port of the broker node this process is connected to (None while it is not)."""
        connection = self._connection
        if not self.connected or not isinstance(connection, ClusterConnection):
            return None
        return connection.node

    @property
    def channel(self) -> AbstractChannel:
        if self._channel is None:
            raise RuntimeError("broker not connected")
        return self._channel

    async def publish(
        self,
        routing_key: str,
        body: bytes,
        *,
        message_id: str,
        headers: dict[str, Any] | None = None,
        exchange: str = EVENTS_EXCHANGE,
        timeout: float = 10.0,
    ) -> None:
        """Publish persistently; returns once the broker confirmed (raises otherwise)."""
        message = aio_pika.Message(
            body,
            message_id=message_id,
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            headers=headers or {},
            timestamp=datetime.now(UTC),
            user_id=self.user,
        )
        channel = self.channel
        # The whole publish is bounded, the wait for a reconnecting connection included
        # (aio-pika bounds only the confirm): a caller that publishes again (the outbox relay,
        # a handler's settling) must get its error, not wait on a node that never comes back.
        async with asyncio.timeout(timeout):
            if exchange == EVENTS_EXCHANGE and self._exchange is not None:
                target = self._exchange
            elif exchange == "":
                target = channel.default_exchange
            else:
                target = await channel.get_exchange(exchange, ensure=False)
            await target.publish(message, routing_key=routing_key, mandatory=False)

    async def queue_depth(self, queue_name: str, *, timeout: float = 5.0) -> int | None:
        """Messages ready in ``queue_name`` (not those delivered and unacked), or None when the
        broker cannot say now (reconnecting, the queue missing, no permission)."""
        if self._connection is None or not self.connected:
            return None
        try:
            async with asyncio.timeout(timeout):
                if self._probe is None or self._probe.is_closed:
                    self._probe = await self._connection.channel(publisher_confirms=False)
                # Passive and not robust: asks, declares nothing, and is not re-declared after
                # a reconnection. A refusal closes only this probing channel.
                queue = await self._probe.declare_queue(queue_name, passive=True, robust=False)
        except Exception:  # noqa: BLE001 - a depth we cannot know is not an error of the caller
            probe, self._probe = self._probe, None
            if probe is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(probe.close(), 2)
            return None
        result = queue.declaration_result
        return int(result.message_count) if result.message_count is not None else None

    async def publish_event(self, event: events.Message) -> None:
        await self.publish(
            event.ROUTING_KEY,
            event.model_dump_json().encode(),
            message_id=str(event.message_id),
        )

    async def dead_letter(
        self, message: AbstractIncomingMessage, *, queue: str, reason: str
    ) -> None:
        headers = dict(message.headers or {})
        headers.update(
            {
                H_REASON: reason[:500],
                H_QUEUE: queue,
                # A message that came back from a delay queue (or a replay) arrived through the
                # default exchange: its original routing key is the header, not message.routing_key.
                H_ROUTING_KEY: str(headers.get(H_ROUTING_KEY) or message.routing_key or ""),
                H_FAILED_AT: datetime.now(UTC).isoformat(),
            }
        )
        await self.publish(
            "",
            message.body,
            message_id=message.message_id or "",
            headers=headers,
            exchange=DEAD_LETTER_EXCHANGE,
        )

    async def consume(
        self,
        queue_name: str,
        handler: Handler,
        models: Sequence[type[events.Message]],
        *,
        prefetch: int = 20,
    ) -> None:
        """Start consuming ``queue_name``; each body is parsed as the model of its routing key."""
        if self._connection is None:
            raise RuntimeError("broker not connected")
        spec = self._specs.get(queue_name) or queue_spec(queue_name)
        channel = await self._connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        # Declared (passively: the topology made it), not get_queue(ensure=False): only a queue
        # declared on the robust channel is remembered by it, and only then is its consumer
        # restored after a reconnection (on whichever node of the cluster).
        queue = await channel.declare_queue(queue_name, passive=True)

        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._handling.add(task)
            try:
                await self._handle(spec, message, handler, models)
            finally:
                if task is not None:
                    self._handling.discard(task)

        tag = await queue.consume(on_message)
        self._consumers.append((queue, tag))

    async def _handle(
        self,
        spec: QueueSpec,
        message: AbstractIncomingMessage,
        handler: Handler,
        models: Sequence[type[events.Message]],
    ) -> None:
        headers = dict(message.headers or {})
        attempt = _header_int(headers.get(H_ATTEMPT))
        # A retried message comes back through the default exchange, so the original routing key
        # travels in a header.
        routing_key = str(headers.get(H_ROUTING_KEY) or message.routing_key or "")
        delivery = Delivery(spec.name, routing_key, attempt, headers)
        try:
            try:
                try:
                    if self.sender_check is not None and (
                        refused := self.sender_check.refusal(routing_key, message.user_id, headers)
                    ):
                        raise Reject(refused)
                    model = _model_for(routing_key, models)
                    payload = model.model_validate_json(message.body)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"]) or "body"
                    raise Reject(f"malformed {routing_key}: {where}: {first['msg']}") from None
                await self._run_shielded(handler(payload, delivery))
            except Reject as exc:
                await self._settle_dead(spec, message, exc.reason)
                return
            except Retry as exc:
                await self._settle_retry(
                    spec, message, routing_key, attempt, exc.reason, exc.delay, defer=exc.defer
                )
                return
            except asyncio.CancelledError:
                # Shutting down mid-message: leave it unacked so the broker redelivers it.
                raise
            except Exception as exc:  # noqa: BLE001 - a handler bug must not become a crash loop
                log.exception("handler failed", extra={"queue": spec.name})
                reason = f"{type(exc).__name__} in handler"
                await self._settle_retry(spec, message, routing_key, attempt, reason, None)
                return
            await message.ack()
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the broker away while settling: let it redeliver
            # Publishing to the delay/dead-letter queue (or the ack) failed. Give the message back
            # rather than holding it unacked on a live channel; the quorum queue's delivery limit
            # dead-letters it if this keeps happening. On a lost channel the broker requeues it.
            log.warning("could not settle a message; requeued", extra={"queue": spec.name})
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            MESSAGES_CONSUMED.labels(spec.name, "requeued").inc()
            return
        MESSAGES_CONSUMED.labels(spec.name, "ok").inc()

    async def _run_shielded(self, work: Awaitable[None]) -> None:
        """Run a handler so that losing the channel does not cancel it halfway.

        aiormq cancels a channel's consumer callbacks when the channel closes (a broker restart,
        ``close_all_connections``). A handler cancelled mid-transaction can leave an SQLite write
        lock behind, or a message accepted by SMTP but not recorded. Shielded, it finishes and
        commits; only its ack is lost, and the redelivered message is recognised (every consumer
        is idempotent).
        """
        task: asyncio.Task[None] = asyncio.ensure_future(work)
        self._inflight.add(task)
        task.add_done_callback(self._handler_done)
        await asyncio.shield(task)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        self._inflight.discard(task)
        if not task.cancelled():
            # Retrieved here too: if the caller was cancelled, nobody else will; the message
            # comes back and is handled again.
            task.exception()

    async def _settle_dead(
        self, spec: QueueSpec, message: AbstractIncomingMessage, reason: str
    ) -> None:
        log.warning("dead-lettered", extra={"queue": spec.name, "reason": reason})
        await self.dead_letter(message, queue=spec.name, reason=reason)
        await message.ack()
        MESSAGES_CONSUMED.labels(spec.name, "dead_lettered").inc()

    async def _settle_retry(
        self,
        spec: QueueSpec,
        message: AbstractIncomingMessage,
        routing_key: str,
        attempt: int,
        reason: str,
        delay: int | None,
        *,
        defer: bool = False,
    ) -> None:
        if attempt >= len(spec.retry_delays) and not defer:
            await self._settle_dead(spec, message, f"gave up after {attempt} retries: {reason}")
            return
        if delay in spec.retry_delays:
            wait = delay
        else:
            wait = spec.retry_delays[min(attempt, len(spec.retry_delays) - 1)]
        headers = dict(message.headers or {})
        next_attempt = attempt if defer else attempt + 1
        headers.update(
            {H_ATTEMPT: next_attempt, H_ROUTING_KEY: routing_key, H_REASON: reason[:500]}
        )
        if self.sender_check is not None:  # republished as us: who sent it travels along
            headers[H_SENT_BY] = self.sender_check.sender(message.user_id, headers) or ""
        await self.publish(
            spec.delay_queue(wait),
            message.body,
            message_id=message.message_id or "",
            headers=headers,
            exchange="",
        )
        await message.ack()
        MESSAGES_CONSUMED.labels(spec.name, "retried").inc()


@dataclass
class DeadLetter:
    message_id: str
    queue: str
    routing_key: str
    reason: str
    failed_at: str
    body: bytes


def _describe(message: AbstractIncomingMessage) -> DeadLetter:
    headers = dict(message.headers or {})
    queue = str(headers.get(H_QUEUE) or "")
    reason = str(headers.get(H_REASON) or "")
    deaths = headers.get("x-death")
    if not queue and isinstance(deaths, list) and deaths:
        # Dead-lettered by the broker itself (delivery limit): x-death names the queue. A reason
        # header here is only that of an earlier retry, so it comes second.
        first = deaths[0]
        if isinstance(first, dict):
            queue = _header_str(first.get("queue"))
            broker_reason = f"broker: {_header_str(first.get('reason'))}"
            reason = f"{broker_reason} (last retry: {reason})" if reason else broker_reason
    return DeadLetter(
        message_id=message.message_id or "",
        queue=queue,
        routing_key=str(headers.get(H_ROUTING_KEY) or message.routing_key or ""),
        reason=reason,
        failed_at=str(headers.get(H_FAILED_AT) or ""),
        body=message.body,
    )


async def list_dead_letters(
    url: str, limit: int = 1000, *, queues: Sequence[QueueSpec] | None = None
) -> list[DeadLetter]:
    """Read the dead-letter queue without removing anything."""
    connection = await connect_cluster(url, name="uanet-cli")
    try:
        channel = await connection.channel()
        await declare_topology(channel, QUEUES if queues is None else queues)
        queue = await channel.get_queue(DEAD_LETTER_QUEUE)
        found: list[DeadLetter] = []
        held: list[AbstractIncomingMessage] = []
        while len(found) < limit:
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            held.append(message)
            found.append(_describe(message))
        for message in held:
            await message.nack(requeue=True)
        return found
    finally:
        await connection.close()


# Headers a replayed message must not carry back: its failure record and the broker's.
_FAILURE_HEADERS = frozenset(
    {
        H_ATTEMPT,
        H_REASON,
        H_QUEUE,
        H_FAILED_AT,
        "x-death",
        "x-first-death-exchange",
        "x-first-death-queue",
        "x-first-death-reason",
        "x-last-death-exchange",
        "x-last-death-queue",
        "x-last-death-reason",
        "x-delivery-count",
    }
)


async def replay_dead_letters(
    url: str, message_id: str | None = None, *, queues: Sequence[QueueSpec] | None = None
) -> int:
    """Send dead letters back to the queue they came from (all, or one by message id).

    Only to a queue of the topology (``queues``, the project's by default): a publish to a queue
    that does not exist would be dropped, so such a letter stays where it is.
    """
    broker = Broker(url, name="uanet-cli", queues=queues)
    await broker.connect()
    known = {spec.name for spec in broker.queues}
    replayed = 0
    try:
        channel = broker.channel
        queue = await channel.declare_queue(DEAD_LETTER_QUEUE, passive=True)
        # Only what is there now: a replayed message that fails again comes back to this queue
        # while we read it, and must not be replayed a second time in the same run.
        waiting = queue.declaration_result.message_count or 0
        kept: list[AbstractIncomingMessage] = []
        for _ in range(waiting):
            message = await queue.get(no_ack=False, fail=False)
            if message is None:
                break
            letter = _describe(message)
            if (message_id and letter.message_id != message_id) or letter.queue not in known:
                kept.append(message)
                continue
            headers = {
                k: v for k, v in dict(message.headers or {}).items() if k not in _FAILURE_HEADERS
            }
            headers[H_ROUTING_KEY] = letter.routing_key
            await broker.publish(
                letter.queue,
                message.body,
                message_id=letter.message_id,
                headers=headers,
                exchange="",
            )
            await message.ack()
            replayed += 1
        for message in kept:
            await message.nack(requeue=True)
        return replayed
    finally:
        await broker.close()
