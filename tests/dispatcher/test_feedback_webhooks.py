"""The ESP webhooks over real HTTP (the dispatcher under uvicorn, on a real broker and database):
payloads shaped as SendGrid, Mailgun and SES/SNS document them, signed with keys made here.
Forged, unsigned, stale or replayed: 403 and nothing changes; the same event twice counts once."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from fastapi import FastAPI
from sqlalchemy import select

from services.dispatcher.app import create_app
from services.dispatcher.feedback.sns import (
    HttpsSnsGateway,
    UntrustedUrl,
    certificate_url_allowed,
    sns_url_allowed,
)
from services.dispatcher.identity import MessageRef, MessageTags
from services.dispatcher.models import DELIVERED, FAILED, SENT, Delivery, Outbox
from shared.events import utcnow
from shared.migrations import upgrade
from shared.settings import Settings

ANA = "ana@example.net"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:uanet-ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem"
SUBSCRIBE_URL = (
    "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription"
    f"&TopicArn={TOPIC}&Token=2336412f37fb687f5d51e6e2425dacbba"
)
MAILGUN_KEY = "key-mailgun-signing-made-by-the-test"


def sendgrid_keys() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    public = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(public).decode()


SENDGRID_PRIVATE, SENDGRID_PUBLIC = sendgrid_keys()


def sns_certificate() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return key, certificate.public_bytes(serialization.Encoding.PEM)


SNS_KEY, SNS_PEM = sns_certificate()


@dataclass
class RecordingSns:
    """The SNS gateway of these tests: the certificate made above; remembers what it was asked."""

    fetched: list[str] = field(default_factory=list)
    confirmed: list[str] = field(default_factory=list)

    async def certificate(self, url: str) -> bytes:
        self.fetched.append(url)
        return SNS_PEM

    async def confirm_subscription(self, url: str) -> None:
        self.confirmed.append(url)


@dataclass
class Dispatcher:
    app: FastAPI
    url: str
    sns: RecordingSns

    @property
    def tags(self) -> MessageTags:
        tags: MessageTags = self.app.state.feedback.tags
        return tags

    async def sent_alert(self, status: str = SENT) -> Delivery:
        async with self.app.state.runtime.sessionmaker() as session, session.begin():
            row = Delivery(
                action_id=str(uuid.uuid4()),
                message_kind="alert",
                subscriber_id=str(uuid.uuid4()),
                channel="email",
                status=status,
                attempts=1,
                sent_at=utcnow(),
            )
            session.add(row)
        return row

    async def status(self, row_id: int) -> str:
        async with self.app.state.runtime.sessionmaker() as session:
            row = await session.get(Delivery, row_id)
            assert row is not None
            return str(row.status)

    async def outbox(self) -> list[tuple[str, dict[str, Any]]]:
        async with self.app.state.runtime.sessionmaker() as session:
            rows = (await session.execute(select(Outbox).order_by(Outbox.created_at))).scalars()
            return [(row.routing_key, json.loads(row.body)) for row in rows]

    def message_id(self, row: Delivery) -> str:
        return self.tags.message_id(MessageRef.delivery(row.id))


@pytest.fixture
async def dispatcher(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[Dispatcher]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'dispatcher.db'}"
    await asyncio.to_thread(upgrade, "dispatcher", url)
    settings = make_settings(
        dispatcher_database_url=url,
        mail_from="Urgent Action Network <alerts@example.org>",
        bounce_address="bounces@example.org",
        sendgrid_webhook_public_key=SENDGRID_PUBLIC,
        mailgun_webhook_signing_key=MAILGUN_KEY,
        ses_topic_arns=f"arn:aws:sns:us-east-1:123456789012:other, {TOPIC}",
    )
    sns = RecordingSns()
    app = create_app(settings, sns=sns)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        await app.state.runtime.wait_started()
        port = server.servers[0].sockets[0].getsockname()[1]
        yield Dispatcher(app, f"http://127.0.0.1:{port}", sns)
    finally:
        server.should_exit = True
        await task


# ---- SendGrid ------------------------------------------------------------------------------


def sendgrid_headers(
    body: bytes, key: ec.EllipticCurvePrivateKey = SENDGRID_PRIVATE, *, age: int = 0
) -> dict[str, str]:
    timestamp = str(int(time.time()) - age)
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


def sendgrid_event(event: str, *, email: str, smtp_id: str | None, **extra: Any) -> dict[str, Any]:
    """As the Event Webhook documentation shows them."""
    found: dict[str, Any] = {
        "email": email,
        "timestamp": 1764649211,
        "event": event,
        "sg_event_id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "category": ["urgent-action"],
    }
    if smtp_id is not None:
        found["smtp-id"] = smtp_id
    found.update(extra)
    return found


async def test_sendgrid_events_move_counts_once(dispatcher: Dispatcher) -> None:
    bounced, complained, delivered = [await dispatcher.sent_alert() for _ in range(3)]
    events = [
        sendgrid_event(
            "bounce",
            email=ANA,
            smtp_id=dispatcher.message_id(bounced),
            reason="550 5.1.1 The email account that you tried to reach does not exist.",
            status="5.1.1",
            type="bounce",
            bounce_classification="Invalid Address",
        ),
        sendgrid_event(
            "spamreport", email="ben@example.net", smtp_id=dispatcher.message_id(complained)
        ),
        sendgrid_event(
            "delivered",
            email="claire@example.net",
            smtp_id=dispatcher.message_id(delivered),
            response="250 2.0.0 OK 1764649211 x12si1234567wrb.301 - gsmtp",
        ),
        # Matches none of ours (sent before uanet, say): the signed address is suppressed.
        sendgrid_event("dropped", email="dan@example.net", smtp_id=None, reason="Bounced Address"),
        sendgrid_event("open", email=ANA, smtp_id=dispatcher.message_id(delivered)),
    ]
    body = json.dumps(events).encode()
    async with httpx.AsyncClient(base_url=dispatcher.url) as client:
        response = await client.post(
            "/webhooks/email/sendgrid", content=body, headers=sendgrid_headers(body)
        )
        assert response.status_code == 200
        assert await dispatcher.status(bounced.id) == FAILED
        assert await dispatcher.status(complained.id) == SENT
        assert await dispatcher.status(delivered.id) == DELIVERED
        emitted = await dispatcher.outbox()
        feedback = sorted(
            (body["kind"], body["previous"]) for key, body in emitted if key == "delivery.feedback"
        )
        assert feedback == [("complaint", None), ("delivered", "sent"), ("hard_bounce", "sent")]
        suppressions = sorted(
            (body["reason"], body["address"], body["subscriber_id"])
            for key, body in emitted
            if key == "recipient.suppressed"
        )
        assert suppressions == [
            ("complaint", "", complained.subscriber_id),
            ("hard_bounce", "", bounced.subscriber_id),
            ("hard_bounce", "dan@example.net", None),
        ]

        # SendGrid retries a batch it thinks failed: nothing moves twice.
        again = await client.post(
            "/webhooks/email/sendgrid", content=body, headers=sendgrid_headers(body)
        )
        assert again.status_code == 200
        assert len(await dispatcher.outbox()) == len(emitted)


async def test_sendgrid_refuses_what_it_did_not_sign(dispatcher: Dispatcher) -> None:
    row = await dispatcher.sent_alert()
    body = json.dumps(
        [sendgrid_event("bounce", email=ANA, smtp_id=dispatcher.message_id(row), status="5.1.1")]
    ).encode()
    other_key = ec.generate_private_key(ec.SECP256R1())
    async with httpx.AsyncClient(base_url=dispatcher.url) as client:
        forged = await client.post(
            "/webhooks/email/sendgrid", content=body, headers=sendgrid_headers(body, other_key)
        )
        unsigned = await client.post("/webhooks/email/sendgrid", content=body)
        headers = sendgrid_headers(body)
        tampered = await client.post(
            "/webhooks/email/sendgrid", content=body.replace(b"5.1.1", b"5.1.2"), headers=headers
        )
        headers["X-Twilio-Email-Event-Webhook-Timestamp"] = "1"
        other_time = await client.post("/webhooks/email/sendgrid", content=body, headers=headers)
        # Signed by SendGrid, but 10 minutes ago: a captured call replayed later.
        replayed = await client.post(
            "/webhooks/email/sendgrid", content=body, headers=sendgrid_headers(body, age=600)
        )
        not_json = b"{not json"
        bad = await client.post(
            "/webhooks/email/sendgrid", content=not_json, headers=sendgrid_headers(not_json)
        )
    refused = (forged, unsigned, tampered, other_time, replayed)
    assert [r.status_code for r in refused] == [403] * 5
    assert bad.status_code == 400
    assert await dispatcher.status(row.id) == SENT
    assert await dispatcher.outbox() == []


# ---- Mailgun -------------------------------------------------------------------------------


def mailgun_payload(
    event_data: dict[str, Any],
    *,
    key: str = MAILGUN_KEY,
    timestamp: int | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    stamp = str(timestamp if timestamp is not None else int(time.time()))
    token = token or hashlib.sha256(uuid.uuid4().bytes).hexdigest()[:50]
    signature = hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()
    return {
        "signature": {"timestamp": stamp, "token": token, "signature": signature},
        "event-data": event_data,
    }


def mailgun_failed(message_id: str, severity: str = "permanent") -> dict[str, Any]:
    """A ``failed`` event as Mailgun's webhook documentation shows it."""
    return {
        "id": base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="),
        "timestamp": 1764649211.123456,
        "log-level": "error",
        "event": "failed",
        "severity": severity,
        "reason": "bounce" if severity == "permanent" else "generic",
        "recipient": ANA,
        "recipient-domain": "example.net",
        "envelope": {
            "sender": "postmaster@mg.example.org",
            "transport": "smtp",
            "targets": ANA,
        },
        "message": {
            # Mailgun gives the Message-ID without its angle brackets.
            "headers": {
                "to": ANA,
                "message-id": message_id.strip("<>"),
                "from": "Urgent Action Network <alerts@example.org>",
                "subject": "Urgent Action: journalist at risk of torture",
            },
            "attachments": [],
            "size": 4120,
        },
        "delivery-status": {
            "attempt-no": 1,
            "code": 550 if severity == "permanent" else 452,
            "enhanced-code": "5.1.1" if severity == "permanent" else "4.2.2",
            "message": "5.1.1 The email account that you tried to reach does not exist.",
            "description": "",
            "mx-host": "gmail-smtp-in.l.google.com",
        },
        "flags": {"is-routed": False, "is-authenticated": True, "is-test-mode": False},
    }


