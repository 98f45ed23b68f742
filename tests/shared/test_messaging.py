"""shared.messaging against the real RabbitMQ (a fresh vhost per test)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable

import aio_pika

from shared import events
from shared.messaging import (
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    DELIVERY_LIMIT,
    EVENTS_EXCHANGE,
    H_QUEUE,
    H_REASON,
    H_ROUTING_KEY,
    QUEUES,
    QUORUM_REPLICAS,
    Broker,
    DeadLetter,
    Delivery,
    Reject,
    Retry,
    declare_topology,
    list_dead_letters,
    replay_dead_letters,
)
from tests.shared.conftest import (
    OTHER,
    TEST_QUEUES,
    WORK,
    Recorder,
    erased,
    eventually,
    queue_arguments,
    queue_depth,
)


def _raise(exc: Exception) -> Callable[[Delivery], None]:
    """Fail every time with ``exc``."""

    def fail(_: Delivery) -> None:
        raise exc

    return fail


def _first_time(exc: Exception) -> Callable[[Delivery], None]:
    """Fail the first attempt only."""

    def fail(delivery: Delivery) -> None:
        if delivery.attempt == 0:
            raise exc

    return fail


async def _dead(amqp_url: str, count: int) -> list[DeadLetter]:
    async def probe() -> list[DeadLetter]:
        letters = await list_dead_letters(amqp_url, queues=TEST_QUEUES)
        return letters if len(letters) >= count else []

    letters: list[DeadLetter] = await eventually(probe)
    return letters


# ---- topology --------------------------------------------------------------------------------


async def test_declare_topology_is_idempotent_with_quorum_queues_and_delay_queues(
    amqp_url: str,
) -> None:
    connection = await aio_pika.connect(amqp_url)
    try:
        for _ in range(2):  # twice on one channel, then once more on another
            await declare_topology(await connection.channel())
        exchange = await declare_topology(await connection.channel())
        assert exchange.name == EVENTS_EXCHANGE
        # The exchanges exist as declared (a passive declare would close the channel otherwise).
        channel = await connection.channel()
        await channel.declare_exchange(EVENTS_EXCHANGE, passive=True)
        await channel.declare_exchange(DEAD_LETTER_EXCHANGE, passive=True)
    finally:
        await connection.close()

    queues = await queue_arguments(amqp_url)
    dead = queues[DEAD_LETTER_QUEUE]
    assert dead["type"] == "quorum" and dead["durable"] is True
    for spec in QUEUES:
        work = queues[spec.name]
        assert work["type"] == "quorum", spec.name
        assert work["durable"] is True
        assert work["arguments"]["x-delivery-limit"] == DELIVERY_LIMIT
        assert work["arguments"]["x-dead-letter-exchange"] == DEAD_LETTER_EXCHANGE
        assert work["arguments"]["x-quorum-initial-group-size"] == QUORUM_REPLICAS
        for delay in spec.retry_delays:
            delayed = queues[spec.delay_queue(delay)]
            assert delayed["durable"] is True
            # Replicated too: a message waiting for its retry survives the loss of a node.
            assert delayed["type"] == "quorum", spec.delay_queue(delay)
            assert delayed["arguments"]["x-quorum-initial-group-size"] == QUORUM_REPLICAS
            assert delayed["arguments"]["x-dead-letter-strategy"] == "at-least-once"
            assert delayed["arguments"]["x-message-ttl"] == delay * 1000
            assert delayed["arguments"]["x-dead-letter-exchange"] == ""
            assert delayed["arguments"]["x-dead-letter-routing-key"] == spec.name
    # Nothing else was made: work queues, their delay queues and the dead-letter queue.
    expected = {DEAD_LETTER_QUEUE} | {s.name for s in QUEUES}
    expected |= {s.delay_queue(d) for s in QUEUES for d in s.retry_delays}
    assert set(queues) == expected


async def test_queues_an_older_release_declared_are_used_as_they_are(amqp_url: str) -> None:
    """An upgrade: the queues exist with the older arguments (no replica count, a classic delay
    queue); the services still start, publish and consume through them."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(
            WORK.name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": DELIVERY_LIMIT,
                "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            },
        )
        await channel.declare_queue(
            WORK.delay_queue(1),
            durable=True,
            arguments={
                "x-message-ttl": 1000,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": WORK.name,
            },
        )
    finally:
        await connection.close()
    broker = Broker(amqp_url, name="uanet-test-upgrade", queues=TEST_QUEUES)
    await broker.connect()
    try:
        recorder = Recorder()
        first = erased()
        recorder.fail[str(first.message_id)] = lambda d: _retry_once(d)
        await broker.consume(WORK.name, recorder, [events.SubscriberErased])
        await broker.publish_event(first)
        # Handled after a retry through the older (classic) delay queue.
        await eventually(lambda: recorder.ids() == [str(first.message_id)])
    finally:
        await broker.close()
    queues = await queue_arguments(amqp_url)
    assert "x-quorum-initial-group-size" not in queues[WORK.name]["arguments"]
    assert queues[WORK.delay_queue(1)]["type"] == "classic"
    assert queues[OTHER.name]["arguments"]["x-quorum-initial-group-size"] == QUORUM_REPLICAS


