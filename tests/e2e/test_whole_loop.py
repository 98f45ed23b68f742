"""The whole loop with the three services as real processes, on SQLite and on PostgreSQL:
sign up -> confirm -> publish -> one alert per chosen channel -> report -> exact live counts."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import SERVICES
from tests.conftest import SECRET
from tests.e2e.stack import Stack, close_stack, open_stack
from tests.support import eventually

pytestmark = pytest.mark.e2e

ANA = "ana@example.net"  # email only, English, GB
BEN = "+447911123401"  # SMS only, GB
CLAIRE_EMAIL, CLAIRE_PHONE = "claire@example.net", "+33612345678"  # both, French, FR
DAN = "dan@example.net"  # never confirms
EVE = "eve@example.net"  # confirms, then one-click unsubscribes
FRED = "fred@example.net"  # confirmed, but lives outside the audience (US)

ACTION: dict[str, Any] = {
    "title": "Journalist held incommunicado at risk of torture",
    "country": "IR",
    "themes": ["torture", "freedom-of-expression"],
    "urgency": "urgent",
    "channels": ["email", "sms"],
    "deadline": "2026-12-20",
    "default_language": "en",
    "audience": {"countries": ["GB", "FR", "IE"], "themes": [], "languages": []},
    "targets": [
        {
            "name": "Head of the Judiciary",
            "title": "Head of the Judiciary",
            "address": "c/o Embassy, 16 Prince's Gate, London SW7 1PT",
            "email": "judiciary@example.org",
            "salutation": "Dear Head of the Judiciary",
        }
    ],
    "content": {
        "en": {
            "subject": "Urgent Action: journalist at risk of torture",
            "summary": "A journalist is held incommunicado.",
            "body": "Full case text with **emphasis** and <script>alert(1)</script>.",
            "sms": "Journalist at risk of torture in Iran. Act now:",
            "model_letter": "I am writing to urge you to release the journalist.",
        },
        "fr": {
            "subject": "Action urgente : journaliste en danger de torture",
            "summary": "Un journaliste est détenu au secret.",
            "body": "Texte complet du cas.",
            "sms": "Journaliste en danger de torture en Iran. Agissez :",
            "model_letter": "Je vous écris pour demander la libération du journaliste.",
        },
    },
}


@pytest.fixture(params=["sqlite", "postgres"])
async def stack(
    request: pytest.FixtureRequest,
    amqp_url: str,
    tmp_path: Path,
    pg_database: Callable[[], str],
) -> AsyncIterator[Stack]:
    if request.param == "sqlite":
        urls = {s: f"sqlite+aiosqlite:///{tmp_path / f'{s}.db'}" for s in SERVICES}
    else:
        urls = {s: pg_database() for s in SERVICES}
    running = await open_stack(
        amqp_url=amqp_url, database_urls=urls, log_dir=tmp_path, secret=SECRET
    )
    try:
        yield running
    finally:
        await close_stack(running)
        for service in SERVICES:
            log = running.log(service)
            # No personal data in logs: no address or number of a subscriber ever appears.
            for secret_value in (ANA, BEN, CLAIRE_EMAIL, CLAIRE_PHONE, DAN, EVE, FRED):
                assert secret_value not in log, f"{service} logged personal data"


def link(text: str, path: str) -> str:
    match = re.search(r"https?://[^\s\"'<>]+" + re.escape(path) + r"[^\s\"'<>]+", text)
    assert match, f"no {path} link in {text[:500]!r}"
    return match.group(0)


async def sign_up(client: httpx.AsyncClient, stack: Stack, **fields: Any) -> None:
    body = {"name": "Test", "language": "en", "timezone": "Europe/London", "themes": []}
    body.update(fields)
    response = await client.post(stack.url("subscriptions") + "/api/v1/subscribers", json=body)
    assert response.status_code == 202, response.text


async def confirm_by_email(client: httpx.AsyncClient, stack: Stack, address: str) -> str:
    mails = await eventually(lambda: stack.smtp.to(address), what=f"confirmation to {address}")
    assert len(mails) == 1
    mail = mails[0]
    assert mail.header("List-Unsubscribe").startswith("<")
    assert mail.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
    confirm = link(mail.part("plain"), "/confirm/")
    page = await client.get(confirm)
    assert page.status_code == 200
    assert "<button" in page.text  # the link shows a button; its POST confirms
    confirmed = await client.post(confirm)
    assert confirmed.status_code == 200
    return mail.header("List-Unsubscribe").strip("<>")


async def confirm_by_sms(stack: Stack, number: str) -> None:
    await eventually(
        lambda: [m for m in stack.twilio.messages if m.to == number],
        what=f"confirmation SMS to {number}",
    )
    status = await stack.twilio.send_inbound_sms(stack.sms_webhook, from_=number, body="yes")
    assert status == 200


async def stats_of(client: httpx.AsyncClient, stack: Stack, action_id: str, auth: str) -> Any:
    response = await client.get(
        f"{stack.url('publisher')}/api/v1/actions/{action_id}/stats",
        headers={"Authorization": f"Bearer {auth}"},
    )
    assert response.status_code == 200, response.text
    return response.json()


async def test_publish_alert_respond_count(stack: Stack) -> None:
    staff, coordinator = stack.token("staff"), stack.token("coordinator")
    staff_auth = {"Authorization": f"Bearer {staff}"}
    coord_auth = {"Authorization": f"Bearer {coordinator}"}
    subs = stack.url("subscriptions")
    async with httpx.AsyncClient(timeout=30) as client:
        # -- sign-ups and consent --------------------------------------------------------------
        await sign_up(client, stack, email=ANA, country="GB", channels=["email"])
        await sign_up(client, stack, phone=BEN, country="GB", channels=["sms"])
        await sign_up(
            client,
            stack,
            email=CLAIRE_EMAIL,
            phone=CLAIRE_PHONE,
            country="FR",
            language="fr",
            timezone="Europe/Paris",
            channels=["email", "sms"],
        )
        await sign_up(client, stack, email=DAN, country="GB", channels=["email"])
        await sign_up(client, stack, email=EVE, country="IE", channels=["email"])
        await sign_up(client, stack, email=FRED, country="US", channels=["email"])

        await confirm_by_email(client, stack, ANA)
        await confirm_by_email(client, stack, CLAIRE_EMAIL)
        await confirm_by_email(client, stack, FRED)
        eve_unsubscribe = await confirm_by_email(client, stack, EVE)
        await confirm_by_sms(stack, BEN)
        await confirm_by_sms(stack, CLAIRE_PHONE)
        # RFC 8058 one-click: a bare POST, no cookie, no form token.
        one_click = await client.post(eve_unsubscribe, data={"List-Unsubscribe": "One-Click"})
        assert one_click.status_code == 200

        # -- staff publish ---------------------------------------------------------------------
        created = await client.post(
            stack.url("publisher") + "/api/v1/actions", json=ACTION, headers=staff_auth
        )
        assert created.status_code == 201, created.text
        action = created.json()
        assert action["status"] == "draft"
        assert re.fullmatch(r"UA \d+/26", action["reference"])
        published = await client.post(
            f"{stack.url('publisher')}/api/v1/actions/{action['id']}/publish", headers=staff_auth
        )
        assert published.status_code == 200, published.text
        assert published.json()["status"] == "published"

        # -- alerts: exactly one per confirmed subscriber and chosen channel --------------------
        def alerts_to(address: str) -> list[Any]:
            return [m for m in stack.smtp.to(address) if "/act/" in m.part("plain")]

        def sms_alerts_to(number: str) -> list[Any]:
            return [m for m in stack.twilio.messages if m.to == number and "/act/" in m.body]

        await eventually(
            lambda: (
                alerts_to(ANA)
                and alerts_to(CLAIRE_EMAIL)
                and sms_alerts_to(BEN)
                and sms_alerts_to(CLAIRE_PHONE)
            ),
            what="every alert",
        )
        stats = await eventually(
            lambda: _when(
                stats_of(client, stack, action["id"], coordinator),
                lambda s: (
                    s["deliveries"]["email"]["sent"] == 2 and s["deliveries"]["sms"]["sent"] == 2
                ),
            ),
            what="sent counts",
        )
        await asyncio.sleep(1.0)  # a late duplicate would show up here
        for address in (ANA, CLAIRE_EMAIL):
            assert len(alerts_to(address)) == 1
        for number in (BEN, CLAIRE_PHONE):
            assert len(sms_alerts_to(number)) == 1
        for address in (DAN, EVE, FRED):
            assert alerts_to(address) == []

        ana_mail = alerts_to(ANA)[0]
        assert ana_mail.header("Subject") == ACTION["content"]["en"]["subject"]
        assert ana_mail.header("List-Unsubscribe-Post") == "List-Unsubscribe=One-Click"
        assert "/unsubscribe/" in ana_mail.header("List-Unsubscribe")
        assert ana_mail.part("html") and ana_mail.part("plain")
        assert "<script>alert(1)</script>" not in ana_mail.part("html")
        assert link(ana_mail.part("plain"), "/unsubscribe/")
        claire_mail = alerts_to(CLAIRE_EMAIL)[0]
        assert claire_mail.header("Subject") == ACTION["content"]["fr"]["subject"]
        ben_sms = sms_alerts_to(BEN)[0].body
        assert ben_sms.startswith(ACTION["content"]["en"]["sms"])
        assert ben_sms.endswith("Reply STOP to opt out")
        assert sms_alerts_to(CLAIRE_PHONE)[0].body.startswith(ACTION["content"]["fr"]["sms"])

        # -- the action page and reports -------------------------------------------------------
        ana_act = link(ana_mail.part("plain"), "/act/")
        page = await client.get(ana_act)
        assert page.status_code == 200
        assert "Head of the Judiciary" in page.text
        assert ACTION["content"]["en"]["model_letter"] in page.text
        assert "<script>alert(1)</script>" not in page.text
        claire_act = link(claire_mail.part("plain"), "/act/")
        assert ACTION["content"]["fr"]["model_letter"] in (await client.get(claire_act)).text

        # Ana by the page's form, twice the same submission (a retried request counts once).
        report_id = "7b1f4c1e-9d3a-4f0e-8a51-0c2b6f1d9e11"
        for _ in range(2):
            reported = await client.post(
                ana_act, data={"kind": "letter", "count": "2", "report_id": report_id}
            )
            assert reported.status_code in (200, 202, 303), reported.text
        # Claire by JSON.
        reported = await client.post(claire_act, json={"kind": "call", "count": 1})
        assert reported.status_code in (200, 202), reported.text
        # Ben by SMS.
        assert (
            await stack.twilio.send_inbound_sms(stack.sms_webhook, from_=BEN, body="SENT 2") == 200
        )

        # Twilio's receipt for Ben's alert.
        ben_sid = sms_alerts_to(BEN)[0].sid
        assert await stack.twilio.send_status_callback(ben_sid, "delivered") == 200

        def final(s: Any) -> bool:
            return bool(s["responses"]["actions"] == 5 and s["deliveries"]["sms"]["delivered"] == 1)

        stats = await eventually(
            lambda: _when(stats_of(client, stack, action["id"], coordinator), final),
            what="final counts",
        )
        assert stats["action_id"] == action["id"]
        assert stats["reference"] == action["reference"]
        assert stats["recipients"] == {"email": 2, "sms": 2}
        assert stats["deliveries"] == {
            "email": {"sent": 2, "delivered": 0, "failed": 0},
            "sms": {"sent": 2, "delivered": 1, "failed": 0},
        }
        assert stats["responses"] == {
            "people": 3,
            "actions": 5,
            "by_kind": {"letter": 2, "email": 0, "call": 1, "sms_reply": 2, "other": 0},
        }
        assert stats["by_country"]["GB"] == {"recipients": 2, "people": 2, "actions": 4}
        assert stats["by_country"]["FR"] == {"recipients": 1, "people": 1, "actions": 1}
        assert "US" not in stats["by_country"] or stats["by_country"]["US"]["recipients"] == 0

        # -- the same counts as CSV and as a live stream ----------------------------------------
        csv = await client.get(
            f"{stack.url('publisher')}/api/v1/actions/{action['id']}/stats.csv", headers=coord_auth
        )
        assert csv.status_code == 200
        assert csv.headers["content-type"].startswith("text/csv")
        assert "GB" in csv.text and "FR" in csv.text
        async with client.stream(
            "GET",
            f"{stack.url('publisher')}/api/v1/actions/{action['id']}/stats/stream",
            headers=coord_auth,
        ) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = await asyncio.wait_for(_first_event(stream), 10)
        assert first["responses"]["actions"] == 5

        # -- STOP by SMS: no further SMS for Ben ------------------------------------------------
        assert await stack.twilio.send_inbound_sms(stack.sms_webhook, from_=BEN, body="Stop") == 200
        second = dict(ACTION, title="Second action")
        created = await client.post(
            stack.url("publisher") + "/api/v1/actions", json=second, headers=staff_auth
        )
        second_id = created.json()["id"]
        assert (
            await client.post(
                f"{stack.url('publisher')}/api/v1/actions/{second_id}/publish", headers=staff_auth
            )
        ).status_code == 200
        await eventually(
            lambda: _when(
                stats_of(client, stack, second_id, coordinator),
                lambda s: (
                    s["deliveries"]["email"]["sent"] == 2 and s["deliveries"]["sms"]["sent"] == 1
                ),
            ),
            what="second action sent",
        )
        assert len(sms_alerts_to(BEN)) == 1
        assert len(sms_alerts_to(CLAIRE_PHONE)) == 2
        assert alerts_to(EVE) == [] and alerts_to(DAN) == []
        assert subs  # the subscriptions service stayed up throughout
        for service in SERVICES:
            assert stack.processes[service].poll() is None, f"{service} died"


async def _when(awaitable: Any, predicate: Callable[[Any], bool]) -> Any:
    value = await awaitable
    return value if predicate(value) else None


async def _first_event(stream: httpx.Response) -> Any:
    data: list[str] = []
    async for line in stream.aiter_lines():
        if line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            return json.loads("\n".join(data))
    raise AssertionError("stream ended without an event")