async def test_mailgun_events_and_their_signatures(dispatcher: Dispatcher) -> None:
    hard, soft, complained = [await dispatcher.sent_alert() for _ in range(3)]
    path = "/webhooks/email/mailgun"
    permanent = mailgun_payload(mailgun_failed(dispatcher.message_id(hard)))
    async with httpx.AsyncClient(base_url=dispatcher.url) as client:
        assert (await client.post(path, json=permanent)).status_code == 200
        assert await dispatcher.status(hard.id) == FAILED
        # The same call again (Mailgun retried it): fine, and nothing moves twice.
        assert (await client.post(path, json=permanent)).status_code == 200
        temporary = mailgun_payload(mailgun_failed(dispatcher.message_id(soft), "temporary"))
        assert (await client.post(path, json=temporary)).status_code == 200
        complaint = mailgun_payload(
            {
                "id": "ncV2XwymRUKbPek_MIM-Gw",
                "event": "complained",
                "recipient": "ben@example.net",
                "timestamp": 1764649300.0,
                "message": {"headers": {"message-id": dispatcher.message_id(complained)[1:-1]}},
            }
        )
        assert (await client.post(path, json=complaint)).status_code == 200
        emitted = await dispatcher.outbox()

        # A reused token with another event, an old timestamp, a wrong key, no signature.
        reused = mailgun_payload(
            mailgun_failed(dispatcher.message_id(soft)),
            token=permanent["signature"]["token"],
        )
        stale = mailgun_payload(
            mailgun_failed(dispatcher.message_id(soft)), timestamp=int(time.time()) - 3600
        )
        wrong = mailgun_payload(mailgun_failed(dispatcher.message_id(soft)), key="not-the-key")
        unsigned = {"event-data": mailgun_failed(dispatcher.message_id(soft))}
        for refused in (reused, stale, wrong, unsigned):
            assert (await client.post(path, json=refused)).status_code == 403
        assert (await client.post(path, content=b"[1, 2")).status_code == 400

    assert await dispatcher.status(soft.id) == SENT
    assert await dispatcher.outbox() == emitted
    kinds = sorted(body["kind"] for key, body in emitted if key == "delivery.feedback")
    assert kinds == ["complaint", "hard_bounce", "soft_bounce"]
    reasons = sorted(body["reason"] for key, body in emitted if key == "recipient.suppressed")
    assert reasons == ["complaint", "hard_bounce"]


