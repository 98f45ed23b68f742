"""`uanet dead-letters list` / `replay` on the project's own topology, through typer's CliRunner."""

from __future__ import annotations

import asyncio
import uuid

from typer.testing import CliRunner, Result

from shared import events
from shared.messaging import Broker, Delivery, Reject, list_dead_letters
from tests.shared.conftest import Recorder, eventually
from uanet_cli.main import app

QUEUE = "subscriptions.suppressions"


def _suppressed() -> events.RecipientSuppressed:
    return events.RecipientSuppressed(
        subscriber_id=uuid.uuid4(), channel="sms", address="+447700900123", reason="opted_out"
    )


def _reject(_: Delivery) -> None:
    raise Reject("unknown subscriber")


async def _uanet(amqp_url: str, *args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it runs in a thread here.
    runner = CliRunner()
    return await asyncio.to_thread(
        runner.invoke, app, list(args), env={"UANET_AMQP_URL": amqp_url}, catch_exceptions=False
    )


async def test_list_and_replay_dead_letters_from_the_command_line(amqp_url: str) -> None:
    broker = Broker(amqp_url, name="uanet-test")
    await broker.connect()
    try:
        recorder = Recorder()
        letters = [_suppressed() for _ in range(2)]
        for event in letters:
            recorder.fail[str(event.message_id)] = _reject
        await broker.consume(QUEUE, recorder, [events.RecipientSuppressed])

        empty = await _uanet(amqp_url, "dead-letters", "list")
        assert empty.exit_code == 0 and "no dead letters" in empty.stdout

        for event in letters:
            await broker.publish_event(event)
        await eventually(lambda: len(recorder.seen) == 2)
        await eventually(lambda: _count(amqp_url, 2))

        listed = await _uanet(amqp_url, "dead-letters", "list")
        assert listed.exit_code == 0, listed.output
        lines = listed.stdout.strip().splitlines()
        assert lines[-1] == "2 dead letter(s)"
        rows = {line.split("\t")[0]: line.split("\t") for line in lines[:-1]}
        assert set(rows) == {str(e.message_id) for e in letters}
        for _id, queue, routing_key, failed_at, reason in rows.values():
            assert (queue, routing_key, reason) == (
                QUEUE,
                "recipient.suppressed",
                "unknown subscriber",
            )
            assert failed_at
        # The phone number is not printed: only ids, queues and reasons.
        assert "+447700900123" not in listed.stdout

        recorder.fail.clear()
        first = str(letters[0].message_id)
        one = await _uanet(amqp_url, "dead-letters", "replay", "--id", first)
        assert one.exit_code == 0 and one.stdout.strip() == "replayed 1 message(s)"
        await eventually(lambda: recorder.got)
        assert recorder.ids() == [first]
        listed = await _uanet(amqp_url, "dead-letters", "list", "--limit", "5")
        assert "1 dead letter(s)" in listed.stdout and first not in listed.stdout

        rest = await _uanet(amqp_url, "dead-letters", "replay")
        assert rest.stdout.strip() == "replayed 1 message(s)"
        await eventually(lambda: len(recorder.got) == 2)
        assert set(recorder.ids()) == {str(e.message_id) for e in letters}
        none = await _uanet(amqp_url, "dead-letters", "replay")
        assert none.stdout.strip() == "replayed 0 message(s)"
    finally:
        await broker.close()


async def _count(amqp_url: str, n: int) -> bool:
    return len(await list_dead_letters(amqp_url)) == n


async def test_an_unreachable_broker_is_one_line_not_a_traceback() -> None:
    runner = CliRunner()
    result = await asyncio.to_thread(
        runner.invoke,
        app,
        ["dead-letters", "list"],
        env={"UANET_AMQP_URL": "amqp://guest:guest@127.0.0.1:1/none"},
    )
    assert result.exit_code == 2
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert len(result.stderr.strip().splitlines()) == 1
