"""ESP event webhooks: SendGrid, Mailgun and Amazon SES (through SNS), each checked as its
provider signs it. Forged or unsigned: 403 and nothing changes. A body that is not what the
provider sends: 400. Events are applied once however often they come (the provider's event id).

Each webhook is on only when its key is set: without one nothing can prove who sent the call.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from functools import lru_cache
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dispatcher.feedback import webhook_docs as docs
from services.dispatcher.feedback.models import WebhookToken
from services.dispatcher.feedback.record import FeedbackRecorder
from services.dispatcher.feedback.reports import Feedback, FeedbackKind, clean_status, status_class
from services.dispatcher.feedback.sns import (
    SnsGateway,
    UntrustedUrl,
    signature_valid,
    sns_url_allowed,
)
from shared.db import utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

SENDGRID_PATH = "/webhooks/email/sendgrid"
MAILGUN_PATH = "/webhooks/email/mailgun"
SES_PATH = "/webhooks/email/ses"
SENDGRID_SIGNATURE = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP = "x-twilio-email-event-webhook-timestamp"
# Mailgun and SendGrid: a signature older (or further ahead) than this is refused, as Mailgun's
# docs advise: a captured call cannot be replayed later (each retry is signed afresh).
MAILGUN_MAX_AGE = 300
SENDGRID_MAX_AGE = MAILGUN_MAX_AGE
# Tokens are kept a while longer than they could be replayed.
_TOKEN_KEPT = timedelta(days=1)


def _fresh(timestamp: str, now: float, max_age: int) -> bool:
    """A signed Unix timestamp within ``max_age`` seconds of now, either way."""
    return timestamp.isascii() and timestamp.isdigit() and abs(now - int(timestamp)) <= max_age


def _forbidden() -> Response:
    return PlainTextResponse("forbidden", status_code=403)


def _bad_request() -> Response:
    return PlainTextResponse("bad request", status_code=400)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:40]


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _text(value: Any, limit: int = 400) -> str | None:
    return str(value)[:limit] if isinstance(value, (str, int)) and str(value) else None


# ---- SendGrid ------------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _sendgrid_key(public_key: str) -> ec.EllipticCurvePublicKey | None:
    try:
        key = load_der_public_key(base64.b64decode(public_key))
    except (ValueError, binascii.Error):
        return None
    return key if isinstance(key, ec.EllipticCurvePublicKey) else None


def sendgrid_signature_valid(
    public_key: str, *, signature: str | None, timestamp: str | None, body: bytes
) -> bool:
    """ECDSA P-256 / SHA-256 of the timestamp header followed by the raw body."""
    key = _sendgrid_key(public_key)
    if key is None or not signature or not timestamp:
        return False
    try:
        key.verify(
            base64.b64decode(signature), timestamp.encode() + body, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def sendgrid_feedback(event: dict[str, Any]) -> Feedback | None:
    name = str(event.get("event") or "")
    status = clean_status(_text(event.get("status")))
    kind: FeedbackKind
    if name == "bounce":
        # "blocked" is a refusal SendGrid does not count as a bad address.
        blocked = str(event.get("type") or "") == "blocked"
        kind = "soft_bounce" if blocked or status_class(status) == "4" else "hard_bounce"
    elif name == "dropped":
        kind = "hard_bounce"  # not sent at all: a known bad or suppressed address
    elif name == "deferred":
        kind = "soft_bounce"
    elif name == "spamreport":
        kind = "complaint"
    elif name == "delivered":
        kind = "delivered"
    else:
        return None  # processed, open, click, unsubscribe...: not ours to count
    event_id = _text(event.get("sg_event_id"), 150) or _digest(event)
    smtp_id = _text(event.get("smtp-id"))
    return Feedback(
        kind=kind,
        source="sendgrid",
        event_key=f"sendgrid:{event_id}",
        message_ids=(smtp_id,) if smtp_id else (),
        recipient=_text(event.get("email"), 320),
        trusted=True,
        status_code=status,
    )


# ---- Mailgun -------------------------------------------------------------------------------


def mailgun_signature_valid(key: str, *, timestamp: str, token: str, signature: str) -> bool:
    expected = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature.lower())


def mailgun_feedback(data: dict[str, Any]) -> Feedback | None:
    name = str(data.get("event") or "")
    delivery_status = data.get("delivery-status")
    delivery_status = delivery_status if isinstance(delivery_status, dict) else {}
    status = clean_status(_text(delivery_status.get("enhanced-code")))
    kind: FeedbackKind
    if name == "failed":
        kind = "hard_bounce" if data.get("severity") == "permanent" else "soft_bounce"
    elif name == "complained":
        kind = "complaint"
    elif name == "delivered":
        kind = "delivered"
    else:
        return None
    message = data.get("message")
    headers = message.get("headers") if isinstance(message, dict) else None
    message_id = _text(headers.get("message-id")) if isinstance(headers, dict) else None
    envelope = data.get("envelope")
    sender = _text(envelope.get("sender"), 320) if isinstance(envelope, dict) else None
    return Feedback(
        kind=kind,
        source="mailgun",
        event_key=f"mailgun:{_text(data.get('id'), 150) or _digest(data)}",
        bounce_address=sender,
        message_ids=(message_id,) if message_id else (),
        recipient=_text(data.get("recipient"), 320),
        trusted=True,
        status_code=status,
    )


async def _take_token(
    sessionmaker: async_sessionmaker[AsyncSession], token: str, event_key: str
) -> bool | None:
    """True: first use; None: used before for this very event (a retry); False: reused."""
    token = hashlib.sha256(token.encode()).hexdigest()  # any length in, one fixed-size key
    async with sessionmaker() as session, session.begin():
        now = utcnow()
        await session.execute(delete(WebhookToken).where(WebhookToken.seen_at < now - _TOKEN_KEPT))
        module: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        inserted = await session.execute(
            module.insert(WebhookToken)
            .values(token=token, event_key=event_key, seen_at=now)
            .on_conflict_do_nothing(index_elements=["token"])
            .returning(WebhookToken.token)
        )
        if inserted.first() is not None:
            return True
        seen = await session.get(WebhookToken, token)
        return None if seen is not None and seen.event_key == event_key else False


# ---- Amazon SES through SNS ----------------------------------------------------------------


def ses_feedback(notification: dict[str, Any], sns_message_id: str) -> list[Feedback]:
    kind_name = str(notification.get("notificationType") or notification.get("eventType") or "")
    mail = notification.get("mail")
    mail = mail if isinstance(mail, dict) else {}
    ids: list[str] = []
    common = mail.get("commonHeaders")
    if isinstance(common, dict) and _text(common.get("messageId")):
        ids.append(str(common["messageId"]))
    for header in _list(mail.get("headers")):
        if isinstance(header, dict) and str(header.get("name", "")).lower() == "message-id":
            value = _text(header.get("value"))
            if value:
                ids.append(value)
    source = _text(mail.get("source"), 320)
    found: list[tuple[FeedbackKind, str | None, str | None]] = []
    if kind_name == "Bounce":
        bounce = notification.get("bounce")
        bounce = bounce if isinstance(bounce, dict) else {}
        permanent = bounce.get("bounceType") == "Permanent"
        for recipient in _list(bounce.get("bouncedRecipients")):
            if isinstance(recipient, dict):
                status = clean_status(_text(recipient.get("status")))
                hard = permanent and status_class(status) != "4"
                found.append(
                    (
                        "hard_bounce" if hard else "soft_bounce",
                        _text(recipient.get("emailAddress"), 320),
                        status,
                    )
                )
    elif kind_name == "Complaint":
        complaint = notification.get("complaint")
        complaint = complaint if isinstance(complaint, dict) else {}
        if complaint.get("complaintFeedbackType") == "not-spam":
            return []
        for recipient in _list(complaint.get("complainedRecipients")):
            if isinstance(recipient, dict):
                found.append(("complaint", _text(recipient.get("emailAddress"), 320), None))
    elif kind_name == "Delivery":
        delivery = notification.get("delivery")
        delivery = delivery if isinstance(delivery, dict) else {}
        for address in _list(delivery.get("recipients")):
            found.append(("delivered", _text(address, 320), None))
    return [
        Feedback(
            kind=kind,
            source="ses",
            event_key=f"ses:{sns_message_id[:120]}:{place}",
            bounce_address=source,
            message_ids=tuple(ids),
            recipient=recipient,
            trusted=True,
            status_code=status,
        )
        for place, (kind, recipient, status) in enumerate(found)
    ]


# ---- the routes ----------------------------------------------------------------------------


def install_feedback_webhooks(
    app: FastAPI,
    settings: Settings,
    *,
    recorder: Callable[[], FeedbackRecorder],
    sns: Callable[[], SnsGateway],
    clock: Callable[[], float] = time.time,
) -> None:
    """The three webhooks on the dispatcher's app; ``recorder`` and ``sns`` are read per call
    (the lifespan makes them)."""

    @app.post(SENDGRID_PATH, tags=["webhooks"], **docs.SENDGRID)  # type: ignore[arg-type]
    async def sendgrid(request: Request, _signature: docs.SendGridSignature) -> Response:
        body = await request.body()
        key = settings.sendgrid_webhook_public_key
        if not key or not sendgrid_signature_valid(
            key,
            signature=request.headers.get(SENDGRID_SIGNATURE),
            timestamp=request.headers.get(SENDGRID_TIMESTAMP),
            body=body,
        ):
            return _forbidden()
        if not _fresh(request.headers.get(SENDGRID_TIMESTAMP, ""), clock(), SENDGRID_MAX_AGE):
            return _forbidden()
        try:
            events = json.loads(body)
        except ValueError:
            return _bad_request()
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            return _bad_request()
        reports = [found for event in events if (found := sendgrid_feedback(event))]
        await recorder().record_all(reports)
        return PlainTextResponse("", status_code=200)

    @app.post(MAILGUN_PATH, tags=["webhooks"], **docs.MAILGUN)  # type: ignore[arg-type]
    async def mailgun(request: Request) -> Response:
        secret = settings.mailgun_webhook_signing_key
        # An empty key would let anyone sign: off, like an unset one.
        key = secret.get_secret_value() if secret else ""
        try:
            payload = json.loads(await request.body())
        except ValueError:
            return _bad_request()
        if not isinstance(payload, dict):
            return _bad_request()
        signed = payload.get("signature")
        signed = signed if isinstance(signed, dict) else {}
        timestamp, token, signature = (
            str(signed.get(name) or "") for name in ("timestamp", "token", "signature")
        )
        if not key or not (timestamp and token and signature):
            return _forbidden()
        if not mailgun_signature_valid(key, timestamp=timestamp, token=token, signature=signature):
            return _forbidden()
        if not _fresh(timestamp, clock(), MAILGUN_MAX_AGE):
            return _forbidden()
        data = payload.get("event-data")
        if not isinstance(data, dict):
            return _bad_request()
        report = mailgun_feedback(data)
        event_key = report.event_key if report else f"mailgun:{_digest(data)}"
        taken = await _take_token(recorder().sessionmaker, token, event_key)
        if taken is False:
            return _forbidden()  # a token good for another event: a replay
        if taken and report is not None:
            await recorder().record(report)
        return PlainTextResponse("", status_code=200)

    @app.post(SES_PATH, tags=["webhooks"], **docs.SES)  # type: ignore[arg-type]
    async def ses(request: Request) -> Response:
        try:
            message = json.loads(await request.body())
        except ValueError:
            return _bad_request()
        if not isinstance(message, dict):
            return _bad_request()
        if str(message.get("TopicArn") or "") not in settings.ses_topic_arn_set:
            return _forbidden()
        gateway = sns()
        if not await signature_valid(message, gateway):
            return _forbidden()
        kind = message.get("Type")
        if kind == "SubscriptionConfirmation":
            url = str(message.get("SubscribeURL") or "")
            if not sns_url_allowed(url):
                return _forbidden()
            try:
                await gateway.confirm_subscription(url)
            except UntrustedUrl:
                return _forbidden()
            except httpx.HTTPError:
                # SNS sends the confirmation again: no harm in asking it to.
                return PlainTextResponse("subscription not confirmed", status_code=503)
            log.info("SNS subscription confirmed")
            return PlainTextResponse("", status_code=200)
        if kind != "Notification":
            return PlainTextResponse("", status_code=200)  # UnsubscribeConfirmation
        try:
            notification = json.loads(str(message.get("Message") or ""))
        except ValueError:
            return _bad_request()
        if not isinstance(notification, dict):
            return _bad_request()
        reports = ses_feedback(notification, str(message.get("MessageId") or ""))
        await recorder().record_all(reports)
        return PlainTextResponse("", status_code=200)
