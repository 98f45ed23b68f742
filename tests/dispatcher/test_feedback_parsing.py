"""The ESP payload and bounce mail readers never fail on what a sender can put in them: any
JSON where an event is expected, any bytes where a mail is (a 500 would make the ESP or the MTA
retry forever, and tell an attacker where to push)."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from services.dispatcher.feedback.mail import read_bounce
from services.dispatcher.feedback.reports import clean_status, status_class
from services.dispatcher.feedback.webhooks import mailgun_feedback, sendgrid_feedback, ses_feedback

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
# Keys the readers look at, so the fuzzing reaches past the first lookup.
KEYS = st.sampled_from(
    [
        "event", "type", "status", "smtp-id", "email", "sg_event_id", "severity", "id",
        "message", "headers", "message-id", "delivery-status", "enhanced-code", "envelope",
        "sender", "recipient", "notificationType", "eventType", "mail", "commonHeaders",
        "messageId", "source", "bounce", "bounceType", "bouncedRecipients", "emailAddress",
        "complaint", "complainedRecipients", "complaintFeedbackType", "delivery", "recipients",
        "name", "value",
    ]
)  # fmt: skip
EVENT_VALUES = st.sampled_from(
    ["bounce", "dropped", "deferred", "spamreport", "delivered", "failed", "complained",
     "permanent", "temporary", "Bounce", "Complaint", "Delivery", "Permanent", "5.1.1", "4.4.7"]
)  # fmt: skip
SHAPED = st.recursive(
    JSON | EVENT_VALUES,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=25,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(SHAPED)
@example({"mail": {"headers": 5}})
@example({"notificationType": "Bounce", "bounce": {"bouncedRecipients": 5}})
@example({"notificationType": "Complaint", "complaint": {"complainedRecipients": "x"}})
@example({"notificationType": "Delivery", "delivery": {"recipients": 3}})
@example({"event": "failed", "message": {"headers": []}, "delivery-status": 7, "envelope": 1})
@example({"event": "bounce", "status": {"a": 1}, "smtp-id": ["x"], "email": 3})
def test_esp_readers_take_any_json(payload: Any) -> None:
    if isinstance(payload, dict):
        sendgrid_feedback(payload)
        mailgun_feedback(payload)
        ses_feedback(payload, "sns-message-id")


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.lists(st.text(max_size=40), max_size=3))
def test_bounce_reader_takes_any_bytes(raw: bytes, recipients: list[str]) -> None:
    read_bounce(raw, envelope_recipients=recipients)


@given(st.text(max_size=30))
def test_status_codes(status: str) -> None:
    cls = status_class(status)
    assert cls in (None, "2", "4", "5")
    assert (clean_status(status) is None) == (cls is None)


def test_status_codes_as_mtas_write_them() -> None:
    assert clean_status("5.1.1 (bad destination mailbox address)") == "5.1.1"
    assert status_class("4.4.7") == "4"
    assert status_class("550") is None