def _retry_once(delivery: Delivery) -> None:
    if delivery.attempt == 0:
        raise Retry("once")


def test_every_routing_key_is_bound_to_the_queues_of_the_architecture() -> None:
    # Each message model reaches at least one queue (a publish nobody is bound to is lost).
    bound = {key for spec in QUEUES for key in spec.bindings}
    assert {m.ROUTING_KEY for m in events.ALL_MESSAGES} <= bound


# ---- publish and consume -------------------------------------------------------------------------


async def test_published_event_reaches_the_handler_parsed_and_is_acked(
    broker: Broker, amqp_url: str
) -> None:
    recorder = Recorder()
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])
    event = erased()
    await broker.publish_event(event)

    await eventually(lambda: recorder.got)
    message, delivery = recorder.got[0]
    assert isinstance(message, events.SubscriberErased)
    assert message == event
    assert delivery == Delivery(WORK.name, event.ROUTING_KEY, 0, delivery.headers)

    # Acked: once the consumer is gone nothing returns to the queue.
    await broker.close()
    assert await queue_depth(amqp_url, WORK.name) == 0
    assert await list_dead_letters(amqp_url, queues=TEST_QUEUES) == []


async def test_retry_goes_through_the_delay_queue_and_comes_back_with_the_routing_key(
    broker: Broker, amqp_url: str
) -> None:
    recorder = Recorder()
    event = erased()
    attempts: list[int] = []

    def once(delivery: Delivery) -> None:
        attempts.append(delivery.attempt)
        if delivery.attempt == 0:
            raise Retry("smtp 451 try later")

    recorder.fail[str(event.message_id)] = once
    # A handler may name the delay (one of the queue's, else the queue's own for the attempt).
    chosen = [erased(), erased()]
    for item, delay in zip(chosen, (1, 999), strict=True):
        recorder.fail[str(item.message_id)] = _first_time(Retry("rate limited", delay=delay))
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])
    await broker.publish_event(event)
    for item in chosen:
        await broker.publish_event(item)

    await eventually(lambda: len(recorder.got) == 3, timeout=20)
    message, delivery = next(g for g in recorder.got if g[0] == event)
    assert attempts == [0, 1]
    assert all(d.attempt == 1 for _, d in recorder.got)
    assert delivery.attempt == 1
    # Back through the default exchange, yet the handler sees the original routing key.
    assert delivery.routing_key == events.SubscriberErased.ROUTING_KEY
    assert delivery.headers["x-uanet-attempt"] == 1
    assert await list_dead_letters(amqp_url, queues=TEST_QUEUES) == []


