"""Three uanet stacks on one machine: a hub and two sections, each with its own vhost, databases,
ports and SMTP server, talking HTTP only (contract §9)."""

from __future__ import annotations

import asyncio
import copy
import re
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, Page

from shared.settings import SERVICES
from tests import broker_admin
from tests.conftest import AMQP_BASE, SECRET
from tests.e2e.stack import Stack, close_stack, open_stack
from tests.e2e.test_whole_loop import ACTION
from tests.support import eventually, free_port

FAST_RETRIES = "1s,1s,2s,2s,3s"


@dataclass
class Office:
    """One uanet: the hub or a section."""

    name: str
    stack: Stack
    staff: str = ""
    coordinator: str = ""
    members: list[str] = field(default_factory=list)
    has_account: bool = False

    @property
    def api(self) -> str:
        return self.stack.url("publisher") + "/api/v1"

    def auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def tokens(self) -> None:
        self.staff = await asyncio.to_thread(self.stack.token, "staff", f"{self.name}-staff")
        self.coordinator = await asyncio.to_thread(
            self.stack.token, "coordinator", f"{self.name}-coordinator"
        )

    async def import_members(self, tmp_path: Path, language: str, count: int = 3) -> None:
        rows = [f"{self.name.lower()}{i}@{self.name.lower()}.example.net" for i in range(count)]
        path = tmp_path / f"{self.name}-members.csv"
        path.write_text(
            "email,name,country,language,channels\n"
            + "".join(f"{a},Member {i},GB,{language},email\n" for i, a in enumerate(rows))
        )
        done = await asyncio.to_thread(
            self.stack.cli, "subscribers", "import", str(path), "--confirmed"
        )
        assert done.returncode == 0, done.stderr
        self.members = rows

    async def console_account(self) -> tuple[str, str]:
        """A staff account (``uanet users create``), made once: its email and password."""
        email, password = f"{self.name.lower()}-coordinator@example.org", "a long test password"
        if not self.has_account:
            made = await asyncio.to_thread(
                self.stack.cli,
                "users",
                "create",
                "--email",
                email,
                "--role",
                "staff",
                stdin=password + "\n",
            )
            assert made.returncode == 0, made.stderr
            self.has_account = True
        return email, password

    @asynccontextmanager
    async def console(self) -> AsyncIterator[httpx.AsyncClient]:
        """A signed-in console session."""
        email, password = await self.console_account()
        async with httpx.AsyncClient(base_url=self.stack.url("publisher"), timeout=30) as client:
            login = await client.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
            assert csrf
            signed_in = await client.post(
                "/login", data={"email": email, "password": password, "csrf_token": csrf.group(1)}
            )
            assert signed_in.status_code == 303, signed_in.text
            yield client

    @asynccontextmanager
    async def console_in_chromium(self, browser: Browser) -> AsyncIterator[Page]:
        """A page of headless Chromium signed in to this office's console."""
        email, password = await self.console_account()
        base = self.stack.url("publisher")
        context = await browser.new_context(viewport={"width": 1320, "height": 900})
        try:
            page = await context.new_page()
            await page.goto(f"{base}/login")
            await page.fill("input[name=email]", email)
            await page.fill("input[name=password]", password)
            await page.click("button:has-text('Sign in')")
            await page.wait_for_url(lambda url: "/login" not in url)
            yield page
        finally:
            await context.close()

    def mails_to_members(self, subject_part: str = "") -> list[Any]:
        return [
            m
            for m in self.stack.smtp.messages
            if any(r in self.members for r in m.rcpt_tos) and subject_part in m.header("Subject")
        ]