# ---- Amazon SES through SNS ----------------------------------------------------------------


def sns_message(kind: str, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {
        "Type": kind,
        "MessageId": str(uuid.uuid4()),
        "TopicArn": TOPIC,
        "Timestamp": "2026-12-02T04:20:11.123Z",
        "SignatureVersion": "1",
        "SigningCertURL": CERT_URL,
        **fields,
    }
    names = (
        ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
        if kind == "Notification"
        else ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type")
    )
    signed = "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()
    algorithm = hashes.SHA1() if message["SignatureVersion"] == "1" else hashes.SHA256()
    signature = SNS_KEY.sign(signed, padding.PKCS1v15(), algorithm)
    message["Signature"] = base64.b64encode(signature).decode()
    if kind == "Notification":
        message["UnsubscribeURL"] = (
            "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=" + TOPIC
        )
    return message


def ses_mail(message_id: str, source: str) -> dict[str, Any]:
    return {
        "timestamp": "2026-12-02T04:20:08.000Z",
        "source": source,
        "sourceArn": "arn:aws:ses:eu-west-1:123456789012:identity/example.org",
        "messageId": "0102019383a1b2c3-5e6f7a8b-1c2d-4e5f-8a9b-0c1d2e3f4a5b-000000",
        "destination": [ANA],
        "headersTruncated": False,
        "headers": [
            {"name": "From", "value": "Urgent Action Network <alerts@example.org>"},
            {"name": "To", "value": ANA},
            {"name": "Message-ID", "value": message_id},
        ],
        "commonHeaders": {
            "from": ["Urgent Action Network <alerts@example.org>"],
            "to": [ANA],
            "messageId": message_id,
            "subject": "Urgent Action: journalist at risk of torture",
        },
    }


def ses_bounce(message_id: str, source: str, bounce_type: str = "Permanent") -> dict[str, Any]:
    """A Bounce notification as the SES developer guide shows it."""
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": ANA,
                    "action": "failed",
                    "status": "5.1.1" if bounce_type == "Permanent" else "4.4.7",
                    "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                }
            ],
            "timestamp": "2026-12-02T04:20:11.000Z",
            "feedbackId": "0102019383a1b2c3-aaaa-bbbb-cccc-000000",
            "remoteMtaIp": "203.0.113.25",
            "reportingMTA": "dsn; a1-23.smtp-out.eu-west-1.amazonses.com",
        },
        "mail": ses_mail(message_id, source),
    }