async def test_after_the_last_retry_the_message_is_dead_lettered_with_the_reason(
    broker: Broker, amqp_url: str
) -> None:
    recorder = Recorder()
    event, buggy = erased(), erased()
    recorder.fail[str(event.message_id)] = _raise(Retry("smtp 451 try later"))
    recorder.fail[str(buggy.message_id)] = _raise(ZeroDivisionError("boom"))
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])
    await broker.publish_event(event)
    await broker.publish_event(buggy)

    letters = {d.message_id: d for d in await _dead(amqp_url, 2)}
    letter = letters[str(event.message_id)]
    assert letter.queue == WORK.name
    assert letter.reason == f"gave up after {len(WORK.retry_delays)} retries: smtp 451 try later"
    # The original routing key survives the trips through the delay queues.
    assert letter.routing_key == events.SubscriberErased.ROUTING_KEY
    assert letter.failed_at
    attempts = [a for key, a in recorder.seen if key == str(event.message_id)]
    assert attempts == list(range(len(WORK.retry_delays) + 1))
    assert recorder.got == []
    # Any other exception in a handler is retried the same way, then dead-lettered.
    bug = letters[str(buggy.message_id)]
    assert bug.reason.endswith("ZeroDivisionError in handler")
    assert bug.routing_key == events.SubscriberErased.ROUTING_KEY


async def test_a_deferral_waits_in_the_delay_queue_without_using_up_the_retries(
    broker: Broker, amqp_url: str
) -> None:
    recorder = Recorder()
    event = erased()
    waits = len(WORK.retry_delays) + 1  # more than a failing message would get

    def held(delivery: Delivery) -> None:
        if len([key for key, _ in recorder.seen if key == str(event.message_id)]) <= waits:
            raise Retry("target over its rate", delay=1, defer=True)

    recorder.fail[str(event.message_id)] = held
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])
    await broker.publish_event(event)

    await eventually(lambda: len(recorder.got) == 1, timeout=20)
    assert [attempt for _, attempt in recorder.seen] == [0] * (waits + 1)
    assert await list_dead_letters(amqp_url, queues=TEST_QUEUES) == []


async def test_reject_and_malformed_bodies_are_dead_lettered_and_the_consumer_goes_on(
    broker: Broker, amqp_url: str
) -> None:
    recorder = Recorder()
    rejected = erased()
    recorder.fail[str(rejected.message_id)] = _raise(Reject("subscriber unknown"))
    await broker.consume(WORK.name, recorder, [events.SubscriberErased], prefetch=1)

    key = events.SubscriberErased.ROUTING_KEY
    await broker.publish_event(rejected)
    await broker.publish(key, b"{not json", message_id="bad-json")
    missing = json.dumps({"message_id": str(uuid.uuid4())}).encode()  # no subscriber_id
    await broker.publish(key, missing, message_id="missing-field")
    good = erased()
    await broker.publish_event(good)

    await eventually(lambda: recorder.got)
    assert recorder.ids() == [str(good.message_id)]
    letters = {d.message_id: d for d in await _dead(amqp_url, 3)}
    assert set(letters) == {str(rejected.message_id), "bad-json", "missing-field"}
    assert letters[str(rejected.message_id)].reason == "subscriber unknown"
    assert letters["bad-json"].reason.startswith(f"malformed {key}: body:")
    assert letters["missing-field"].reason.startswith(f"malformed {key}: subscriber_id:")
    for letter in letters.values():
        assert letter.queue == WORK.name
        assert letter.routing_key == key

    # The headers themselves, as any other tool would read them.
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(DEAD_LETTER_QUEUE)
        raw = await queue.get(no_ack=False)
        assert raw.headers[H_QUEUE] == WORK.name
        assert raw.headers[H_REASON]
        assert raw.headers[H_ROUTING_KEY] == key
        assert raw.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        await raw.nack(requeue=True)
    finally:
        await connection.close()


async def test_a_routing_key_without_a_model_is_dead_lettered(
    broker: Broker, amqp_url: str
) -> None:
    recorder = Recorder()
    # The queue is bound to response.recorded too, but this consumer only knows SubscriberErased.
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])
    stray = events.ResponseRecorded(
        action_id=uuid.uuid4(), subscriber_id=uuid.uuid4(), kind="letter", count=1
    )
    await broker.publish_event(stray)
    good = erased()
    await broker.publish_event(good)

    [letter] = await _dead(amqp_url, 1)
    assert letter.message_id == str(stray.message_id)
    assert letter.reason == "no handler for routing key 'response.recorded'"
    assert letter.routing_key == "response.recorded"
    await eventually(lambda: recorder.got)
    assert recorder.ids() == [str(good.message_id)]


