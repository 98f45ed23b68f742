"""Signing in to the console the way a browser does: a cookie jar, the CSRF token from the page."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

import httpx
from fastapi import FastAPI

from services.publisher.staff import create_staff_user

PASSWORD = "correct horse battery staple"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(page: str) -> str:
    match = _CSRF.search(page)
    assert match, "no CSRF token on the page"
    return match.group(1)


class Browser:
    """An httpx client with its own cookie jar on the in-process app."""

    def __init__(self, app: FastAPI, *, address: str | None = None) -> None:
        # ``address``: the client as our proxy (127.0.0.1, trusted) reports it.
        headers = {"X-Forwarded-For": address} if address else {}
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test", headers=headers
        )
        self.csrf = ""

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        response = await self.client.get(path, **kwargs)
        if "csrf_token" in response.text:
            self.csrf = csrf_of(response.text)
        return response

    async def post(
        self, path: str, data: dict[str, str] | list[tuple[str, str]], *, csrf: bool = True
    ) -> httpx.Response:
        fields = list(data.items()) if isinstance(data, dict) else list(data)
        if csrf:
            fields.append(("csrf_token", self.csrf))
        response = await self.client.post(
            path,
            content=urlencode(fields).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        if "csrf_token" in response.text:
            self.csrf = csrf_of(response.text)
        return response

    async def sign_in(self, email: str, password: str = PASSWORD) -> httpx.Response:
        await self.get("/login")
        return await self.post("/login", {"email": email, "password": password})

    async def aclose(self) -> None:
        await self.client.aclose()


async def make_user(app: FastAPI, role: str) -> str:
    email = f"{role}@example.org"
    await create_staff_user(
        app.state.runtime.sessionmaker, email=email, role=role, password=PASSWORD
    )
    return email


def compose_fields(**overrides: str) -> list[tuple[str, str]]:
    """A complete compose form in two languages, as a browser would post it."""
    fields = {
        "title": "Journalist held incommunicado at risk of torture",
        "country": "IR",
        "themes": "torture, freedom-of-expression",
        "urgency": "urgent",
        "deadline": "2026-12-20",
        "default_language": "en",
        "audience_countries": "GB, IE",
        "audience_themes": "",
        "audience_languages": "",
        "target_count": "1",
        "targets-0-name": "Head of the Judiciary",
        "targets-0-title": "Head of the Judiciary",
        "targets-0-email": "judiciary@example.org",
        "targets-0-salutation": "Dear Head of the Judiciary",
        "targets-0-address": "c/o Embassy, 16 Prince's Gate, London SW7 1PT",
        "content-en-subject": "Urgent Action: journalist at risk of torture",
        "content-en-summary": "Short case summary.",
        "content-en-body": "Full case text with **bold**.",
        "content-en-sms": "Journalist at risk of torture in Iran. Act now:",
        "content-en-model_letter": "I am writing to urge you to release ...",
        "content-fr-subject": "Action urgente : journaliste en danger",
        "content-fr-summary": "Résumé.",
        "content-fr-body": "Texte complet.",
        "content-fr-sms": "Journaliste en danger de torture en Iran. Agissez :",
        "content-fr-model_letter": "Je vous écris pour demander ...",
    }
    fields.update(overrides)
    out = list(fields.items())
    out += [("channels", "email"), ("channels", "sms"), ("languages", "en"), ("languages", "fr")]
    out.append(("op", "save"))
    return out
