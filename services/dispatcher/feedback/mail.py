"""Reading a bounce mail: an RFC 3464 delivery status notification, an RFC 5965 abuse report,
or the plain bounce text of a common MTA (through ``flufl.bounce``).

Nothing here trusts the mail: it only says what the mail claims. Which message it concerns comes
from signed tags (the VERP address it was sent to, Message-IDs it quotes), checked later.
"""

from __future__ import annotations

import email
import email.message
import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from email.parser import HeaderParser

from flufl.bounce import all_failures

from services.dispatcher.feedback.reports import Feedback, FeedbackKind, clean_status, status_class

log = logging.getLogger(__name__)
# flufl.bounce logs each detector it runs, and may quote addresses when one fails.
logging.getLogger("flufl.bounce").setLevel(logging.CRITICAL)

# A message tag as services.dispatcher.identity makes them (the signature is checked later).
_TAG = re.compile(r"(?<![0-9a-z])([dglt][0-9a-f]{1,32}-[a-z2-7]{10})(?![0-9a-z])", re.IGNORECASE)
_MESSAGE_ID = re.compile(r"^message-id:\s*(<[^>\s]{1,400}>)", re.IGNORECASE | re.MULTILINE)
# Feedback types (RFC 5965, 6430, 6591) that are a recipient's complaint about our mail.
_COMPLAINTS = frozenset({"abuse", "fraud", "other"})
# A report bigger than this is not read for tags (what it quotes of our mail is near the top).
_SCAN_LIMIT = 200_000


def read_bounce(raw: bytes, *, envelope_recipients: Sequence[str] = ()) -> list[Feedback]:
    """What one mail to the bounce address reports: one ``Feedback`` per recipient, empty when
    it reports nothing we act on (an auto-reply, a success notice, something unreadable)."""
    message = email.message_from_bytes(raw)
    digest = hashlib.sha256(raw).hexdigest()[:40]
    bounce_address = _verp_recipient(envelope_recipients)
    report_type = _report_type(message)
    if report_type == "feedback-report":
        found = _abuse_report(message)
    elif report_type == "delivery-status":
        found = _delivery_status(message)
    else:
        found = _plain_bounce(message)
    if not found:
        return []
    quoted = _quoted_ids(message, raw)
    return [
        Feedback(
            kind=kind,
            source="smtp",
            event_key=f"smtp:{digest}:{place}",
            bounce_address=own_verp or bounce_address,
            message_ids=(*ids, *quoted),
            recipient=recipient,
            status_code=status,
        )
        for place, (kind, recipient, status, ids, own_verp) in enumerate(found)
    ]


# One finding: kind, recipient reported, status, Message-IDs of the original, VERP sender.
_Finding = tuple[FeedbackKind, str | None, str | None, tuple[str, ...], str | None]


def _verp_recipient(recipients: Sequence[str]) -> str | None:
    """The envelope recipient that carries a tag (``bounces+<tag>@``), else the first one."""
    for address in recipients:
        if "+" in address.partition("@")[0]:
            return address
    return recipients[0] if recipients else None


def _report_type(message: email.message.Message) -> str | None:
    for part in message.walk():
        if part.get_content_type() == "multipart/report":
            value = part.get_param("report-type")
            return str(value).lower() if isinstance(value, str) else None
    return None


def _parts(message: email.message.Message, content_type: str) -> Iterator[email.message.Message]:
    for part in message.walk():
        if part.get_content_type() == content_type:
            yield part


