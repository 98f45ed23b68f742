"""Bounces and complaints after the relay said yes, through the three services as processes
(PostgreSQL, RabbitMQ, real SMTP and HTTP): an alert goes out with VERP senders; each subscriber's
copy is then reported by one route (the bounce port: a Postfix DSN, a feedback loop's abuse
report, a delay warning; SendGrid; Mailgun; SES through SNS); the counts move, the addresses are
suppressed, staff see it; a letter bounced late flags its target; a second action skips the
bounced and the complaining.

SES goes to a second dispatcher replica run in this process (same database and queues, as
docker-compose runs two): only there can the test hand in an SNS gateway that returns its own
certificate instead of fetching Amazon's."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
import uvicorn
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from services.dispatcher.app import create_app
from shared.settings import SERVICES, load_settings
from tests import feedback_samples as samples
from tests.conftest import SECRET
from tests.dispatcher.test_feedback_webhooks import (
    MAILGUN_KEY,
    SENDGRID_PRIVATE,
    SENDGRID_PUBLIC,
    TOPIC,
    RecordingSns,
    mailgun_failed,
    mailgun_payload,
    ses_bounce,
    ses_mail,
    sns_message,
)
from tests.e2e.letters_flow import PASSWORD, STAFF, create_staff_user
from tests.e2e.stack import Stack, close_stack, open_stack
from tests.support import ReceivedMail, eventually, free_port

pytestmark = pytest.mark.e2e

# Who gets reported by which route.
PORT_HARD = "port.hard@example.net"  # Postfix DSN on the bounce port
PORT_COMPLAINT = "port.complaint@example.net"  # ARF from a feedback loop, redacted
SENDGRID_HARD = "sendgrid.hard@example.net"
MAILGUN_HARD = "mailgun.hard@example.net"
SES_HARD = "ses.hard@example.net"
SES_COMPLAINT = "ses.complaint@example.net"
DELAYED = "delayed@example.net"  # a delay warning (soft), then SendGrid says delivered
WRITER = "writer@example.net"  # nothing bad; writes to the official
EVERYONE = (
    PORT_HARD,
    PORT_COMPLAINT,
    SENDGRID_HARD,
    MAILGUN_HARD,
    SES_HARD,
    SES_COMPLAINT,
    DELAYED,
    WRITER,
)
BOUNCED = {PORT_HARD, SENDGRID_HARD, MAILGUN_HARD, SES_HARD}
COMPLAINED = {PORT_COMPLAINT, SES_COMPLAINT}
JUDGE = "judiciary@example.org"


def action(title: str) -> dict[str, Any]:
    return {
        "title": title,
        "country": "IR",
        "themes": ["torture"],
        "urgency": "urgent",
        "channels": ["email"],
        "deadline": "2099-12-20",
        "default_language": "en",
        "audience": {"countries": [], "themes": [], "languages": []},
        "targets": [{"name": "Head of the Judiciary", "email": JUDGE}],
        "content": {
            "en": {
                "subject": f"Urgent Action: {title}",
                "summary": "A journalist is held incommunicado.",
                "body": "Full case text.",
                "model_letter": "I am writing to urge you to release the journalist.",
            }
        },
    }


@pytest.fixture
async def stack(
    amqp_url: str, tmp_path: Path, pg_database: Callable[[], str]
) -> AsyncIterator[Stack]:
    urls = {s: pg_database() for s in SERVICES}
    running = await open_stack(
        amqp_url=amqp_url,
        database_urls=urls,
        log_dir=tmp_path,
        secret=SECRET,
        env={
            "UANET_MAIL_FROM": "Urgent Action Network <alerts@example.org>",
            "UANET_BOUNCE_ADDRESS": "bounces@example.org",
            "UANET_BOUNCE_SMTP_PORT": str(free_port()),
            "UANET_SENDGRID_WEBHOOK_PUBLIC_KEY": SENDGRID_PUBLIC,
            "UANET_MAILGUN_WEBHOOK_SIGNING_KEY": MAILGUN_KEY,
            "UANET_SES_TOPIC_ARNS": TOPIC,
        },
    )
    try:
        yield running
    finally:
        await close_stack(running)
        for service in SERVICES:
            log = running.log(service)
            for address in EVERYONE:
                assert address not in log, f"{service} logged personal data"


@asynccontextmanager
async def ses_replica(stack: Stack) -> AsyncIterator[str]:
    """A second dispatcher on the stack's database and broker, with the test's SNS gateway."""
    fields = {
        k.removeprefix("UANET_").lower(): v for k, v in stack.env.items() if k.startswith("UANET_")
    }
    fields["bounce_smtp_port"] = ""  # the stack's dispatcher has the bounce port
    app = create_app(load_settings(**fields), sns=RecordingSns())
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def token(stack: Stack, role: str) -> str:
    created = stack.cli("token", "create", "--role", role, "--name", f"bounces-{role}")
    assert created.returncode == 0, created.stderr
    return created.stdout.strip().splitlines()[-1]


async def sign_up_everyone(client: httpx.AsyncClient, stack: Stack) -> None:
    for address in EVERYONE:
        signed_up = await client.post(
            stack.url("subscriptions") + "/api/v1/subscribers",
            json={"email": address, "name": "Test", "country": "GB", "channels": ["email"]},
        )
        assert signed_up.status_code == 202, signed_up.text
    for address in EVERYONE:
        [mail] = await eventually(lambda a=address: stack.smtp.to(a), what="a confirmation")
        confirm = re.search(r"https?://\S+/confirm/\S+", mail.part("plain"))
        assert confirm
        assert (await client.post(confirm.group(0))).status_code == 200


async def publish(client: httpx.AsyncClient, stack: Stack, staff: str, title: str) -> str:
    headers = {"Authorization": f"Bearer {staff}"}
    created = await client.post(
        stack.url("publisher") + "/api/v1/actions", json=action(title), headers=headers
    )
    assert created.status_code == 201, created.text
    action_id: str = created.json()["id"]
    published = await client.post(
        f"{stack.url('publisher')}/api/v1/actions/{action_id}/publish", headers=headers
    )
    assert published.status_code == 200, published.text
    return action_id


def alert_to(stack: Stack, address: str, title: str) -> list[ReceivedMail]:
    return [m for m in stack.smtp.to(address) if title in m.header("Subject")]


async def stats(client: httpx.AsyncClient, stack: Stack, action_id: str, reader: str) -> Any:
    response = await client.get(
        f"{stack.url('publisher')}/api/v1/actions/{action_id}/stats",
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def hand_on(stack: Stack, raw: bytes, *, to: str) -> None:
    """What Postfix's transport for the bounce domain does: one SMTP transaction, null sender."""
    client = aiosmtplib.SMTP(
        hostname="127.0.0.1", port=int(stack.env["UANET_BOUNCE_SMTP_PORT"]), start_tls=False
    )
    async with client:
        await client.mail("")
        await client.rcpt(to)
        reply = await client.data(raw)
    assert reply.code == 250, reply


