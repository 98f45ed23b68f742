"""The public sign-up under abuse (contract §11), against the three services as processes, the
Twilio-compatible endpoint counting SMS and the SMTP server on loopback counting mail:

- 200 sign-ups of numbers of a dozen countries and kinds, from 50 IPv6 addresses of one /64,
  cost at most the hourly budget of confirmation SMS;
- a sign-up form posted from another site gets 403, a listed campaign site 202 (and its CORS
  preflight an answer);
- seven spellings of one Gmail mailbox bring it 3 mails;
- following a confirmation link confirms nothing, the page's button does;
- a flood of 500 SMS sign-ups during a 200-recipient SMS alert delays no alert SMS.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.settings import SERVICES
from tests.conftest import SECRET
from tests.e2e.stack import Stack, close_stack, open_stack
from tests.support import eventually

pytestmark = pytest.mark.e2e

BUDGET = 5
CAMPAIGN = "https://campaign.example.org"

# A dozen countries; mobiles and numbers that are not (premium rate, shared cost, toll free,
# VoIP, pager, UAN, fixed lines).
NUMBERS = [
    "+447400123456",
    "+449090901234",
    "+448431234567",
    "+448001234567",
    "+445600123456",
    "+447640123456",
    "+445512345678",
    "+442079460000",
    "+33612345678",
    "+33140000000",
    "+4915112345678",
    "+12015550123",
    "+19005550123",
    "+18005550123",
    "+34612345678",
    "+390612345678",
    "+5511987654321",
    "+919876543210",
    "+819012345678",
    "+61412345678",
    "+27821234567",
    "+48512345678",
]


async def stack_with(tmp_path: Path, amqp_url: str, env: dict[str, str]) -> Stack:
    urls = {s: f"sqlite+aiosqlite:///{tmp_path / f'{s}.db'}" for s in SERVICES}
    return await open_stack(
        amqp_url=amqp_url, database_urls=urls, log_dir=tmp_path, secret=SECRET, env=env
    )


@pytest.fixture
async def guarded(amqp_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    env = {
        "UANET_CONFIRMATION_SMS_PER_HOUR": str(BUDGET),
        "UANET_SIGNUP_ORIGINS": CAMPAIGN,
    }
    running = await stack_with(tmp_path, amqp_url, env)
    try:
        yield running
    finally:
        await close_stack(running)


def vary(number: str, n: int) -> str:
    """Another number of the same kind: the last two digits changed."""
    return f"{number[:-2]}{n % 100:02d}"


async def test_pumping_sms_through_the_sign_up_costs_at_most_the_budget(guarded: Stack) -> None:
    signup = guarded.url("subscriptions") + "/api/v1/subscribers"
    kinds = itertools.cycle(NUMBERS)
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for n in range(200):
            number = vary(next(kinds), n)
            response = await client.post(
                signup,
                json={"phone": number, "country": "GB", "channels": ["sms"]},
                headers={"X-Forwarded-For": f"2001:db8:4242:17:{n % 50:x}::{n + 1:x}"},
            )
            statuses.append(response.status_code)
    # Refused for the kind of number (422), or for the client's /64 (429): ten taken at most.
    assert set(statuses) <= {202, 422, 429}
    assert statuses.count(202) <= 10

    await eventually(
        lambda: len(guarded.twilio.messages) >= BUDGET, what="the budget's confirmations"
    )
    await asyncio.sleep(3)  # time enough for any more to show; none may
    assert len(guarded.twilio.messages) == BUDGET
    mobiles = {"+4474", "+336", "+4915", "+1201", "+346", "+5511", "+919", "+819", "+614"}
    assert all(m.to[:5] in mobiles or m.to[:4] in mobiles for m in guarded.twilio.messages)


async def test_cross_site_forms_gmail_spellings_and_the_confirm_button(guarded: Stack) -> None:
    subs = guarded.url("subscriptions")
    hops = (f"198.51.100.{n}" for n in itertools.count(1))
    async with httpx.AsyncClient(timeout=30) as client:
        form = {"email": "ana@example.net", "country": "GB", "channels": "email"}
        evil = await client.post(
            f"{subs}/api/v1/subscribers",
            data=form,
            headers={"Origin": "https://evil.example", "X-Forwarded-For": next(hops)},
        )
        assert evil.status_code == 403
        fetched = await client.post(
            f"{subs}/api/v1/subscribers",
            data=form,
            headers={"Sec-Fetch-Site": "cross-site", "X-Forwarded-For": next(hops)},
        )
        assert fetched.status_code == 403
        preflight = await client.options(
            f"{subs}/api/v1/subscribers",
            headers={"Origin": CAMPAIGN, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == CAMPAIGN
        campaign = await client.post(
            f"{subs}/api/v1/subscribers",
            data=form,
            headers={"Origin": CAMPAIGN, "X-Forwarded-For": next(hops)},
        )
        assert campaign.status_code == 202
        assert campaign.headers["access-control-allow-origin"] == CAMPAIGN

        for spelling in (
            "victim@gmail.com",
            "victim+1@gmail.com",
            "victim+2@gmail.com",
            "v.ictim@gmail.com",
            "Vic.Tim@gmail.com",
            "victim@googlemail.com",
            "v.i.c.t.i.m+x@googlemail.com",
        ):
            response = await client.post(
                f"{subs}/api/v1/subscribers",
                json={"email": spelling, "country": "GB"},
                headers={"X-Forwarded-For": next(hops)},
            )
            assert response.status_code == 202

        # Ana's confirmation: the link shows a button; following it confirms nothing.
        [mail] = await eventually(lambda: guarded.smtp.to("ana@example.net"), what="Ana's mail")
        [link] = {u for u in mail.links() if "/confirm/" in u}
        for _ in range(2):
            page = await client.get(link)
            assert page.status_code == 200 and "<button" in page.text
        # Not "already confirmed": the GETs changed nothing.
        confirmed = await client.post(link)
        assert confirmed.status_code == 200
        assert "you are confirmed" in confirmed.text
        again = await client.get(link)
        assert "already confirmed" in again.text

    def gmail() -> list[object]:
        return [m for m in guarded.smtp.messages if any("gmail" in r for r in m.rcpt_tos)]

    await eventually(lambda: len(gmail()) >= 3, what="the mailbox's confirmations")
    await asyncio.sleep(3)  # time enough for any more to show; none may
    assert len(gmail()) == 3


@pytest.fixture
async def flooded(amqp_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    env = {"UANET_CONFIRMATION_SMS_PER_HOUR": "1000", "UANET_SMS_RATE": "40"}
    running = await stack_with(tmp_path, amqp_url, env)
    try:
        yield running
    finally:
        await close_stack(running)


ALERT = {
    "title": "Student held incommunicado",
    "country": "IR",
    "themes": [],
    "urgency": "urgent",
    "channels": ["sms"],
    "default_language": "en",
    "audience": {"countries": [], "themes": [], "languages": []},
    "targets": [{"name": "Head of the Judiciary"}],
    "content": {
        "en": {
            "subject": "Urgent Action: student at risk",
            "summary": "A student is held.",
            "body": "Full case text.",
            "sms": "Student at risk of torture. Act now:",
        }
    },
}


async def test_a_flood_of_sms_sign_ups_during_an_sms_alert_delays_no_alert(
    flooded: Stack, tmp_path: Path
) -> None:
    members = tmp_path / "members.csv"
    with members.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["phone", "name", "country", "language", "channels"])
        for n in range(200):
            writer.writerow([f"+4474001{n:05d}", f"Member {n}", "GB", "en", "sms"])
    imported = await asyncio.to_thread(
        flooded.cli, "subscribers", "import", str(members), "--confirmed"
    )
    assert imported.returncode == 0, imported.stderr

    staff = {"Authorization": f"Bearer {flooded.token('staff')}"}
    publisher = flooded.url("publisher")
    signup = flooded.url("subscriptions") + "/api/v1/subscribers"
    async with httpx.AsyncClient(timeout=60) as client:
        created = await client.post(f"{publisher}/api/v1/actions", json=ALERT, headers=staff)
        assert created.status_code == 201, created.text
        published = await client.post(
            f"{publisher}/api/v1/actions/{created.json()['id']}/publish", headers=staff
        )
        assert published.status_code == 200, published.text

        def alerts() -> list[int]:
            return [i for i, m in enumerate(flooded.twilio.messages) if "/act/" in m.body]

        await eventually(alerts, what="the first alert SMS")

        # The flood: 500 sign-ups of new numbers from 50 clients, ten at a time.
        async def sign_up(n: int) -> int:
            response = await client.post(
                signup,
                json={"phone": f"+4474002{n:05d}", "country": "GB", "channels": ["sms"]},
                headers={"X-Forwarded-For": f"203.0.113.{n % 50}"},
            )
            return response.status_code

        for start in range(0, 500, 10):
            answers = await asyncio.gather(*(sign_up(n) for n in range(start, start + 10)))
            assert set(answers) == {202}

        await eventually(lambda: len(alerts()) == 200, timeout=120, what="all 200 alert SMS")

        def confirmations() -> list[int]:
            return [i for i, m in enumerate(flooded.twilio.messages) if "YES" in m.body]

        await eventually(
            lambda: len(confirmations()) == 500, timeout=120, what="all 500 confirmations"
        )
    # Every alert SMS went before any confirmation asked for after the publish.
    assert max(alerts()) < min(confirmations())
