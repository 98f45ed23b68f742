"""Who may send what (contract §11): with one broker user per service, an event only one service
sends is believed only from that service's user, and a consumer's own retry keeps the sender it
checked. The broker's side (``user_id`` checked by RabbitMQ) is in tests/cli/test_broker_users."""

from __future__ import annotations

import pytest

from shared import events
from shared.broker_users import H_SENT_BY, ONLY_FROM, SenderCheck

USERS = {
    "publisher": "u-publisher",
    "subscriptions": "u-subscriptions",
    "dispatcher": "u-dispatcher",
}
ACTION_EVENTS = [
    events.ActionPublished,
    events.ActionUpdated,
    events.ActionClosed,
    events.ActionTargetsChanged,
]


@pytest.mark.parametrize("event", ACTION_EVENTS, ids=lambda e: e.ROUTING_KEY)
@pytest.mark.parametrize("consumer", ["subscriptions", "dispatcher"])
def test_an_actions_life_is_believed_only_from_the_publisher(
    event: type[events.Message], consumer: str
) -> None:
    check = SenderCheck(users=USERS, own=USERS[consumer])
    key = event.ROUTING_KEY
    forger = USERS["subscriptions" if consumer == "dispatcher" else "dispatcher"]

    assert check.refusal(key, "u-publisher", {}) == ""
    assert "may only come from the publisher" in check.refusal(key, forger, {})
    assert check.refusal(key, None, {}) != ""  # no user_id is no sender
    # Another service cannot pass as the consumer's own retry: only its own user may carry it.
    assert check.refusal(key, forger, {H_SENT_BY: "u-publisher"}) != ""
    assert check.refusal(key, USERS[consumer], {H_SENT_BY: "u-publisher"}) == ""


def test_what_everyone_may_send_is_not_checked() -> None:
    check = SenderCheck(users=USERS, own=USERS["publisher"])
    assert events.DeliveriesReported.ROUTING_KEY not in ONLY_FROM
    assert check.refusal(events.DeliveriesReported.ROUTING_KEY, "u-dispatcher", {}) == ""


def test_with_one_user_for_all_every_sender_is_that_user() -> None:
    one = dict.fromkeys(USERS, "guest")
    check = SenderCheck(users=one, own="guest")
    for key in ONLY_FROM:
        assert check.refusal(key, "guest", {}) == ""


def test_a_service_given_only_its_own_user_infers_the_others() -> None:
    """Each service is given its own URL only: the dispatcher must not hold the publisher's
    password to know the publisher's name."""
    shared = "amqp://admin:secret@rabbitmq:5672/"
    own = {"publisher": None, "subscriptions": None, "dispatcher": None}
    dispatcher = {**own, "dispatcher": "amqp://uanet-dispatcher:pw@rabbitmq:5672/"}

    check = SenderCheck.for_service(shared, dispatcher, "dispatcher")
    assert check.own == "uanet-dispatcher"
    assert check.users == {
        "publisher": "uanet-publisher",
        "subscriptions": "uanet-subscriptions",
        "dispatcher": "uanet-dispatcher",
    }
    # A URL given for another service is believed over the inference.
    given = {**dispatcher, "publisher": "amqp://pub@rabbitmq/"}
    assert SenderCheck.for_service(shared, given, "dispatcher").users["publisher"] == "pub"
    # No own user (one user for all), or one not named <prefix>-<service>: the shared user.
    assert set(SenderCheck.for_service(shared, own, "dispatcher").users.values()) == {"admin"}
    odd = {**own, "dispatcher": "amqp://mailer:pw@rabbitmq/"}
    assert SenderCheck.for_service(shared, odd, "dispatcher").users == {
        "publisher": "admin",
        "subscriptions": "admin",
        "dispatcher": "mailer",
    }
