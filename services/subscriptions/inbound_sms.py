"""Inbound SMS: keywords (YES, STOP, START, HELP) and action reports (DONE 3, SENT 2).

Opt-out and opt-in keywords are Twilio's own, so what Twilio blocks and what we record agree:
STOP and its synonyms opt out; START, UNSTOP and YES opt back in (YES also confirms a sign-up).
"""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import phonenumbers
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions import store
from services.subscriptions.models import CONFIRMED, KnownAction, Subscriber
from services.subscriptions.responses import latest_sms_recipient, report, sms_report_id
from services.subscriptions.subscribers import Origin, mark_confirmed, unsubscribe

log = logging.getLogger(__name__)

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT"})
OPT_IN = frozenset({"START", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})
REPORT = re.compile(r"^(?:DONE|SENT)(?:\s*(\d{1,6}))?$")
MAX_REPORTED = 50

CommandKind = Literal["confirm", "opt_in", "opt_out", "help", "report", "bad_report", "unknown"]


@dataclass(frozen=True)
class SmsCommand:
    kind: CommandKind
    count: int = 1


def parse_sms(body: str) -> SmsCommand:
    """What an SMS asks for: case does not matter, nor spaces or a trailing "." or "!"."""
    text = " ".join(body.split()).upper().rstrip(".!")
    if text == "YES":
        return SmsCommand("confirm")
    if text in OPT_IN:
        return SmsCommand("opt_in")
    if text in OPT_OUT:
        return SmsCommand("opt_out")
    if text in HELP:
        return SmsCommand("help")
    match = REPORT.match(text)
    if match:
        count = int(match.group(1)) if match.group(1) else 1
        if 1 <= count <= MAX_REPORTED:
            return SmsCommand("report", count)
        return SmsCommand("bad_report")
    return SmsCommand("unknown")


@dataclass(frozen=True)
class SmsReply:
    """Which text to answer with (a template under templates/sms/) and its context."""

    template: str
    context: dict[str, Any] = field(default_factory=dict)
    # The subscriber's language; None for a number we do not know (answered in the default).
    language: str | None = None


def normalize_sender(number: str) -> str:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number.strip()
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


async def handle_inbound_sms(
    *, session: AsyncSession, sender: str, body: str, message_sid: str | None
) -> SmsReply | None:
    """Act on one inbound SMS; returns the answer to send, or None to stay silent."""
    reply = await _handle(session=session, sender=sender, body=body, message_sid=message_sid)
    if reply is None:
        return None
    subscriber = await store.subscriber_by_phone(session, normalize_sender(sender))
    language = subscriber.language if subscriber is not None else None
    return SmsReply(reply.template, reply.context, language)


async def _handle(
    *, session: AsyncSession, sender: str, body: str, message_sid: str | None
) -> SmsReply | None:
    phone = normalize_sender(sender)
    command = parse_sms(body)
    subscriber = await store.subscriber_by_phone(session, phone)
    origin = Origin("sms")

    if command.kind == "opt_out":
        # Recorded even for a number we do not know: it must never get an SMS from us.
        await store.suppress(session, channel="sms", address=phone, reason="opted_out")
        if subscriber is not None:
            await unsubscribe(
                session=session,
                subscriber=subscriber,
                channel="sms",
                origin=origin,
                reason="opted_out",
            )
        log.info("sms opt-out", extra={"known": subscriber is not None})
        # Silent: Twilio answers STOP itself, and nothing else may reach this number now.
        return None

    if command.kind in ("confirm", "opt_in"):
        await store.lift_suppression(session, phone, reasons=("opted_out", "unsubscribed"))
        if subscriber is None:
            return SmsReply("unknown_number.txt")
        was = subscriber.sms_status
        if was != CONFIRMED:
            mark_confirmed(session, subscriber, "sms", origin)
        if command.kind == "confirm" and was != "unsubscribed":
            return SmsReply("confirmed.txt", {"already": was == CONFIRMED})
        return SmsReply("opted_in.txt")

    if await store.suppression_of(session, phone) is not None:
        # Opted out: no answer until START, whatever they send.
        return None
    if command.kind == "help":
        return SmsReply("help.txt")
    if subscriber is None:
        return SmsReply("unknown_number.txt")
    if command.kind == "bad_report":
        return SmsReply("bad_report.txt", {"most": MAX_REPORTED})
    if command.kind == "unknown":
        return SmsReply("unknown_keyword.txt")
    return await _report(session, subscriber, command.count, message_sid)


async def _report(
    session: AsyncSession, subscriber: Subscriber, count: int, message_sid: str | None
) -> SmsReply:
    recipient = await latest_sms_recipient(session, subscriber)
    if recipient is None:
        return SmsReply("no_action.txt")
    action = await session.get(KnownAction, recipient.action_id)
    # Without a MessageSid (never from Twilio itself) there is nothing to deduplicate on.
    report_id = sms_report_id(message_sid) if message_sid else uuid.uuid4()
    # Within the same cap and rate as the page's reports (responses.py).
    await report(
        session=session,
        recipient=recipient,
        subscriber=subscriber,
        report_id=report_id,
        kind="sms_reply",
        count=count,
        source="sms",
    )
    reference = action.reference if action is not None else ""
    return SmsReply("reported.txt", {"count": count, "reference": reference})
