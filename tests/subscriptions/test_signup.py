"""Sign-up through the API and the form, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.models import Consent, Subscriber
from tests.subscriptions.conftest import PUBLIC_URL, outbox

ANA = {
    "email": "Ana@Example.NET",
    "phone": "07911 123456",
    "name": "Ana",
    "country": "gb",
    "language": "en",
    "timezone": "Europe/London",
    "channels": ["email", "sms"],
    "themes": ["torture", "death-penalty"],
    "frequency": "immediate",
}


async def only_subscriber(sessionmaker: async_sessionmaker[AsyncSession]) -> Subscriber:
    async with sessionmaker() as session:
        return (await session.execute(select(Subscriber))).scalar_one()


async def count(sessionmaker: async_sessionmaker[AsyncSession], model: Any) -> int:
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_sign_up_stores_a_pending_subscriber_and_asks_to_confirm(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await client.post("/api/v1/subscribers", json=ANA)

    assert response.status_code == 202
    assert response.json()["status"] == "pending"
    subscriber = await only_subscriber(sessionmaker)
    assert subscriber.email == "ana@example.net"
    assert subscriber.phone == "+447911123456"
    assert subscriber.country == "GB"
    assert subscriber.themes == ["torture", "death-penalty"]
    assert (subscriber.email_status, subscriber.sms_status) == ("pending", "pending")
    async with sessionmaker() as session:
        consents = (await session.execute(select(Consent))).scalars().all()
    assert sorted((c.channel, c.event, c.source) for c in consents) == [
        ("email", "given", "api"),
        ("sms", "given", "api"),
    ]
    messages = await outbox(sessionmaker, "dispatch.message")
    by_template = {m["template"]: m for m in messages}
    assert set(by_template) == {"confirm_email", "confirm_sms"}
    email = by_template["confirm_email"]
    assert email["to"] == "ana@example.net"
    assert email["context"]["name"] == "Ana"
    assert email["context"]["confirm_url"].startswith(f"{PUBLIC_URL}/confirm/")
    assert email["unsubscribe_url"].startswith(f"{PUBLIC_URL}/unsubscribe/")
    assert by_template["confirm_sms"]["to"] == "+447911123456"
    assert by_template["confirm_sms"]["channel"] == "sms"


async def test_each_invalid_field_gets_422_naming_it(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"email": "not-an-email"}, "email"),
        ({"email": "ana@"}, "email"),
        ({"phone": "12"}, "phone"),
        ({"phone": "+44 7911 12345678901"}, "phone"),
        ({"country": "XX"}, "country"),
        ({"country": "GBR"}, "country"),
        ({"language": "english"}, "language"),
        ({"language": "e1"}, "language"),
        ({"timezone": "Mars/Olympus_Mons"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"channels": ["fax"]}, "channels"),
        ({"themes": ["Not a slug!"]}, "themes"),
        ({"frequency": "hourly"}, "frequency"),
        ({"email": None, "phone": None}, "email"),
        ({"phone": None, "channels": ["sms"]}, "phone"),
        ({"email": None, "channels": ["email"]}, "email"),
    ]
    for change, field in cases:
        response = await client.post("/api/v1/subscribers", json={**ANA, **change})
        assert response.status_code == 422, (change, response.text)
        fields = {e["field"].split(".")[0] for e in response.json()["errors"]}
        assert field in fields, (change, fields)
        assert "not-an-email" not in response.text  # input is never echoed back
    assert await count(sessionmaker, Subscriber) == 0
    assert await outbox(sessionmaker, "dispatch.message") == []


async def test_malformed_bodies_are_422_not_500(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    for body in (b"{", b"[1, 2]", b"\xff\xfe", b'"text"'):
        response = await client.post("/api/v1/subscribers", content=body, headers=headers)
        assert response.status_code == 422, body


async def test_a_json_list_field_takes_only_a_list(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    """Contract §7: a string is not a list of one (nor a list of its comma-separated parts)."""
    for change in (
        {"themes": "torture"},
        {"channels": "email"},
        {"channels": ""},
        {"themes": {"torture": True}},
        {"channels": None, "themes": "torture,death-penalty"},
    ):
        response = await client.post("/api/v1/subscribers", json={**ANA, **change})
        assert response.status_code == 422, (change, response.text)
        fields = {e["field"] for e in response.json()["errors"]}
        assert fields & set(change), (change, fields)
    assert await count(sessionmaker, Subscriber) == 0
    # The sign-up form still sends its lists as fields (or one text): those stay lists.
    form = {"email": "ana@example.net", "country": "GB", "channels": "email"}
    response = await client.post("/api/v1/subscribers", data={**form, "themes": "torture"})
    assert response.status_code == 202, response.text
    async with sessionmaker() as session:
        [subscriber] = (await session.execute(select(Subscriber))).scalars()
        assert subscriber.themes == ["torture"]


async def test_signing_up_a_known_address_reveals_nothing_and_changes_nothing(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    first = await client.post("/api/v1/subscribers", json={**ANA, "channels": ["email"]})
    again = await client.post(
        "/api/v1/subscribers",
        json={**ANA, "email": "ANA@example.net", "name": "Mallory", "channels": ["email"]},
    )

    assert (first.status_code, first.json()) == (again.status_code, again.json())
    subscriber = await only_subscriber(sessionmaker)
    assert subscriber.name == "Ana"
    # Still pending: the confirmation is sent again, but at most three times an hour.
    for _ in range(5):
        response = await client.post("/api/v1/subscribers", json={**ANA, "channels": ["email"]})
        assert response.json() == first.json()
    confirmations = await outbox(sessionmaker, "dispatch.message")
    assert len(confirmations) == 3
    assert await count(sessionmaker, Subscriber) == 1


async def test_known_confirmed_address_gets_no_new_confirmation(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await client.post("/api/v1/subscribers", json={**ANA, "channels": ["email"]})
    [message] = await outbox(sessionmaker, "dispatch.message")
    confirm_path = message["context"]["confirm_url"].removeprefix(PUBLIC_URL)
    assert (await client.post(confirm_path)).status_code == 200

    response = await client.post("/api/v1/subscribers", json={**ANA, "channels": ["email"]})

    assert response.status_code == 202
    assert len(await outbox(sessionmaker, "dispatch.message")) == 1


async def test_sign_up_form_and_page(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    page = await client.get("/signup")
    assert page.status_code == 200
    assert 'action="/api/v1/subscribers?lang=en"' in page.text
    assert 'name="email"' in page.text

    invalid = await client.post(
        "/api/v1/subscribers",
        data={"email": "bob@example.org", "country": "Narnia", "channels": "email"},
    )
    assert invalid.status_code == 422
    assert "text/html" in invalid.headers["content-type"]
    assert "country" in invalid.text
    assert 'value="bob@example.org"' in invalid.text  # the form keeps what was typed

    done = await client.post(
        "/api/v1/subscribers",
        data={
            "email": "bob@example.org",
            "country": "IE",
            "channels": ["email"],
            "themes": "torture, refugees",
            "frequency": "daily_digest",
        },
    )
    assert done.status_code == 202
    assert "confirm" in done.text
    subscriber = await only_subscriber(sessionmaker)
    assert subscriber.themes == ["torture", "refugees"]
    assert subscriber.frequency == "daily_digest"
    assert (subscriber.email_status, subscriber.sms_status) == ("pending", None)
    assert subscriber.timezone == "UTC"


async def test_time_zone_defaults_from_the_phone_number(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    body = {"phone": "06 12 34 56 78", "country": "FR"}
    assert (await client.post("/api/v1/subscribers", json=body)).status_code == 202
    subscriber = await only_subscriber(sessionmaker)
    assert (subscriber.phone, subscriber.timezone, subscriber.sms_status) == (
        "+33612345678",
        "Europe/Paris",
        "pending",
    )
