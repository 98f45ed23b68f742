"""The subscriber's pages in headless Chromium, with JavaScript off (they must work without it):
sign up, confirm from the link (its page's button), change preferences (the page turns French),
unsubscribe; the sign-up page in Arabic, right to left, with its errors. Screenshots go to
``test-artifacts/``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.app import create_app
from services.subscriptions.models import Outbox, Subscriber
from tests.browser.conftest import NEEDS_CHROMIUM, serving
from tests.subscriptions.conftest import migrated, service_settings
from tests.support import eventually, free_port

pytestmark = NEEDS_CHROMIUM


@dataclass
class Site:
    url: str
    sessionmaker: async_sessionmaker[AsyncSession]


@pytest.fixture
async def site(tmp_path: Path, amqp_url: str) -> AsyncIterator[Site]:
    database = await migrated(f"sqlite+aiosqlite:///{tmp_path / 'subscriptions.db'}")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    app = create_app(service_settings(database, amqp_url=amqp_url, public_url=url))
    async with serving(app, port):  # the outbox goes to the real broker
        yield Site(url, app.state.runtime.sessionmaker)


async def new_page(browser: Browser, locale: str = "en-GB") -> Page:
    context = await browser.new_context(
        viewport={"width": 900, "height": 1000}, java_script_enabled=False, locale=locale
    )
    return await context.new_page()


async def shoot(page: Page, artifacts: Path, name: str) -> None:
    await page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


async def every_field_is_labelled(page: Page) -> None:
    """Each visible form control has a label naming it (checked in the page itself)."""
    unlabelled = await page.locator("input:not([type=hidden]), select, textarea").evaluate_all(
        "els => els.filter(e => !e.labels || e.labels.length === 0).map(e => e.name)"
    )
    assert unlabelled == []


async def confirmation_for(site: Site, address: str) -> dict[str, Any]:
    """The confirmation the service asked the dispatcher to send (its outbox row)."""

    async def find() -> dict[str, Any] | None:
        async with site.sessionmaker() as session:
            bodies = (await session.execute(select(Outbox.body))).scalars().all()
        for body in bodies:
            message = json.loads(body)
            if message.get("template") == "confirm_email" and message.get("to") == address:
                return message
        return None

    found: dict[str, Any] = await eventually(find, what="the confirmation message")
    return found


async def subscriber(site: Site, email: str) -> Subscriber:
    async with site.sessionmaker() as session:
        return (
            await session.execute(select(Subscriber).where(Subscriber.email == email))
        ).scalar_one()


async def test_sign_up_confirm_preferences_unsubscribe(
    site: Site, browser: Browser, artifacts_dir: Path
) -> None:
    page = await new_page(browser)
    await page.goto(f"{site.url}/signup")
    await expect(page.locator("h1")).to_have_text("Get Urgent Action alerts")
    await every_field_is_labelled(page)
    await shoot(page, artifacts_dir, "subscriber-signup")

    await page.get_by_label("Your name").fill("Ana Lima")
    await page.get_by_label("Email address").fill("ana@example.net")
    await page.get_by_label("Country where you live").select_option("GB")
    await page.get_by_label("Themes you care about").fill("torture, death-penalty")
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.locator("h1")).to_have_text("Almost done: please confirm")
    await shoot(page, artifacts_dir, "subscriber-signup-done")

    message = await confirmation_for(site, "ana@example.net")
    await page.goto(message["context"]["confirm_url"])
    # Following the link (as a mail scanner would) confirms nothing; the button does.
    await expect(page.locator("h1")).to_have_text("Confirm your subscription")
    await shoot(page, artifacts_dir, "subscriber-confirm")
    assert (await subscriber(site, "ana@example.net")).email_status == "pending"
    await page.get_by_role("button", name="Yes, send me Urgent Action alerts").click()
    await expect(page.locator("h1")).to_have_text("Thank you, you are confirmed")
    await shoot(page, artifacts_dir, "subscriber-confirmed")
    assert (await subscriber(site, "ana@example.net")).email_status == "confirmed"

    await page.get_by_role("link", name="Choose your themes").click()
    await expect(page.locator("h1")).to_have_text("Your preferences")
    await every_field_is_labelled(page)
    await expect(page.get_by_label("Themes")).to_have_value("torture, death-penalty")
    await shoot(page, artifacts_dir, "subscriber-preferences")
    await page.get_by_label("Language of your alerts").select_option("fr")
    await page.get_by_label("A daily digest").check()
    await page.get_by_role("button", name="Save").click()
    # Saved, and the page now speaks the language just chosen.
    await expect(page.locator("html")).to_have_attribute("lang", "fr")
    await expect(page.locator("p.notice")).to_have_text("Vos préférences sont enregistrées.")
    await shoot(page, artifacts_dir, "subscriber-preferences-fr")
    saved = await subscriber(site, "ana@example.net")
    assert (saved.language, saved.frequency) == ("fr", "daily_digest")

    await page.goto(message["unsubscribe_url"])
    await expect(page.locator("h1")).to_have_text("Se désabonner")
    await shoot(page, artifacts_dir, "subscriber-unsubscribe-fr")
    await page.get_by_role("button", name="Se désabonner").click()
    await expect(page.locator("h1")).to_have_text("Vous êtes désabonné·e")
    await shoot(page, artifacts_dir, "subscriber-unsubscribed-fr")
    assert (await subscriber(site, "ana@example.net")).email_status == "unsubscribed"


async def test_sign_up_in_arabic_is_right_to_left(
    site: Site, browser: Browser, artifacts_dir: Path
) -> None:
    # The browser asks for Arabic: the page follows without any ?lang=.
    page = await new_page(browser, locale="ar-LB")
    await page.goto(f"{site.url}/signup")
    await expect(page.locator("html")).to_have_attribute("dir", "rtl")
    await expect(page.locator("h1")).to_have_text("تلقَّ تنبيهات التحركات العاجلة")
    direction = await page.locator("main").evaluate("e => getComputedStyle(e).direction")
    assert direction == "rtl"
    await every_field_is_labelled(page)
    await shoot(page, artifacts_dir, "subscriber-signup-ar")

    await page.get_by_label("عنوان البريد الإلكتروني").fill("ليس-بريدًا")
    await page.get_by_role("button", name="اشترك").click()
    problems = page.locator(".problems")
    await expect(problems).to_contain_text("يرجى إدخال عنوان بريد إلكتروني صالح")
    await expect(problems).to_contain_text("يرجى اختيار البلد الذي تعيش فيه.")
    await shoot(page, artifacts_dir, "subscriber-signup-ar-errors")

    # A link in the error summary takes the visitor to the field to fix.
    await problems.get_by_role("link", name="عنوان البريد الإلكتروني").click()
    assert page.url.endswith("#email")
