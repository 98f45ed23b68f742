"""The dispatcher's delivery counts, folded by the outbox relay before they are published."""

from __future__ import annotations

import uuid

from services.dispatcher.reporting import DeliveryReportCompactor
from shared.events import DeliveriesReported


def report(action: uuid.UUID, channel: str = "email", kind: str = "alert", **counts: int) -> str:
    return DeliveriesReported(
        action_id=action, message_kind=kind, channel=channel, **counts
    ).model_dump_json()


def test_reports_of_one_action_kind_and_channel_fold_into_one_with_the_sums() -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    bodies = [
        ("a", report(one, sent=5)),
        ("b", report(one, "sms", sent=1)),
        ("c", report(one, sent=7, failed=1)),
        ("d", report(two, sent=3)),
        ("e", report(one, kind="closed", sent=2)),
        ("f", report(one, sent=0, failed=2)),
        ("g", "not json"),
    ]
    merged = DeliveryReportCompactor().merge(bodies)
    assert len(merged) == 1
    ids, folded = merged[0]
    assert ids == ["a", "c", "f"]
    assert (folded.action_id, folded.message_kind, folded.channel) == (one, "alert", "email")
    assert (folded.sent, folded.failed) == (12, 3)
    # A new message: its parts' ids may already be known to the publisher's tally.
    assert str(folded.message_id) not in ids


def test_nothing_to_fold_leaves_every_row_as_it_is() -> None:
    one = uuid.uuid4()
    bodies = [("a", report(one, sent=1)), ("b", report(one, "sms", sent=1))]
    assert DeliveryReportCompactor().merge(bodies) == []
