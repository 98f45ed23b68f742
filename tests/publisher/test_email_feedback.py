"""Late bounces and complaints in the tally and on the console: a hard bounce moves its alert
from sent to failed, each report counts once, staff see the counts and the month's rates."""

from __future__ import annotations

import re
import uuid
from typing import Any

from services.publisher.tally import TallyConsumer
from shared import events
from tests.publisher.conftest import Api
from tests.publisher.console_support import Browser, make_user


def tally(api: Api) -> TallyConsumer:
    consumer: TallyConsumer = api.app.state.tally
    return consumer


async def stats_of(api: Api, action_id: str) -> dict[str, Any]:
    response = await api.client.get(
        f"/api/v1/actions/{action_id}/stats", headers=api.auth("coordinator")
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def feedback(action_id: uuid.UUID, kind: str, previous: str | None = None, **more: Any) -> Any:
    return events.EmailFeedback.model_validate(
        {"action_id": action_id, "message_kind": "alert", "kind": kind, "previous": previous} | more
    )


async def test_late_feedback_moves_counts_once_and_staff_see_it(api: Api) -> None:
    action = await api.publish((await api.create())["id"])
    action_id = uuid.UUID(action["id"])
    messages: list[events.Message] = [
        events.DeliveriesReported(
            action_id=action_id, message_kind="alert", channel="email", sent=40, failed=1
        ),
        feedback(action_id, "delivered", "sent"),
        feedback(action_id, "delivered", "sent"),
        feedback(action_id, "hard_bounce", "sent"),
        feedback(action_id, "hard_bounce", "delivered"),  # delivered, then bounced after all
        feedback(action_id, "soft_bounce"),
        feedback(action_id, "complaint"),
        # A follow-up's bounce suppresses the address but is not the alert's count.
        feedback(action_id, "hard_bounce", "sent", message_kind=f"update:{uuid.uuid4()}"),
    ]
    for message in messages:
        await tally(api)(message)
    for message in messages:  # redelivered: nothing twice
        await tally(api)(message)

    stats = await stats_of(api, action["id"])
    assert stats["deliveries"]["email"] == {"sent": 38, "delivered": 1, "failed": 3}

    browser = Browser(api.app)
    try:
        await browser.sign_in(await make_user(api.app, "coordinator"))
        page = (await browser.get(f"/actions/{action['id']}")).text
        shown = dict(re.findall(r'data-feedback="([a-z_]+)">([0-9,]+)<', page))
        assert shown == {
            "hard": "2",
            "accepted": "40",
            "sent": "38",
            "delivered": "1",
            "hard_bounces": "2",
            "soft_bounces": "1",
            "complaints": "1",
        }
        overview = (await browser.get("/overview")).text
        figures = dict(re.findall(r'data-overview="([a-z-]+)">([^<]+)<', overview))
        assert figures["bounce-rate"] == "5.00%"  # 2 of the 40 the relay accepted
        assert figures["complaint-rate"] == "2.50%"
        assert (figures["hard-bounces"], figures["spam-complaints"]) == ("2", "1")
    finally:
        await browser.aclose()
