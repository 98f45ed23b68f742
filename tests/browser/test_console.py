"""The console in headless Chromium: a staff member composes an urgent action in two languages,
previews and publishes it; a coordinator watches its counts change, without reloading, when a
report arrives through the real broker. Screenshots of each page go to ``test-artifacts/``."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from services.publisher.app import create_app
from services.publisher.staff import create_staff_user
from shared import events
from shared.messaging import Broker
from tests.browser.conftest import NEEDS_CHROMIUM, serving
from tests.publisher.conftest import migrated, publisher_settings
from tests.publisher.console_support import PASSWORD

pytestmark = NEEDS_CHROMIUM


@dataclass
class Console:
    url: str
    amqp_url: str


@pytest.fixture
async def console(tmp_path: Path, amqp_url: str) -> AsyncIterator[Console]:
    database = await migrated(f"sqlite+aiosqlite:///{tmp_path / 'publisher.db'}")
    app = create_app(publisher_settings(database, amqp_url))
    sessionmaker = app.state.runtime.sessionmaker
    for role in ("staff", "coordinator"):
        await create_staff_user(
            sessionmaker, email=f"{role}@example.org", role=role, password=PASSWORD
        )
    async with serving(app) as port:  # consuming publisher.tally on the real broker
        yield Console(f"http://127.0.0.1:{port}", amqp_url)


async def new_page(browser: Browser, problems: list[str]) -> Page:
    context = await browser.new_context(viewport={"width": 1320, "height": 900})
    page = await context.new_page()
    # A CSP violation or a script error is a bug: collect them and fail at the end.
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    return page


async def sign_in(page: Page, base: str, email: str) -> None:
    await page.goto(f"{base}/")
    await expect(page).to_have_url(f"{base}/login?next=%2F")
    await page.fill("input[name=email]", email)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button:has-text('Sign in')")
    await expect(page.locator("h1")).to_have_text("Urgent actions")


async def test_compose_preview_publish_and_watch_live(
    console: Console, browser: Browser, artifacts_dir: Path
) -> None:
    base = console.url
    problems: list[str] = []

    # ---- staff: sign in, compose in two languages -------------------------------------------
    staff = await new_page(browser, problems)
    await staff.goto(f"{base}/login")
    await staff.screenshot(path=artifacts_dir / "console-login.png")
    await sign_in(staff, base, "staff@example.org")

    await staff.click("text=New urgent action")
    await staff.fill("input[name=title]", "Journalist held incommunicado at risk of torture")
    await staff.fill("input[name=country]", "IR")
    await staff.fill("input[name=deadline]", "2026-12-20")
    await staff.fill("input[name=themes]", "torture, freedom-of-expression")
    await staff.check("input[name=channels][value=sms]")
    await staff.fill("input[name=audience_countries]", "GB, IE")
    await staff.fill("input[name='targets-0-name']", "Head of the Judiciary")
    await staff.fill("input[name='targets-0-email']", "judiciary@example.org")
    await staff.fill("input[name='targets-0-salutation']", "Dear Head of the Judiciary")
    await staff.fill("input[name='content-en-subject']", "Urgent Action: journalist at risk")
    await staff.fill("textarea[name='content-en-summary']", "Held without charge since May.")
    await staff.fill(
        "textarea[name='content-en-body']",
        "Reza was arrested on **3 May** and has had no access to a lawyer.\n\n"
        "- Release him\n- Protect him from torture",
    )
    await staff.fill("textarea[name='content-en-sms']", "Journalist at risk of torture in Iran.")
    await staff.fill(
        "textarea[name='content-en-model_letter']", "I urge you to release Reza at once."
    )
    # A second language: the button posts the form back with a new tab (no script needed).
    await staff.fill("input[name=new_language]", "fr")
    await staff.click("button:has-text('+ Add language')")
    await staff.click("a.tab[data-tab='lang-fr']")
    await staff.fill("input[name='content-fr-subject']", "Action urgente : journaliste en danger")
    await staff.fill("textarea[name='content-fr-body']", "Reza a été arrêté le **3 mai**.")
    await staff.fill("textarea[name='content-fr-sms']", "Journaliste en danger en Iran ✊")
    # What was typed before the round trip is still there.
    await expect(staff.locator("input[name='targets-0-name']")).to_have_value(
        "Head of the Judiciary"
    )
    await staff.screenshot(path=artifacts_dir / "console-compose.png", full_page=True)
    await staff.click(".actions-bar button:has-text('Save draft')")
    await expect(staff.locator(".status")).to_have_text("Draft")
    action_url = staff.url
    action_id = action_url.rsplit("/", 1)[1]
    uuid.UUID(action_id)

    # ---- preview ------------------------------------------------------------------------------
    await staff.click("a:has-text('Preview')")
    await expect(staff.locator("#preview-en [data-sms-encoding]")).to_have_text("GSM-7")
    await expect(staff.locator("#preview-en [data-sms-segments]")).to_have_text("1")
    frame = staff.frame_locator("#preview-en iframe.email-frame")
    await expect(frame.locator("body")).to_contain_text("Release him")
    await staff.screenshot(path=artifacts_dir / "console-preview.png", full_page=True)
    await staff.click("a.tab[data-tab='preview-fr']")
    await expect(staff.locator("#preview-fr [data-sms-encoding]")).to_have_text("UCS-2")
    await expect(staff.locator("#preview-fr")).to_be_visible()
    await expect(staff.locator("#preview-en")).to_be_hidden()

    # ---- publish, with a confirmation step -------------------------------------------------------
    await staff.click("a:has-text('Publish…')")
    await expect(staff.locator("h1")).to_contain_text("Publish")
    await staff.click("button:has-text('Yes, publish')")
    await expect(staff.locator(".status")).to_have_text("Published")

    # ---- coordinator: live counts ----------------------------------------------------------------
    coordinator = await new_page(browser, problems)
    await sign_in(coordinator, base, "coordinator@example.org")
    await coordinator.goto(action_url)
    await expect(coordinator.locator("[data-live-status]")).to_contain_text("Live")
    total = coordinator.locator("#actions-total")
    await expect(total).to_have_text("0")
    await coordinator.evaluate("window.__sameDocument = true")
    first_chart = await coordinator.get_attribute("[data-chart-img]", "src")

    broker = Broker(console.amqp_url, name="test-subscriptions")
    await broker.connect()
    try:
        uid = uuid.UUID(action_id)
        await broker.publish_event(
            events.AudienceCounted(
                action_id=uid, recipients={"email": 120, "sms": 45}, by_country={"GB": 96, "IE": 24}
            )
        )
        await broker.publish_event(
            events.DeliveriesReported(
                action_id=uid, message_kind="alert", channel="email", sent=118
            )
        )
        await broker.publish_event(
            events.ResponseRecorded(
                action_id=uid, subscriber_id=uuid.uuid4(), kind="letter", count=3, country="GB"
            )
        )
        await expect(total).to_have_text("3", timeout=15_000)
        await broker.publish_event(
            events.ResponseRecorded(
                action_id=uid, subscriber_id=uuid.uuid4(), kind="email", count=2, country="IE"
            )
        )
        await expect(total).to_have_text("5", timeout=15_000)
    finally:
        await broker.close()
    # Updated in place: the page was not reloaded.
    assert await coordinator.evaluate("window.__sameDocument === true")
    await expect(coordinator.locator("[data-stat='responses.people']")).to_have_text("2")
    await expect(coordinator.locator("[data-countries]")).to_contain_text("IE")
    await expect(coordinator.locator("[data-stat='totals.sent']")).to_have_text("118")
    # The chart is redrawn by the server and reloaded too.
    await coordinator.wait_for_function(
        "first => { const img = document.querySelector('[data-chart-img]');"
        " return img.getAttribute('src') !== first && img.complete && img.naturalWidth > 0; }",
        arg=first_chart,
    )
    await coordinator.screenshot(path=artifacts_dir / "console-action.png", full_page=True)

    await coordinator.click("nav >> text=Overview")
    await expect(coordinator.locator("[data-overview='published']")).to_have_text("1")
    await expect(coordinator.locator("[data-overview='rate']")).to_have_text("1.7%")
    await coordinator.screenshot(path=artifacts_dir / "console-overview.png", full_page=True)

    assert problems == []
