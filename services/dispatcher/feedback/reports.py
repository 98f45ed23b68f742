"""What every route makes of a report: ``Feedback``, one per message and recipient reported."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FeedbackKind = Literal["hard_bounce", "soft_bounce", "complaint", "delivered"]
FeedbackSource = Literal["smtp", "sendgrid", "mailgun", "ses"]


@dataclass(frozen=True)
class Feedback:
    kind: FeedbackKind
    source: FeedbackSource
    # Unique per event (the provider's id, or a digest of the report and the recipient's place).
    event_key: str
    # Where the report points at the message, strongest first: the VERP address it was sent to
    # (or the envelope sender the ESP saw), then Message-IDs or bare tags it quotes.
    bounce_address: str | None = None
    message_ids: tuple[str, ...] = ()
    # The address reported. Believed only from a signed ESP webhook (``trusted``): anyone can
    # mail the bounce address a report naming somebody else.
    recipient: str | None = None
    trusted: bool = False
    status_code: str | None = None  # an RFC 3463 status (5.1.1), when given


def status_class(status: str | None) -> str | None:
    """ "5" for 5.1.1, "4" for 4.4.7, None when it is not an RFC 3463 status."""
    if not status:
        return None
    head = status.strip().split(" ", 1)[0]
    parts = head.split(".")
    if len(parts) == 3 and parts[0] in ("2", "4", "5") and all(p.isdigit() for p in parts[1:]):
        return parts[0]
    return None


def clean_status(status: str | None) -> str | None:
    """The RFC 3463 code alone (``5.1.1`` of ``5.1.1 (bad destination mailbox)``)."""
    if status_class(status) is None:
        return None
    assert status is not None
    return status.strip().split(" ", 1)[0][:16]