async def test_ses_notifications_through_sns(dispatcher: Dispatcher) -> None:
    bounced, complained, delivered = [await dispatcher.sent_alert() for _ in range(3)]
    tags = dispatcher.tags
    path = "/webhooks/email/ses"
    headers = {"Content-Type": "text/plain; charset=UTF-8", "x-amz-sns-message-type": ""}

    def verp(row: Delivery) -> str:
        found = tags.envelope_sender(MessageRef.delivery(row.id))
        assert found is not None
        return found

    async with httpx.AsyncClient(base_url=dispatcher.url) as client:

        async def post(message: dict[str, Any]) -> int:
            response = await client.post(path, content=json.dumps(message), headers=headers)
            return response.status_code

        confirmation = sns_message(
            "SubscriptionConfirmation",
            Message=f"You have chosen to subscribe to the topic {TOPIC}.",
            Token="2336412f37fb687f5d51e6e2425dacbba",
            SubscribeURL=SUBSCRIBE_URL,
            SignatureVersion="2",
        )
        assert await post(confirmation) == 200
        assert dispatcher.sns.confirmed == [SUBSCRIBE_URL]

        # The VERP sender (SES reports the envelope sender as ``source``) finds the alert.
        bounce = sns_message(
            "Notification", Message=json.dumps(ses_bounce("<x@elsewhere>", verp(bounced)))
        )
        assert await post(bounce) == 200
        assert await post(bounce) == 200  # SNS delivers at least once
        complaint = sns_message(
            "Notification",
            Message=json.dumps(
                {
                    "notificationType": "Complaint",
                    "complaint": {
                        "complainedRecipients": [{"emailAddress": ANA}],
                        "timestamp": "2026-12-02T05:00:00.000Z",
                        "feedbackId": "0102019383a1b2c3-dddd-000000",
                        "userAgent": "ExampleMail-FBL/2.1",
                        "complaintFeedbackType": "abuse",
                        "arrivalDate": "2026-12-02T04:20:09.000Z",
                    },
                    "mail": ses_mail(dispatcher.message_id(complained), "alerts@example.org"),
                }
            ),
        )
        assert await post(complaint) == 200
        delivery = sns_message(
            "Notification",
            Message=json.dumps(
                {
                    "notificationType": "Delivery",
                    "mail": ses_mail(dispatcher.message_id(delivered), "alerts@example.org"),
                    "delivery": {
                        "timestamp": "2026-12-02T04:20:10.000Z",
                        "processingTimeMillis": 1520,
                        "recipients": [ANA],
                        "smtpResponse": "250 2.6.0 Message received",
                        "reportingMTA": "a1-23.smtp-out.eu-west-1.amazonses.com",
                    },
                }
            ),
        )
        assert await post(delivery) == 200
        emitted = await dispatcher.outbox()

        # Forged: another topic, a changed message, a certificate from elsewhere, a subscribe
        # URL that is not SNS's (signed, even), no signature.
        other_topic = sns_message(
            "Notification",
            Message=json.dumps(ses_bounce("<x@y>", verp(complained))),
            TopicArn="arn:aws:sns:eu-west-1:999999999999:attacker",
        )
        changed = dict(bounce, Message=json.dumps(ses_bounce("<x@y>", verp(complained))))
        elsewhere = sns_message(
            "Notification",
            Message=json.dumps(ses_bounce("<x@y>", verp(complained))),
            SigningCertURL="https://sns.eu-west-1.amazonaws.com.attacker.example/cert.pem",
        )
        bad_subscribe = sns_message(
            "SubscriptionConfirmation",
            Message="subscribe",
            Token="t",
            SubscribeURL="https://attacker.example/?Action=ConfirmSubscription",
        )
        unsigned = {k: v for k, v in bounce.items() if k != "Signature"}
        fetched_before = list(dispatcher.sns.fetched)
        for forged in (other_topic, changed, elsewhere, bad_subscribe, unsigned):
            assert await post(forged) == 403
        assert (await client.post(path, content=b"<xml/>", headers=headers)).status_code == 400

    assert all(url == CERT_URL for url in dispatcher.sns.fetched)
    assert len(dispatcher.sns.fetched) > len(fetched_before)  # the changed one was checked
    assert dispatcher.sns.confirmed == [SUBSCRIBE_URL]
    assert await dispatcher.outbox() == emitted
    assert await dispatcher.status(bounced.id) == FAILED
    assert await dispatcher.status(complained.id) == SENT
    assert await dispatcher.status(delivered.id) == DELIVERED
    kinds = sorted(body["kind"] for key, body in emitted if key == "delivery.feedback")
    assert kinds == ["complaint", "delivered", "hard_bounce"]


