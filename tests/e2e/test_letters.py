"""Letters to the officials across the three services as processes (real HTTP, RabbitMQ, SMTP):
a subscriber's letter reaches each target with an email once, with her as Reply-To; it counts as
one email action per target; a target that answers 550 shows as a warning on the staff page; the
letters are OSDI outreaches on the publisher, anonymous once their writer is erased."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from email.utils import getaddresses
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.settings import SERVICES
from tests.conftest import SECRET
from tests.e2e.letters_flow import (
    JUDGE,
    MINISTER,
    PASSWORD,
    STAFF,
    SUBSCRIBER,
    create_staff_user,
    publish_to_a_subscriber,
    stats,
)
from tests.e2e.stack import Stack, close_stack, open_stack
from tests.osdi_shapes import OutreachesPage, Person
from tests.support import eventually

pytestmark = pytest.mark.e2e

FIXED = "justice.minister@example.org"


@pytest.fixture
async def stack(amqp_url: str, tmp_path: Path) -> AsyncIterator[Stack]:
    urls = {s: f"sqlite+aiosqlite:///{tmp_path / f'{s}.db'}" for s in SERVICES}
    running = await open_stack(
        amqp_url=amqp_url, database_urls=urls, log_dir=tmp_path, secret=SECRET
    )
    try:
        yield running
    finally:
        await close_stack(running)
        for service in SERVICES:
            # The subscriber's address and letter stay out of every log.
            assert SUBSCRIBER not in running.log(service), service
            assert "Free him now" not in running.log(service), service
            assert FIXED not in running.log(service), service


async def test_letter_reaches_each_target_once_counts_and_a_bounce_warns_staff(
    stack: Stack,
) -> None:
    stack.smtp.reply_for[MINISTER] = "550 5.1.1 <minister@example.org>: no such mailbox"
    create_staff_user(stack)
    async with httpx.AsyncClient(timeout=30) as client:
        published = await publish_to_a_subscriber(client, stack)

        letter = {"name": "Ana Lima", "email": SUBSCRIBER, "letter": "Free him now."}
        sent = await client.post(f"{published.act_url}/letter", json=letter)
        assert sent.status_code == 202, sent.text
        assert sent.json()["targets"] == 2
        # The same letter again (a retried request): nothing more is sent or counted.
        again = await client.post(
            f"{published.act_url}/letter", json={**letter, "letter_id": sent.json()["letter_id"]}
        )
        assert again.json()["status"] == "duplicate"

        [mail] = await eventually(lambda: stack.smtp.to(JUDGE), what="the letter to the judge")
        assert getaddresses([mail.header("Reply-To")])[0][1] == SUBSCRIBER
        assert getaddresses([mail.header("From")])[0][0] == "Ana Lima via Urgent Action Network"
        assert mail.header("Subject") == "Urgent Action: journalist at risk of torture"
        assert mail.part("plain").startswith("Free him now.")

        counted = await eventually(
            lambda: _emails_counted(client, stack, published), what="the email actions counted"
        )
        assert counted["responses"]["people"] == 1
        assert counted["responses"]["actions"] == 2

        console = httpx.AsyncClient(base_url=stack.url("publisher"), timeout=30)
        async with console:
            login = await console.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
            assert csrf
            signed_in = await console.post(
                "/login", data={"email": STAFF, "password": PASSWORD, "csrf_token": csrf.group(1)}
            )
            assert signed_in.status_code == 303

            async def warning() -> str | None:
                page = await console.get(f"/actions/{published.action_id}")
                return page.text if "data-bounces" in page.text else None

            page = await eventually(warning, what="the bounce warning on the staff page")
            assert f"&lt;{MINISTER}&gt;" in page
            assert "Minister of Justice" in page
            assert "smtp:550" in page
            assert JUDGE not in page.split("data-bounces")[1].split("</div>")[0]

            # Staff fix the address from the warning; a typo first is refused next to the field.
            token = re.search(r'name="csrf_token" value="([^"]+)"', page)
            assert token
            fix_url = f"/actions/{published.action_id}/targets/fix"
            fix = {"csrf_token": token.group(1), "old_address": MINISTER}
            typo = await console.post(fix_url, data={**fix, "new_address": "minister@"})
            assert typo.status_code == 422
            assert "Not a valid email address" in typo.text
            forged = {"old_address": MINISTER, "new_address": FIXED}  # no CSRF token
            assert (await console.post(fix_url, data=forged)).status_code == 403
            fixed = await console.post(fix_url, data={**fix, "new_address": FIXED})
            assert fixed.status_code == 303, fixed.text
            after = (await console.get(f"/actions/{published.action_id}")).text
            assert "data-bounces" not in after
            assert f"&lt;{MINISTER}&gt;" in after and f"now sent to &lt;{FIXED}&gt;" in after

        # The action page shows the new address, and the next letter goes to it.
        async def shows_fixed() -> bool:
            return FIXED in (await client.get(published.act_url)).text

        await eventually(shows_fixed, what="the fixed address on the action page")
        second = await client.post(
            f"{published.act_url}/letter", json={**letter, "letter": "Free him now, please."}
        )
        assert second.status_code == 202, second.text
        await eventually(lambda: stack.smtp.to(FIXED), what="the letter to the fixed address")
        await eventually(lambda: len(stack.smtp.to(JUDGE)) == 2, what="the judge's second letter")
        await _osdi_outreaches(client, stack, published.action_id, published.coordinator)
    assert stack.smtp.to(MINISTER) == []
    assert len(stack.smtp.to(FIXED)) == 1


async def _osdi_outreaches(
    client: httpx.AsyncClient, stack: Stack, action_id: str, coordinator: str
) -> None:
    """OSDI (§8): the two letters are the action's outreaches on the publisher (carried there by
    an event), each linking to its writer on subscriptions; erasing her leaves them, anonymous."""
    url = f"{stack.url('publisher')}/osdi/v1/advocacy_campaigns/{action_id}/outreaches"
    reader = {"OSDI-API-Token": coordinator}
    admin_token = stack.token("admin", "letters-admin")

    async def outreaches(with_person: bool) -> dict[str, Any] | None:
        response = await client.get(url, headers=reader)
        body: dict[str, Any] = response.json()
        if body.get("total_records") != 2:
            return None
        linked = ["osdi:person" in o["_links"] for o in body["_embedded"]["osdi:outreaches"]]
        return body if linked == [with_person] * 2 else None

    page = await eventually(lambda: outreaches(True), what="the letters as OSDI outreaches")
    OutreachesPage.model_validate(page)
    first = page["_embedded"]["osdi:outreaches"][0]
    assert first["targets"] == [
        {"title": "Head of the Judiciary"},
        {"title": "Minister of Justice"},
    ]
    person_url = first["_links"]["osdi:person"]["href"]
    assert person_url.startswith(stack.url("subscriptions") + "/osdi/v1/people/")

    async def person() -> dict[str, Any] | None:
        response = await client.get(person_url, headers={"OSDI-API-Token": admin_token})
        return response.json() if response.status_code == 200 else None  # token not known yet

    ana = Person.model_validate(await eventually(person, what="the writer on subscriptions"))
    assert ana.email_addresses[0].address == SUBSCRIBER and ana.given_name == "Ana Lima"

    erased = await client.delete(
        person_url.replace("/osdi/v1/people/", "/api/v1/subscribers/"),
        headers={"Authorization": f"Bearer {admin_token}"},
    )
    assert erased.status_code == 204
    await eventually(lambda: outreaches(False), what="the outreaches without their writer")
    gone = await client.get(person_url, headers={"OSDI-API-Token": admin_token})
    assert gone.status_code == 404


async def _emails_counted(
    client: httpx.AsyncClient, stack: Stack, published: object
) -> dict[str, object] | None:
    counts = await stats(client, stack, published)  # type: ignore[arg-type]
    return counts if counts["responses"]["by_kind"]["email"] == 2 else None


async def test_a_letter_cannot_pass_for_the_organisation_nor_reply_to_anyone(stack: Stack) -> None:
    """As a mail client reads it: From "<writer> via <organisation>" at UANET_MAIL_FROM's
    address, a closing line saying a supporter sent it; Reply-To the subscriber's confirmed
    email, or another address only after it followed the link emailed to it."""
    other = "legal-dept@example.com"
    async with httpx.AsyncClient(timeout=30) as client:
        published = await publish_to_a_subscriber(client, stack)
        own = {"name": "Ana Lima", "email": SUBSCRIBER, "letter": "Free him now."}
        assert (await client.post(f"{published.act_url}/letter", json=own)).status_code == 202
        forwarded = {"name": "Amnesty Legal Dept", "email": other, "letter": "Free him today."}
        asked = await client.post(f"{published.act_url}/letter", json=forwarded)
        assert asked.json()["status"] == "confirm_email"

        [check] = await eventually(lambda: stack.smtp.to(other), what="the reply address's link")
        link = re.search(r"https?://\S+/letters/\S+", check.part("plain"))
        assert link
        assert check.header("Reply-To") == ""
        await eventually(lambda: stack.smtp.to(JUDGE), what="the subscriber's letter")
        assert (await client.get(link.group(0))).status_code == 200
        assert len(stack.smtp.to(JUDGE)) == 1  # following the link is not enough: the button
        assert (await client.post(link.group(0), json={})).json()["status"] == "sent"
        assert (await client.post(link.group(0), json={})).json()["status"] == "already_sent"
        letters = await eventually(
            lambda: stack.smtp.to(JUDGE) if len(stack.smtp.to(JUDGE)) == 2 else None,
            what="the second letter",
        )

    by_writer = {mail.message["Reply-To"].addresses[0].addr_spec: mail for mail in letters}
    assert set(by_writer) == {SUBSCRIBER, other}
    for reply_to, mail in by_writer.items():
        [sender] = mail.message["From"].addresses
        writer = "Ana Lima" if reply_to == SUBSCRIBER else "Amnesty Legal Dept"
        assert sender.display_name == f"{writer} via Urgent Action Network"
        assert sender.addr_spec == "alerts@localhost"  # UANET_MAIL_FROM's address
        last_line = mail.part("plain").rstrip().splitlines()[-1]
        assert last_line == "Sent by a supporter through the action page of Urgent Action Network."
    await asyncio.sleep(0.5)
    assert len(stack.smtp.to(JUDGE)) == 2 and len(stack.smtp.to(other)) == 1