# ---- dead letters: list and replay ---------------------------------------------------------------


async def test_listing_dead_letters_leaves_them_in_place(broker: Broker, amqp_url: str) -> None:
    recorder = Recorder()
    sent = [erased() for _ in range(3)]
    for event in sent:
        recorder.fail[str(event.message_id)] = _raise(Reject("no"))
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])
    for event in sent:
        await broker.publish_event(event)

    first = await _dead(amqp_url, 3)
    second = await list_dead_letters(amqp_url, queues=TEST_QUEUES)
    assert [d.message_id for d in first] == [d.message_id for d in second]
    assert {d.message_id for d in first} == {str(e.message_id) for e in sent}
    assert await queue_depth(amqp_url, DEAD_LETTER_QUEUE) == 3
    limited = await list_dead_letters(amqp_url, 2, queues=TEST_QUEUES)
    assert len(limited) == 2
    assert await queue_depth(amqp_url, DEAD_LETTER_QUEUE) == 3


async def test_replay_one_by_id_then_all(broker: Broker, amqp_url: str) -> None:
    recorder = Recorder()
    retried, rejected = erased(), erased()
    recorder.fail[str(retried.message_id)] = _raise(Retry("later"))
    recorder.fail[str(rejected.message_id)] = _raise(Reject("never"))
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])
    await broker.publish_event(retried)
    await broker.publish_event(rejected)
    await _dead(amqp_url, 2)
    # Without the test topology, test.work is not a queue replay knows: the letters stay.
    assert await replay_dead_letters(amqp_url) == 0

    recorder.fail.clear()  # whatever was wrong is fixed now
    assert await replay_dead_letters(amqp_url, str(retried.message_id), queues=TEST_QUEUES) == 1
    await eventually(lambda: recorder.got)
    assert recorder.ids() == [str(retried.message_id)]
    _, delivery = recorder.got[0]
    # Back on its queue as new: first attempt, original routing key, no failure record.
    assert delivery.attempt == 0
    assert delivery.routing_key == events.SubscriberErased.ROUTING_KEY
    assert H_REASON not in delivery.headers and H_QUEUE not in delivery.headers
    remaining = await list_dead_letters(amqp_url, queues=TEST_QUEUES)
    assert [d.message_id for d in remaining] == [str(rejected.message_id)]

    assert await replay_dead_letters(amqp_url, queues=TEST_QUEUES) == 1
    await eventually(lambda: len(recorder.got) == 2)
    assert set(recorder.ids()) == {str(retried.message_id), str(rejected.message_id)}
    assert await list_dead_letters(amqp_url, queues=TEST_QUEUES) == []
    assert await replay_dead_letters(amqp_url, queues=TEST_QUEUES) == 0


async def test_the_broker_dead_letters_a_message_past_the_delivery_limit(
    broker: Broker, amqp_url: str
) -> None:
    event = erased()
    await broker.publish_event(event)
    # A consumer that dies on the message every time: get it and give it back, past the limit.
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(WORK.name)
        for _ in range(DELIVERY_LIMIT + 1):
            message: aio_pika.abc.AbstractIncomingMessage = await eventually(
                lambda: queue.get(no_ack=False, fail=False)
            )
            await message.nack(requeue=True)
    finally:
        await connection.close()

    [letter] = await _dead(amqp_url, 1)
    assert letter.message_id == str(event.message_id)
    assert letter.queue == WORK.name
    assert letter.reason == "broker: delivery_limit"

    recorder = Recorder()
    await broker.consume(WORK.name, recorder, [events.SubscriberErased])
    assert await replay_dead_letters(amqp_url, queues=TEST_QUEUES) == 1
    await eventually(lambda: recorder.got)
    assert recorder.got[0][0] == event