def test_only_sns_urls_are_believed() -> None:
    assert sns_url_allowed("https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription")
    assert sns_url_allowed("https://sns.cn-north-1.amazonaws.com.cn/x")
    assert certificate_url_allowed(CERT_URL)
    for url in (
        "http://sns.eu-west-1.amazonaws.com/cert.pem",  # not HTTPS
        "https://sns.eu-west-1.amazonaws.com.attacker.example/cert.pem",
        "https://attacker.example/sns.eu-west-1.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com:8443/cert.pem",
        "https://user@sns.eu-west-1.amazonaws.com/cert.pem",
        "https://s3.amazonaws.com/cert.pem",
        "https://sns.eu-west-1.amazonaws.com/cert.txt",
        "https://sns..amazonaws.com/cert.pem",
        "https://[::1/cert.pem",
    ):
        assert not certificate_url_allowed(url), url


async def test_the_real_gateway_fetches_only_from_sns_and_caches() -> None:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url))
        return httpx.Response(200, content=SNS_PEM)

    gateway = HttpsSnsGateway(httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    try:
        with pytest.raises(UntrustedUrl):
            await gateway.certificate("https://attacker.example/cert.pem")
        with pytest.raises(UntrustedUrl):
            await gateway.confirm_subscription("http://sns.eu-west-1.amazonaws.com/?Action=x")
        assert asked == []
        assert await gateway.certificate(CERT_URL) == SNS_PEM
        assert await gateway.certificate(CERT_URL) == SNS_PEM
        assert asked == [CERT_URL]
    finally:
        await gateway.close()


@pytest.mark.parametrize("empty", [None, ""], ids=["unset", "empty"])
async def test_without_keys_every_webhook_refuses(
    make_settings: Callable[..., Settings], empty: str | None
) -> None:
    """Nothing can prove who sent a call then; an empty Mailgun key would let anyone sign."""
    settings = make_settings(
        sendgrid_webhook_public_key=empty, mailgun_webhook_signing_key=empty, ses_topic_arns=empty
    )
    app = create_app(settings, sns=RecordingSns())  # no lifespan: nothing may be reached
    body = json.dumps([sendgrid_event("bounce", email=ANA, smtp_id="<a@b>")]).encode()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        sendgrid = await client.post(
            "/webhooks/email/sendgrid", content=body, headers=sendgrid_headers(body)
        )
        mailgun = await client.post(
            "/webhooks/email/mailgun",
            json=mailgun_payload(mailgun_failed("<a@b>"), key=""),
        )
        ses = await client.post(
            "/webhooks/email/ses",
            content=json.dumps(sns_message("Notification", Message="{}")),
        )
    assert [sendgrid.status_code, mailgun.status_code, ses.status_code] == [403, 403, 403]
