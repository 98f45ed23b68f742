"""The public sign-up under abuse (contract §11): numbers we would not text, countries we do not
serve, a whole IPv6 /64 as one client, sign-ups posted from other sites, and one mailbox however
its address is written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from services.subscriptions.app import create_app
from services.subscriptions.confirmations import mailbox
from shared.web import client_key
from tests.subscriptions.conftest import PUBLIC_URL, outbox, path_of, service_settings

CAMPAIGN = "https://campaign.example.org"


@pytest.fixture
async def app(subscriptions_db: str) -> AsyncIterator[FastAPI]:
    settings = service_settings(
        subscriptions_db, sms_countries="GB,FR,US", signup_origins=f"{CAMPAIGN}/"
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


def sms_sign_up(phone: str, country: str = "GB") -> dict[str, object]:
    return {"phone": phone, "country": country, "channels": ["sms"]}


@pytest.mark.parametrize(
    ("phone", "kind"),
    [
        ("+449090901234", "premium rate"),
        ("+448431234567", "shared cost"),
        ("+448001234567", "toll free"),
        ("+445600123456", "VoIP"),
        ("+447640123456", "pager"),
        ("+445512345678", "UAN"),
        ("+442079460000", "fixed line"),
        ("+19005550123", "US premium rate"),
        ("+4915112345678", "a mobile of a country not served"),
        ("+870773111111", "a satellite phone (no country)"),
    ],
)
async def test_numbers_we_would_not_text_are_refused_naming_the_phone(
    client: httpx.AsyncClient, phone: str, kind: str
) -> None:
    for body in (sms_sign_up(phone), {**sms_sign_up(phone), "email": "a@example.org"}):
        response = await client.post("/api/v1/subscribers", json=body)
        assert response.status_code == 422, kind
        assert [e["field"] for e in response.json()["errors"]] == ["phone"], kind
    form = await client.post(
        "/api/v1/subscribers", data=sms_sign_up(phone), headers={"Accept": "text/html"}
    )
    assert form.status_code == 422
    assert "mobile" in form.text or "country" in form.text


async def test_mobiles_of_the_served_countries_are_taken(client: httpx.AsyncClient) -> None:
    for phone, country in (
        ("+447400123456", "GB"),
        ("+33612345678", "FR"),
        # The North American plan does not tell mobiles from fixed lines: taken.
        ("+12015550123", "US"),
    ):
        response = await client.post("/api/v1/subscribers", json=sms_sign_up(phone, country))
        assert response.status_code == 202, phone


def test_an_ipv6_64_is_one_client() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff:1:2:3")
    assert client_key("2001:db8:1:2::1") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert client_key("198.51.100.7") != client_key("198.51.100.8")


async def test_sign_ups_from_one_ipv6_64_count_as_one_client(client: httpx.AsyncClient) -> None:
    answers = []
    for n in range(50):
        hop = {"X-Forwarded-For": f"2001:db8:77:1:{n:x}::{n + 1:x}"}
        body = {"email": f"person{n}@example.org", "country": "GB"}
        answers.append(
            (await client.post("/api/v1/subscribers", json=body, headers=hop)).status_code
        )
    assert answers.count(202) == 10
    assert answers.count(429) == 40
    # The next network is another client.
    other = {"X-Forwarded-For": "2001:db8:77:2::1"}
    body = {"email": "someone@example.org", "country": "GB"}
    assert (await client.post("/api/v1/subscribers", json=body, headers=other)).status_code == 202


ANA = {"email": "ana@example.net", "country": "GB", "channels": ["email"]}


async def test_a_sign_up_posted_from_another_site_is_refused(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    html = {"Accept": "text/html"}
    for headers in (
        {"Origin": "https://evil.example"},
        {"Origin": "null"},
        {"Origin": "null", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://campaign.example.org.evil.example"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"},
    ):
        form = await client.post("/api/v1/subscribers", data=ANA, headers={**headers, **html})
        assert form.status_code == 403, headers
        assert "text/html" in form.headers["content-type"]
        as_json = await client.post("/api/v1/subscribers", json=ANA, headers=headers)
        assert as_json.status_code == 403, headers
        assert "access-control-allow-origin" not in as_json.headers
    assert await outbox(app.state.subscriptions.sessionmaker, "dispatch.message") == []


async def test_our_own_pages_listed_campaign_sites_and_non_browsers_may_sign_up(
    client: httpx.AsyncClient,
) -> None:
    for n, headers in enumerate(
        (
            {"Origin": PUBLIC_URL, "Sec-Fetch-Site": "same-origin"},
            {"Origin": CAMPAIGN, "Sec-Fetch-Site": "cross-site"},
            {},  # curl, a server
            {"Sec-Fetch-Site": "same-origin"},
            # Chromium posting our own form: our pages' no-referrer policy makes it "null".
            {"Origin": "null", "Sec-Fetch-Site": "same-origin"},
        )
    ):
        body = {**ANA, "email": f"ana{n}@example.net"}
        response = await client.post("/api/v1/subscribers", json=body, headers=headers)
        assert response.status_code == 202, headers
        if headers.get("Origin") == CAMPAIGN:
            assert response.headers["access-control-allow-origin"] == CAMPAIGN
        else:
            assert "access-control-allow-origin" not in response.headers
    form = await client.post(
        "/api/v1/subscribers",
        data={**ANA, "email": "ben@example.net"},
        headers={"Origin": CAMPAIGN, "Accept": "text/html"},
    )
    assert form.status_code == 202


async def test_the_cors_preflight_answers_only_listed_sites(client: httpx.AsyncClient) -> None:
    ask = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    allowed = await client.options("/api/v1/subscribers", headers={"Origin": CAMPAIGN, **ask})
    assert allowed.status_code == 204
    assert allowed.headers["access-control-allow-origin"] == CAMPAIGN
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "content-type" in allowed.headers["access-control-allow-headers"].lower()

    refused = await client.options(
        "/api/v1/subscribers", headers={"Origin": "https://evil.example", **ask}
    )
    assert refused.status_code == 403
    assert "access-control-allow-origin" not in refused.headers
    plain = await client.options("/api/v1/subscribers")
    assert plain.status_code == 204


def test_a_mailbox_is_one_however_written() -> None:
    spellings = [
        "victim@gmail.com",
        "Victim@Gmail.com",
        "victim+1@gmail.com",
        "v.ictim@gmail.com",
        "v.i.c.t.i.m+news@googlemail.com",
        "VICTIM+2@GMAIL.COM",
        "vic.tim@googlemail.com",
    ]
    assert {mailbox(s) for s in spellings} == {"victim@gmail.com"}
    # Dots matter elsewhere; a tag is dropped everywhere.
    assert mailbox("a.na@example.org") != mailbox("ana@example.org")
    assert mailbox("Ana+x@Example.org") == "ana@example.org"


async def test_seven_spellings_of_one_gmail_mailbox_bring_three_confirmations(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    spellings = [
        "victim@gmail.com",
        "victim+1@gmail.com",
        "victim+2@gmail.com",
        "v.ictim@gmail.com",
        "Vic.Tim@gmail.com",
        "victim@googlemail.com",
        "v.i.c.t.i.m+x@googlemail.com",
    ]
    for spelling in spellings:
        body = {"email": spelling, "country": "GB"}
        assert (await client.post("/api/v1/subscribers", json=body)).status_code == 202
    sent = await outbox(app.state.subscriptions.sessionmaker, "dispatch.message")
    assert len(sent) == 3
    # Another mailbox is not held up by it.
    await client.post("/api/v1/subscribers", json={"email": "victim2@gmail.com", "country": "GB"})
    assert len(await outbox(app.state.subscriptions.sessionmaker, "dispatch.message")) == 4


async def test_a_name_with_a_nul_is_refused_naming_it_not_a_500(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """PostgreSQL cannot store a NUL in text: found by schemathesis on the preferences."""
    body = {"email": "nul@example.org", "country": "GB", "name": "A\x00B"}
    response = await client.post("/api/v1/subscribers", json=body)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == ["name"]
    assert (
        await client.post("/api/v1/subscribers", json={**body, "name": "AB"})
    ).status_code == 202
    [message] = await outbox(app.state.subscriptions.sessionmaker, "dispatch.message")
    links = app.state.subscriptions.links
    token = message["unsubscribe_url"].rsplit("/", 1)[1]
    preferences = path_of(links.preferences(links.read_unsubscribe(token).subscriber))
    saved = await client.post(preferences, json={"name": "\x00R"})
    assert saved.status_code == 422
