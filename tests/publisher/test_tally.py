"""The tally handlers and what coordinators read from them, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from typing import Any

import pytest

from services.publisher.tally import TallyConsumer
from shared import events
from shared.messaging import Reject
from tests.publisher.conftest import Api

ZERO_STATS_SHAPE = {
    "recipients": {"email": 0, "sms": 0},
    "deliveries": {
        "email": {"sent": 0, "delivered": 0, "failed": 0},
        "sms": {"sent": 0, "delivered": 0, "failed": 0},
    },
    "responses": {
        "people": 0,
        "actions": 0,
        "by_kind": {"letter": 0, "email": 0, "call": 0, "sms_reply": 0, "other": 0},
    },
    "by_country": {},
}


async def stats_of(api: Api, action_id: str) -> dict[str, Any]:
    response = await api.client.get(
        f"/api/v1/actions/{action_id}/stats", headers=api.auth("coordinator")
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def tally(api: Api) -> TallyConsumer:
    consumer: TallyConsumer = api.app.state.tally
    return consumer


def response_event(action_id: str, subscriber: uuid.UUID, **fields: Any) -> events.ResponseRecorded:
    values: dict[str, Any] = {"kind": "letter", "count": 1, "country": "GB"}
    values.update(fields)
    return events.ResponseRecorded(
        action_id=uuid.UUID(action_id), subscriber_id=subscriber, **values
    )


async def test_stats_of_a_new_action_are_all_zeros(api: Api) -> None:
    action = await api.create()
    stats = await stats_of(api, action["id"])
    assert set(stats) == {
        "action_id", "reference", "recipients", "deliveries", "responses", "by_country",
        "updated_at",
    }  # fmt: skip
    assert stats["action_id"] == action["id"]
    assert stats["reference"] == action["reference"]
    assert {k: v for k, v in stats.items() if k in ZERO_STATS_SHAPE} == ZERO_STATS_SHAPE
    assert stats["updated_at"].startswith(action["created_at"][:10])


async def test_counts_add_up_and_a_redelivery_counts_once(api: Api) -> None:
    action = await api.publish((await api.create())["id"])
    action_id = uuid.UUID(action["id"])
    ana, ben, chloe = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    messages: list[events.Message] = [
        events.AudienceCounted(
            action_id=action_id, recipients={"email": 3, "sms": 2}, by_country={"GB": 2, "IE": 1}
        ),
        events.AudienceCounted(action_id=action_id, recipients={"email": 1}, by_country={"GB": 1}),
        events.DeliveriesReported(
            action_id=action_id, message_kind="alert", channel="email", sent=3, failed=1
        ),
        events.DeliveriesReported(
            action_id=action_id, message_kind="alert", channel="sms", sent=2, failed=0
        ),
        # A follow-up's deliveries are not the alert's.
        events.DeliveriesReported(
            action_id=action_id, message_kind=f"update:{uuid.uuid4()}", channel="email", sent=3
        ),
        events.DeliveryStatusChanged(
            action_id=action_id, message_kind="alert", channel="sms", status="delivered"
        ),
        events.DeliveryStatusChanged(
            action_id=action_id, message_kind="alert", channel="sms", status="failed"
        ),
        events.DeliveryStatusChanged(
            action_id=None, message_kind="alert", channel="sms", status="delivered"
        ),
        response_event(action["id"], ana, kind="letter", count=2),
        response_event(action["id"], ana, kind="call", count=1),  # same person again
        response_event(action["id"], ben, kind="sms_reply", count=3, country="IE"),
        response_event(action["id"], chloe, kind="other", count=1, country=None),
        response_event(action["id"], chloe, kind="email", count=4, country="??"),
    ]
    for message in messages:
        await tally(api)(message)
    before = await stats_of(api, action["id"])
    for message in messages:  # every one delivered again: nothing changes
        await tally(api)(message)
    stats = await stats_of(api, action["id"])
    assert stats == before

    assert stats["recipients"] == {"email": 4, "sms": 2}
    assert stats["deliveries"] == {
        "email": {"sent": 3, "delivered": 0, "failed": 1},
        "sms": {"sent": 2, "delivered": 1, "failed": 1},
    }
    assert stats["responses"] == {
        "people": 3,
        "actions": 11,
        "by_kind": {"letter": 2, "email": 4, "call": 1, "sms_reply": 3, "other": 1},
    }
    assert stats["by_country"] == {
        "GB": {"recipients": 3, "people": 1, "actions": 3},
        "IE": {"recipients": 1, "people": 1, "actions": 3},
    }


async def test_concurrent_reports_lose_nothing(api: Api) -> None:
    action = await api.publish((await api.create())["id"])
    people = [uuid.uuid4() for _ in range(8)]
    reports = [response_event(action["id"], p, count=2) for p in people for _ in range(3)]
    await asyncio.gather(*(tally(api)(r) for r in reports))
    stats = await stats_of(api, action["id"])
    assert stats["responses"]["people"] == 8
    assert stats["responses"]["actions"] == 48
    assert stats["by_country"]["GB"] == {"recipients": 0, "people": 8, "actions": 48}


async def test_an_event_for_an_unknown_action_is_rejected_and_not_remembered(api: Api) -> None:
    unknown = response_event(str(uuid.uuid4()), uuid.uuid4())
    with pytest.raises(Reject, match="unknown urgent action"):
        await tally(api)(unknown)
    # Rolled back: the message id was not recorded, so a replay after a fix is still counted.
    with pytest.raises(Reject):
        await tally(api)(unknown)


async def test_stats_csv(api: Api) -> None:
    action = await api.publish((await api.create())["id"])
    action_id = uuid.UUID(action["id"])
    await tally(api)(
        events.AudienceCounted(
            action_id=action_id, recipients={"email": 5, "sms": 1}, by_country={"GB": 4, "IE": 1}
        )
    )
    await tally(api)(response_event(action["id"], uuid.uuid4(), kind="call", count=2))
    response = await api.client.get(
        f"/api/v1/actions/{action['id']}/stats.csv", headers=api.auth("coordinator")
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;") and ".csv" in disposition
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["country"] for r in rows] == ["GB", "IE", "TOTAL"]
    gb, ie, total = rows
    assert (gb["recipients"], gb["people"], gb["actions"]) == ("4", "1", "2")
    assert (ie["recipients"], ie["people"], ie["actions"]) == ("1", "0", "0")
    assert gb["call"] == ""  # not known per country
    assert total["reference"] == action["reference"]
    assert (total["recipients"], total["people"], total["actions"], total["call"]) == (
        "5",
        "1",
        "2",
        "2",
    )
    assert (total["email_recipients"], total["sms_recipients"], total["sms_sent"]) == (
        "5",
        "1",
        "0",
    )