def _fields(part: email.message.Message) -> list[email.message.Message]:
    """The field groups of a message/delivery-status or message/feedback-report part, each as
    headers (the parser gives a list of blocks, a sub-message, or text for odd encodings)."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return [block for block in payload if isinstance(block, email.message.Message)]
    text = payload if isinstance(payload, str) else ""
    return [HeaderParser().parsestr(block + "\n") for block in re.split(r"\r?\n\s*\r?\n", text)]


def _address(field: str | None) -> str | None:
    """``rfc822; ana@example.net`` -> ``ana@example.net``."""
    if not field:
        return None
    value = str(field).rpartition(";")[2].strip().strip("<>").strip()
    return value[:320] if "@" in value else None


def _original_ids(message: email.message.Message) -> tuple[str, ...]:
    """Message-IDs in the returned message (message/rfc822) or its headers (text/rfc822-headers)."""
    found: list[str] = []
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, email.message.Message) and inner.get("Message-ID"):
                found.append(str(inner["Message-ID"]))
        elif content_type == "text/rfc822-headers":
            text = _text_of(part)
            found.extend(_MESSAGE_ID.findall(text))
    return tuple(found)


def _original_sender(message: email.message.Message) -> str | None:
    """The envelope sender of the returned message (its Return-Path), a VERP address of ours."""
    for part in message.walk():
        if part.get_content_type() == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, email.message.Message) and inner.get("Return-Path"):
                return _address(str(inner["Return-Path"]))
        elif part.get_content_type() == "text/rfc822-headers":
            headers = HeaderParser().parsestr(_text_of(part))
            if headers.get("Return-Path"):
                return _address(str(headers["Return-Path"]))
    return None


def _delivery_status(message: email.message.Message) -> list[_Finding]:
    findings: list[_Finding] = []
    ids = _original_ids(message)
    for part in _parts(message, "message/delivery-status"):
        blocks = _fields(part)
        envelope_ids = tuple(
            str(block["Original-Envelope-Id"]) for block in blocks if block["Original-Envelope-Id"]
        )
        for block in blocks:
            recipient = _address(block["Original-Recipient"]) or _address(block["Final-Recipient"])
            action = str(block["Action"] or "").strip().lower()
            if not recipient and not action:
                continue  # the per-message group
            status = clean_status(str(block["Status"] or ""))
            kind: FeedbackKind
            if action == "delayed":
                kind = "soft_bounce"
            elif action == "failed":
                kind = "soft_bounce" if status_class(status) == "4" else "hard_bounce"
            else:
                continue  # delivered, relayed, expanded: nothing went wrong
            findings.append((kind, recipient, status, (*envelope_ids, *ids), None))
    return findings


def _abuse_report(message: email.message.Message) -> list[_Finding]:
    findings: list[_Finding] = []
    ids = _original_ids(message)
    for part in _parts(message, "message/feedback-report"):
        fields: dict[str, str] = {}
        for block in _fields(part):
            for name, value in block.items():
                fields.setdefault(name.lower(), str(value))
        feedback_type = fields.get("feedback-type", "").strip().lower()
        if feedback_type not in _COMPLAINTS:
            continue  # not-spam, auth-failure, virus: not a recipient's complaint
        own_verp = _address(fields.get("original-mail-from")) or _original_sender(message)
        recipient = _address(fields.get("original-rcpt-to"))
        findings.append(("complaint", recipient, None, ids, own_verp))
    return findings


def _plain_bounce(message: email.message.Message) -> list[_Finding]:
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # noqa: BLE001 - a detector choking on odd mail is not our failure
        log.info("bounce text not understood")
        return []
    findings: list[_Finding] = []
    groups: tuple[tuple[FeedbackKind, frozenset[bytes]], ...] = (
        ("hard_bounce", frozenset(permanent)),
        ("soft_bounce", frozenset(temporary)),
    )
    for kind, addresses in groups:
        for raw_address in sorted(addresses):
            address = (
                raw_address.decode("utf-8", "replace")
                if isinstance(raw_address, bytes)
                else str(raw_address)
            )
            findings.append((kind, _address(address), None, (), _original_sender(message)))
    return findings


def _text_of(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if isinstance(payload, bytes):
        charset = part.get_content_charset() or "utf-8"
        try:
            return payload.decode(charset, "replace")
        except LookupError:
            return payload.decode("utf-8", "replace")
    raw = part.get_payload()
    return raw if isinstance(raw, str) else ""


def _quoted_ids(message: email.message.Message, raw: bytes) -> tuple[str, ...]:
    """Every tag-like string in the mail's text (a plain bounce quotes our headers in its body),
    after the Message-IDs of the report's own structure."""
    texts = [raw[:_SCAN_LIMIT].decode("utf-8", "replace")]
    for part in message.walk():
        if part.get_content_maintype() == "text":
            texts.append(_text_of(part)[:_SCAN_LIMIT])
    seen: dict[str, None] = {}
    for text in texts:
        for tag in _TAG.findall(text):
            seen.setdefault(tag.lower(), None)
    return tuple(seen)