@dataclass
class Network:
    hub: Office
    sections: dict[str, Office]
    keys: dict[str, str]
    client: httpx.AsyncClient

    async def hub_publishes(self, title: str, **changes: Any) -> dict[str, Any]:
        body = copy.deepcopy(ACTION)
        body.update({"title": title, "channels": ["email"], **changes})
        body["audience"] = {"countries": [], "themes": [], "languages": []}
        body["content"]["en"]["subject"] = f"{title} (en)"
        body["content"]["fr"]["subject"] = f"{title} (fr)"
        staff = self.hub.auth(self.hub.staff)
        created = await self.client.post(f"{self.hub.api}/actions", json=body, headers=staff)
        assert created.status_code == 201, created.text
        published = await self.client.post(
            f"{self.hub.api}/actions/{created.json()['id']}/publish", headers=staff
        )
        assert published.status_code == 200, published.text
        action: dict[str, Any] = published.json()
        return action

    async def local_copy(self, section: str, hub_action_id: str) -> dict[str, Any]:
        office = self.sections[section]

        async def find() -> dict[str, Any] | None:
            listed = await self.client.get(
                f"{office.api}/actions", headers=office.auth(office.coordinator)
            )
            for item in listed.json()["items"]:
                if (item.get("origin") or {}).get("action_id") == hub_action_id:
                    found: dict[str, Any] = item
                    return found
            return None

        return await eventually(find, timeout=30, what=f"the action at {section}")

    async def hub_stats(self, action_id: str) -> dict[str, Any]:
        response = await self.client.get(
            f"{self.hub.api}/actions/{action_id}/stats",
            headers=self.hub.auth(self.hub.coordinator),
        )
        assert response.status_code == 200, response.text
        stats: dict[str, Any] = response.json()
        return stats


def section_env(hub: Stack, code: str, key: str, auto: str) -> dict[str, str]:
    return {
        "UANET_HUB_URL": hub.url("publisher"),
        "UANET_SECTION_CODE": code,
        "UANET_HUB_KEY": key,
        "UANET_SYNDICATION_AUTO_PUBLISH": auto,
        "UANET_WEBHOOK_RETRY_SCHEDULE": FAST_RETRIES,
    }


async def open_network(
    tmp_path: Path,
    hub_urls: Callable[[str], dict[str, str]],
    section_urls: Callable[[str], dict[str, str]],
    autos: dict[str, str],
) -> AsyncIterator[Network]:
    vhosts = [f"uanet-fed-{uuid.uuid4().hex[:8]}" for _ in range(1 + len(autos))]
    for vhost in vhosts:
        broker_admin.add_vhost(vhost)
    stacks: list[Stack] = []
    try:
        (tmp_path / "hub").mkdir()
        hub_stack = await open_stack(
            amqp_url=f"{AMQP_BASE}/{vhosts[0]}",
            database_urls=hub_urls("hub"),
            log_dir=tmp_path / "hub",
            secret=SECRET,
            env={"UANET_WEBHOOK_RETRY_SCHEDULE": FAST_RETRIES},
        )
        stacks.append(hub_stack)
        keys: dict[str, str] = {}
        sections: dict[str, Office] = {}
        for (code, auto), vhost in zip(autos.items(), vhosts[1:], strict=True):
            ports = {s: free_port() for s in SERVICES}
            added = await asyncio.to_thread(
                hub_stack.cli,
                "sections",
                "add",
                code,
                "--name",
                f"Section {code}",
                "--url",
                f"http://127.0.0.1:{ports['publisher']}",
            )
            assert added.returncode == 0, added.stderr
            keys[code] = added.stdout.strip().splitlines()[-1]
            (tmp_path / code).mkdir()
            stack = await open_stack(
                amqp_url=f"{AMQP_BASE}/{vhost}",
                database_urls=section_urls(code),
                log_dir=tmp_path / code,
                secret=SECRET + code,
                env=section_env(hub_stack, code, keys[code], auto),
                ports=ports,
                # A section's publisher was seen taking close to a minute to consume on a
                # loaded machine (cause not found; alone it starts in 3 s).
                ready_timeout=180.0,
            )
            stacks.append(stack)
            sections[code] = Office(code, stack)
        hub = Office("HUB", hub_stack)
        for office in (hub, *sections.values()):
            await office.tokens()
        async with httpx.AsyncClient(timeout=30) as client:
            yield Network(hub, sections, keys, client)
    finally:
        for stack in stacks:
            await close_stack(stack)
        for vhost in vhosts:
            broker_admin.delete_vhost(vhost)
