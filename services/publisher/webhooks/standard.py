"""The wire format of our webhooks: the Standard Webhooks specification
(https://www.standardwebhooks.com/, spec v1): ``webhook-id`` (one per event, the same on every
retry), ``webhook-timestamp`` (Unix seconds of this attempt) and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` keyed with the secret's bytes).

Signing is the ``standardwebhooks`` package's own (the reference implementation receivers verify
with), so what we send is what they check. The same module verifies calls signed this way
(federation's inbox and counts, contract §9).
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

__all__ = [
    "EVENT_TYPES",
    "EventType",
    "WebhookVerificationError",
    "event_body",
    "new_event_id",
    "new_secret",
    "signed_headers",
    "verify",
]

EventType = Literal[
    "action.published",
    "action.updated",
    "action.closed",
    "subscriber.confirmed",
    "subscriber.updated",
    "subscriber.unsubscribed",
    "subscriber.erased",
    "response.recorded",
]
EVENT_TYPES: Final[tuple[EventType, ...]] = get_args(EventType)
# Events whose data names a person: kept only until they are delivered (and dropped at once
# when that person is erased).
PERSONAL_TYPES: Final[frozenset[str]] = frozenset(
    t for t in EVENT_TYPES if t.startswith(("subscriber.", "response."))
)
SECRET_PREFIX: Final = "whsec_"
# 24 random bytes, as Svix and the specification's examples (192 bits).
SECRET_BYTES: Final = 24


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def event_body(event_type: str, occurred_at: datetime, data: Mapping[str, Any]) -> str:
    """``{"type", "timestamp", "data"}``: serialised once, so every retry sends the same bytes."""
    stamp = occurred_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(
        {"type": event_type, "timestamp": stamp, "data": data},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def signed_headers(secret: str, event_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The three headers of one attempt (``now`` is the attempt's time, not the event's)."""
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(event_id, now, body),
    }


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> None:
    """Raise ``WebhookVerificationError`` unless the call is signed with ``secret`` within the
    specification's five minutes."""
    Webhook(secret).verify(body, dict(headers), json_parse=False)
