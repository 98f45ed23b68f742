"""A subscriber sends her letter to the officials from the action page, in headless Chromium with
JavaScript off, against the three services as processes: the SMTP server on loopback gets it once
per target with an email, and the staff console counts the emails. Screenshots of the letter form,
the thank-you page and the console go to ``test-artifacts/``."""

from __future__ import annotations

from email.utils import getaddresses
from pathlib import Path

import httpx
from playwright.async_api import Browser, expect

from tests.browser.conftest import NEEDS_CHROMIUM
from tests.browser.test_subscriber_pages import every_field_is_labelled
from tests.e2e.letters_flow import (
    JUDGE,
    MINISTER,
    PASSWORD,
    STAFF,
    SUBSCRIBER,
    create_staff_user,
    publish_to_a_subscriber,
)
from tests.e2e.stack import Stack
from tests.support import eventually

pytestmark = NEEDS_CHROMIUM


async def test_a_subscriber_sends_her_letter_and_staff_see_it_counted(
    stack: Stack, browser: Browser, artifacts_dir: Path
) -> None:
    create_staff_user(stack)
    async with httpx.AsyncClient(timeout=30) as client:
        published = await publish_to_a_subscriber(client, stack)

    context = await browser.new_context(
        viewport={"width": 900, "height": 1000}, java_script_enabled=False, locale="en-GB"
    )
    page = await context.new_page()
    await page.goto(published.act_url)
    await expect(page.locator("h2#letter")).to_have_text("Send your letter by email")
    await every_field_is_labelled(page)
    letter = page.get_by_label("Your letter")
    await expect(letter).to_have_value("I am writing to urge you to release the journalist.")
    # Blank: the page shows no one's address (a forwarded alert opens it for someone else).
    await expect(page.get_by_label("Your email address")).to_have_value("")
    await page.screenshot(path=str(artifacts_dir / "subscriber-letter-form.png"), full_page=True)

    # A mistake first (one the browser lets through): the form says which field, and keeps
    # what was written.
    await page.get_by_label("Your name").fill("Ana Lima")
    await page.get_by_label("Your email address").fill("ana@example")
    await letter.fill(
        "I am writing to urge you to release him. He is a journalist, not a criminal."
    )
    await page.get_by_role("button", name="Send my letter").click()
    await expect(page.locator(".problems")).to_contain_text("Your email address")
    await expect(page.get_by_label("Your letter")).to_have_value(
        "I am writing to urge you to release him. He is a journalist, not a criminal."
    )
    await page.screenshot(
        path=str(artifacts_dir / "subscriber-letter-form-errors.png"), full_page=True
    )

    await page.get_by_label("Your name").fill("Ana Lima")
    await page.get_by_label("Your email address").fill(SUBSCRIBER)
    await page.get_by_role("button", name="Send my letter").click()
    await expect(page.locator("h1")).to_have_text("Thank you! Your letter is on its way")
    await expect(page.locator("main li")).to_have_text(
        ["Head of the Judiciary", "Minister of Justice"]
    )
    await page.screenshot(path=str(artifacts_dir / "subscriber-letter-sent.png"), full_page=True)

    def letters_out() -> bool:
        return bool(stack.smtp.to(JUDGE) and stack.smtp.to(MINISTER))

    await eventually(letters_out, what="the letter to each target")
    for target in (JUDGE, MINISTER):
        [mail] = stack.smtp.to(target)  # once per target
        assert getaddresses([mail.header("Reply-To")])[0][1] == SUBSCRIBER
        assert "not a criminal" in mail.part("plain")

    # The staff console counts one email action per target written to.
    console = await browser.new_context(viewport={"width": 1320, "height": 900})
    staff = await console.new_page()
    await staff.goto(f"{stack.url('publisher')}/login")
    await staff.fill("input[name=email]", STAFF)
    await staff.fill("input[name=password]", PASSWORD)
    await staff.click("button:has-text('Sign in')")
    await expect(staff.locator("h1")).to_have_text("Urgent actions")

    async def counted() -> bool:
        await staff.goto(f"{stack.url('publisher')}/actions/{published.action_id}")
        text = await staff.locator("[data-stat='responses.by_kind.email']").text_content()
        return text == "2"

    await eventually(counted, what="the emails counted on the action page")
    await expect(staff.locator("[data-stat='responses.people']")).to_have_text("1")
    await staff.screenshot(path=str(artifacts_dir / "console-letters-counted.png"), full_page=True)

    # The minister's mailbox goes away: the next letter bounces there, staff see it and fix it.
    stack.smtp.reply_for[MINISTER] = "550 5.1.1 <minister@example.org>: no such mailbox"
    async with httpx.AsyncClient(timeout=30) as client:
        again = await client.post(
            f"{published.act_url}/letter",
            json={"name": "Ana Lima", "email": SUBSCRIBER, "letter": "Release him."},
        )
        assert again.status_code == 202, again.text

    async def warned() -> bool:
        await staff.goto(f"{stack.url('publisher')}/actions/{published.action_id}")
        return await staff.locator("[data-bounces]").count() == 1

    await eventually(warned, what="the bounce warning on the action page")
    fix = staff.locator(f"form[data-fix='{MINISTER}']")
    await fix.get_by_label("Correct address for Minister of Justice").fill("minister@justice")
    await staff.screenshot(path=str(artifacts_dir / "console-target-bounced.png"), full_page=True)
    await fix.get_by_role("button", name="Replace the address").click()
    await expect(staff.locator("#err-fix-new_address")).to_contain_text("Not a valid email")
    fixed = "minister@justice.example.org"
    await staff.locator(f"form[data-fix='{MINISTER}'] input[name=new_address]").fill(fixed)
    await staff.locator(f"form[data-fix='{MINISTER}'] button").click()
    await expect(staff.locator("[role=status]")).to_contain_text("Target address changed")
    await expect(staff.locator("[data-bounces]")).to_have_count(0)
    await expect(staff.locator("[data-fixed-bounces]")).to_contain_text(MINISTER)
    await expect(staff.locator("[data-fixed-bounces]")).to_contain_text(f"now sent to <{fixed}>")
    await staff.screenshot(path=str(artifacts_dir / "console-target-fixed.png"), full_page=True)