def sendgrid_post(events: list[dict[str, Any]]) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    timestamp = str(int(time.time()))
    signature = SENDGRID_PRIVATE.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {
        "Content-Type": "application/json",
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
    }


async def test_each_route_moves_counts_suppresses_and_the_next_action_skips_them(
    stack: Stack,
) -> None:
    create_staff_user(stack)
    staff, reader = token(stack, "staff"), token(stack, "coordinator")
    first = "journalist at risk of torture"
    async with httpx.AsyncClient(timeout=30) as client:
        await sign_up_everyone(client, stack)
        action_id = await publish(client, stack, staff, first)
        alerts: dict[str, ReceivedMail] = {}
        for address in EVERYONE:
            [alerts[address]] = await eventually(
                lambda a=address: alert_to(stack, a, first), what="an alert"
            )
            # VERP: each alert's envelope sender names that one message.
            assert re.fullmatch(
                r"bounces\+d\d+-[a-z2-7]{10}@example\.org", alerts[address].mail_from
            )
        await eventually(
            lambda: _sent(client, stack, action_id, reader, 8), what="eight alerts counted sent"
        )

        def verp(address: str) -> str:
            return alerts[address].mail_from

        def message_id(address: str) -> str:
            return alerts[address].header("Message-ID")

        # The bounce port: a Postfix DSN, a redacted abuse report, a delay warning.
        await hand_on(
            stack,
            samples.postfix_hard(verp(PORT_HARD), message_id(PORT_HARD), PORT_HARD),
            to=verp(PORT_HARD),
        )
        await hand_on(
            stack,
            samples.arf_complaint(
                verp(PORT_COMPLAINT), message_id(PORT_COMPLAINT), PORT_COMPLAINT, redacted=True
            ),
            to="bounces@example.org",
        )
        delayed = samples.postfix_delayed(verp(DELAYED), message_id(DELAYED), DELAYED)
        await hand_on(stack, delayed, to=verp(DELAYED))
        await hand_on(stack, delayed, to=verp(DELAYED))  # handed on twice: counted once

        dispatcher = stack.url("dispatcher")
        # SendGrid: a bounce and a delivery, signed; sent twice (SendGrid retries).
        body, headers = sendgrid_post(
            [
                {
                    "email": SENDGRID_HARD,
                    "timestamp": int(time.time()),
                    "smtp-id": message_id(SENDGRID_HARD),
                    "event": "bounce",
                    "type": "bounce",
                    "status": "5.1.1",
                    "reason": "550 5.1.1 The email account does not exist.",
                    "sg_event_id": "ZGVsaXZlcmVkLTAtNDY5NjI5Mi1",
                    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
                },
                {
                    "email": DELAYED,
                    "timestamp": int(time.time()),
                    "smtp-id": message_id(DELAYED),
                    "event": "delivered",
                    "response": "250 2.0.0 OK",
                    "sg_event_id": "ZGVsaXZlcmVkLTEtNDY5NjI5Mi1",
                    "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.1",
                },
            ]
        )
        for _ in range(2):
            response = await client.post(
                f"{dispatcher}/webhooks/email/sendgrid", content=body, headers=headers
            )
            assert response.status_code == 200
        forged = await client.post(
            f"{dispatcher}/webhooks/email/sendgrid",
            content=body.replace(b"bounce", b"spamreport"),
            headers=headers,
        )
        assert forged.status_code == 403

        # Mailgun: a permanent failure, matched by its Message-ID.
        mailgun = mailgun_payload(mailgun_failed(message_id(MAILGUN_HARD)))
        mailgun["event-data"]["recipient"] = MAILGUN_HARD
        response = await client.post(f"{dispatcher}/webhooks/email/mailgun", json=mailgun)
        assert response.status_code == 200

        # SES through SNS: a bounce (by its VERP source) and a complaint (by Message-ID).
        async with ses_replica(stack) as replica:
            bounce = ses_bounce("<unknown@example.org>", verp(SES_HARD))
            complaint = {
                "notificationType": "Complaint",
                "complaint": {
                    "complainedRecipients": [{"emailAddress": SES_COMPLAINT}],
                    "complaintFeedbackType": "abuse",
                    "timestamp": "2026-12-02T05:00:00.000Z",
                    "feedbackId": "0102019383a1b2c3-dddd-000000",
                },
                "mail": ses_mail(message_id(SES_COMPLAINT), "alerts@example.org"),
            }
            for notification in (bounce, complaint):
                message = sns_message("Notification", Message=json.dumps(notification))
                response = await client.post(
                    f"{replica}/webhooks/email/ses",
                    content=json.dumps(message),
                    headers={"Content-Type": "text/plain; charset=UTF-8"},
                )
                assert response.status_code == 200

        counted = await eventually(
            lambda: _sent(client, stack, action_id, reader, 4), what="the bounces counted"
        )
        assert counted["deliveries"]["email"] == {"sent": 4, "delivered": 1, "failed": 4}

        # The suppression list, as `uanet suppressions export` writes it.
        async def suppressions() -> dict[str, str] | None:
            exported = stack.log_dir / "suppressions.csv"
            done = await asyncio.to_thread(stack.cli, "suppressions", "export", str(exported))
            assert done.returncode == 0, done.stderr
            rows = exported.read_text().splitlines()[1:]
            found = {row.split(",")[1]: row.split(",")[2] for row in rows}
            return found if len(found) == 6 else None

        suppressed = await eventually(suppressions, what="six suppressions")
        assert suppressed == {
            **dict.fromkeys(BOUNCED, "hard_bounce"),
            **dict.fromkeys(COMPLAINED, "complaint"),
        }

        # A letter to the official, bounced late (Exim's DSN to its VERP address).
        act = re.search(r"https?://\S+/act/[^\s\"'<>]+", alerts[WRITER].part("plain"))
        assert act
        letter = {"name": "Writer", "email": WRITER, "letter": "Free him now."}
        sent = await client.post(f"{act.group(0)}/letter", json=letter)
        assert sent.status_code == 202, sent.text
        [to_judge] = await eventually(lambda: stack.smtp.to(JUDGE), what="the letter")
        assert to_judge.mail_from.startswith("bounces+l")
        await hand_on(
            stack,
            samples.exim_dsn(to_judge.mail_from, to_judge.header("Message-ID"), JUDGE),
            to=to_judge.mail_from,
        )

        # Staff see it all on the action's page.
        async with httpx.AsyncClient(base_url=stack.url("publisher"), timeout=30) as console:
            login = await console.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
            assert csrf
            signed_in = await console.post(
                "/login", data={"email": STAFF, "password": PASSWORD, "csrf_token": csrf.group(1)}
            )
            assert signed_in.status_code == 303

            async def flagged() -> str | None:
                page = await console.get(f"/actions/{action_id}")
                return page.text if "data-bounces" in page.text else None

            page = await eventually(flagged, what="the late letter bounce on the staff page")
            assert f"&lt;{JUDGE}&gt;" in page.split("data-bounces")[1]
            shown = dict(re.findall(r'data-feedback="([a-z_]+)">([0-9,]+)<', page))
            assert shown == {
                "hard": "4",
                "accepted": "8",
                "sent": "4",
                "delivered": "1",
                "hard_bounces": "4",
                "soft_bounces": "1",
                "complaints": "2",
            }
            overview = (await console.get("/overview")).text
            figures = dict(re.findall(r'data-overview="([a-z-]+)">([^<]+)<', overview))
            assert figures["bounce-rate"] == "50.00%"
            assert figures["complaint-rate"] == "25.00%"

        # The next action reaches only those who neither bounced nor complained.
        second = "lawyer detained"
        second_id = await publish(client, stack, staff, second)
        await eventually(lambda: _sent(client, stack, second_id, reader, 2), what="second alerts")
        for address in (DELAYED, WRITER):
            await eventually(lambda a=address: alert_to(stack, a, second), what="second alert")
        second_stats = await stats(client, stack, second_id, reader)
        assert second_stats["recipients"]["email"] == 2
        for address in BOUNCED | COMPLAINED:
            assert alert_to(stack, address, second) == []


async def _sent(
    client: httpx.AsyncClient, stack: Stack, action_id: str, reader: str, sent: int
) -> Any:
    counts = await stats(client, stack, action_id, reader)
    return counts if counts["deliveries"]["email"]["sent"] == sent else None
