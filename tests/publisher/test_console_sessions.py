"""Console sessions live on the server (signing out ends them, even for a copied cookie), and
their cookie is Secure, with HSTS on every page, whenever staff reach the console over https."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from services.publisher.app import create_app
from services.publisher.models import StaffSession
from services.publisher.sessions import COOKIE
from tests.publisher.conftest import Api, publisher_settings
from tests.publisher.console_support import Browser, make_user


def session_cookie(response: httpx.Response) -> str:
    [header] = [h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE + "=")]
    return header


async def sessions_kept(api: Api) -> int:
    async with api.app.state.runtime.sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(StaffSession)) or 0)


async def test_signing_out_ends_the_session_even_for_a_copied_cookie(sqlite_api: Api) -> None:
    email = await make_user(sqlite_api.app, "staff")
    browser = Browser(sqlite_api.app)
    try:
        signed_in = await browser.sign_in(email)
        assert signed_in.status_code == 303
        stolen = browser.client.cookies[COOKIE]
        assert (await browser.get("/")).status_code == 200
        assert await sessions_kept(sqlite_api) == 1

        assert (await browser.post("/logout", {})).status_code == 303

        assert await sessions_kept(sqlite_api) == 0
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=sqlite_api.app),
            base_url="http://test",
            cookies={COOKIE: stolen},
        ) as thief:
            replayed = await thief.get("/")
            assert replayed.status_code == 303 and replayed.headers["location"].startswith("/login")
            api_call = await thief.get("/api/v1/actions")
            assert api_call.status_code == 401
    finally:
        await browser.aclose()


async def test_the_cookie_is_secure_behind_a_tls_proxy_and_not_on_plain_http(
    sqlite_api: Api,
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=sqlite_api.app), base_url="http://test"
    ) as http:
        plain = await http.get("/login")
        http.cookies.clear()  # a new visitor
        # The proxy (127.0.0.1, trusted by default) terminated TLS and says so.
        proxied = await http.get("/login", headers={"X-Forwarded-Proto": "https"})
    assert "secure" not in session_cookie(plain).lower()
    cookie = session_cookie(proxied).lower()
    assert "; secure" in cookie and "httponly" in cookie and "samesite=lax" in cookie
    assert "strict-transport-security" not in plain.headers


async def test_an_untrusted_peer_cannot_claim_https(sqlite_publisher_url: str) -> None:
    settings = publisher_settings(sqlite_publisher_url).model_copy(
        update={"trusted_proxies": "10.9.9.9"}
    )
    app = create_app(settings)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            claimed = await http.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert "secure" not in session_cookie(claimed).lower()
    finally:
        await app.state.runtime.engine.dispose()


@pytest.mark.parametrize("path", ["/login", "/healthz", "/api/v1/actions"])
async def test_an_https_console_url_means_secure_cookies_and_hsts(
    sqlite_publisher_url: str, path: str
) -> None:
    values: dict[str, Any] = {"console_url": "https://console.example.org"}
    settings = publisher_settings(sqlite_publisher_url).model_copy(update=values)
    app = create_app(settings)
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test"
        ) as http:
            answer = await http.get(path)
        assert answer.headers["strict-transport-security"].startswith("max-age=31536000")
        if path == "/login":
            assert "; secure" in session_cookie(answer).lower()
    finally:
        await app.state.runtime.engine.dispose()
