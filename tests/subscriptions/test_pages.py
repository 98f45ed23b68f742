"""Confirm, unsubscribe (one-click) and preference pages, authorized by signed links."""

from __future__ import annotations

import httpx
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.app import create_app
from services.subscriptions.links import Links
from services.subscriptions.models import Consent, Subscriber, Suppression
from shared.tokens import LinkSigner
from tests.subscriptions.conftest import PUBLIC_URL, outbox, path_of, service_settings

ANA = {"email": "ana@example.net", "phone": "+447911123456", "name": "Ana", "country": "GB"}


async def signed_up(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> Subscriber:
    response = await client.post("/api/v1/subscribers", json=ANA)
    assert response.status_code == 202
    return await reload(sessionmaker)


async def reload(sessionmaker: async_sessionmaker[AsyncSession]) -> Subscriber:
    async with sessionmaker() as session:
        return (await session.execute(select(Subscriber))).scalar_one()


async def consents(sessionmaker: async_sessionmaker[AsyncSession]) -> list[tuple[str, str, str]]:
    async with sessionmaker() as session:
        rows = (await session.execute(select(Consent).order_by(Consent.id))).scalars()
        return [(c.channel, c.event, c.source) for c in rows]


def tamper(token: str) -> str:
    return token[:-2] + ("AA" if not token.endswith("AA") else "BB")


async def test_the_confirm_link_shows_a_button_and_only_its_post_confirms(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    await signed_up(client, sessionmaker)
    [email] = [m for m in await outbox(sessionmaker, "dispatch.message") if m["channel"] == "email"]
    confirm = path_of(email["context"]["confirm_url"])

    # What a mail scanner or a link preview does: follow the link, several times.
    for _ in range(3):
        page = await client.get(confirm)
        assert page.status_code == 200
        assert f'<form method="post" action="{confirm}">' in page.text
        assert "<button" in page.text
    assert (await reload(sessionmaker)).email_status == "pending"
    assert ("email", "confirmed", "page") not in await consents(sessionmaker)

    response = await client.post(confirm)

    assert response.status_code == 200
    assert "you are confirmed" in response.text
    subscriber = await reload(sessionmaker)
    assert (subscriber.email_status, subscriber.sms_status) == ("confirmed", "pending")
    assert ("email", "confirmed", "page") in await consents(sessionmaker)
    for again in (await client.post(confirm), await client.get(confirm)):
        assert again.status_code == 200
        assert "already confirmed" in again.text
    assert (await consents(sessionmaker)).count(("email", "confirmed", "page")) == 1


async def test_a_complaint_is_lifted_by_the_persons_button_not_by_following_the_link(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    subscriber = await signed_up(client, sessionmaker)
    async with sessionmaker() as session, session.begin():
        session.add(Suppression(channel="email", address="ana@example.net", reason="complaint"))
    confirm = path_of(links.confirm(subscriber.public_id))

    await client.get(confirm)
    async with sessionmaker() as session:
        kept = (await session.execute(select(Suppression.reason))).scalars().all()
    assert kept == ["complaint"]

    await client.post(confirm)
    async with sessionmaker() as session:
        assert (await session.execute(select(Suppression))).first() is None
    assert (await reload(sessionmaker)).email_status == "confirmed"


async def test_bad_links_get_a_4xx_page_never_a_500(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    subscriber = await signed_up(client, sessionmaker)
    good = {
        "confirm": links.confirm(subscriber.public_id),
        "unsubscribe": links.unsubscribe(subscriber.public_id, "email"),
        "preferences": links.preferences(subscriber.public_id),
    }
    other_key = Links(LinkSigner("another-secret"), PUBLIC_URL)
    forged = {
        "confirm": other_key.confirm(subscriber.public_id),
        "unsubscribe": other_key.unsubscribe(subscriber.public_id, "email"),
        "preferences": other_key.preferences(subscriber.public_id),
    }
    # Validly signed, but naming nobody, or for another purpose.
    signer = LinkSigner("test-secret-key-not-for-production")
    odd_tokens = [
        signer.sign("unsubscribe", {"s": "not-a-uuid", "c": "email"}),
        signer.sign("unsubscribe", {"s": str(subscriber.public_id), "c": "fax"}),
        signer.sign("unsubscribe", ["x"]),
        signer.sign("preferences", {"s": 1}),
        signer.sign("act", [str(subscriber.public_id)]),
    ]
    requests: list[tuple[str, str]] = []
    for purpose, url in good.items():
        token = url.rsplit("/", 1)[1]
        # A genuine token, but signed for another purpose.
        other_purpose = good["preferences" if purpose != "preferences" else "confirm"]
        requests += [
            ("GET", f"/{purpose}/{tamper(token)}"),
            ("GET", f"/{purpose}/{token[: len(token) // 2]}"),
            ("GET", f"/{purpose}/%00%ff"),
            ("GET", path_of(forged[purpose])),
            ("GET", f"/{purpose}/{other_purpose.rsplit('/', 1)[1]}"),
        ]
        requests += [("POST", f"/{purpose}/{tamper(token)}")]
        requests += [("POST", path_of(forged[purpose]))]
    for token in odd_tokens:
        requests += [("GET", f"/unsubscribe/{token}"), ("POST", f"/unsubscribe/{token}")]
        requests += [("GET", f"/preferences/{token}"), ("POST", f"/preferences/{token}")]
        requests += [("GET", f"/act/{token}"), ("POST", f"/act/{token}")]
    for method, path in requests:
        response = await client.request(method, path)
        assert 400 <= response.status_code < 500, (method, path, response.status_code)
    subscriber = await reload(sessionmaker)
    assert (subscriber.email_status, subscriber.sms_status) == ("pending", "pending")


async def test_one_click_unsubscribe(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    subscriber = await signed_up(client, sessionmaker)
    path = path_of(links.unsubscribe(subscriber.public_id, "email"))

    page = await client.get(path)
    assert page.status_code == 200
    assert f'action="{path}"' in page.text and "<button" in page.text
    assert (await reload(sessionmaker)).email_status == "pending"  # looking changes nothing

    # RFC 8058: what a mail client sends, with no cookie and no CSRF token.
    response = await client.post(
        path,
        content=b"List-Unsubscribe=One-Click",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert "unsubscribed" in response.text
    again = await client.post(path)
    assert again.status_code == 200

    subscriber = await reload(sessionmaker)
    assert (subscriber.email_status, subscriber.sms_status) == ("unsubscribed", "pending")
    assert (await consents(sessionmaker)).count(("email", "withdrawn", "page")) == 1
    async with sessionmaker() as session:
        suppressions = (await session.execute(select(Suppression))).scalars().all()
    assert [(s.address, s.reason) for s in suppressions] == [("ana@example.net", "unsubscribed")]

    # The old confirmation link does not sign them up again.
    confirm = await client.post(path_of(links.confirm(subscriber.public_id)))
    assert confirm.status_code == 200
    assert "can no longer be used" in confirm.text
    assert (await reload(sessionmaker)).email_status == "unsubscribed"


async def test_signing_up_again_after_unsubscribing_needs_a_new_confirmation(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    subscriber = await signed_up(client, sessionmaker)
    await client.post(path_of(links.unsubscribe(subscriber.public_id, "email")))
    before = len(await outbox(sessionmaker, "dispatch.message"))

    response = await client.post("/api/v1/subscribers", json={**ANA, "channels": ["email"]})

    assert response.status_code == 202
    assert (await reload(sessionmaker)).email_status == "pending"
    assert len(await outbox(sessionmaker, "dispatch.message")) == before + 1
    await client.post(path_of(links.confirm(subscriber.public_id)))
    assert (await reload(sessionmaker)).email_status == "confirmed"
    async with sessionmaker() as session:
        assert (await session.execute(select(Suppression))).first() is None


async def test_preferences_page_and_form(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    subscriber = await signed_up(client, sessionmaker)
    path = path_of(links.preferences(subscriber.public_id))

    page = await client.get(path)
    assert page.status_code == 200
    assert 'name="themes"' in page.text and 'name="channels"' in page.text

    saved = await client.post(
        path,
        data={
            "form": "preferences",
            "channels": ["email"],  # SMS unticked: off
            "themes": "death-penalty, Refugees",
            "language": "fr",
            "timezone": "Europe/Paris",
            "frequency": "daily_digest",
        },
    )
    assert saved.status_code == 200
    # The page now speaks the language just chosen.
    assert '<html lang="fr" dir="ltr">' in saved.text
    assert "Vos préférences sont enregistrées." in saved.text
    subscriber = await reload(sessionmaker)
    assert subscriber.themes == ["death-penalty", "refugees"]
    assert (subscriber.language, subscriber.timezone, subscriber.frequency) == (
        "fr",
        "Europe/Paris",
        "daily_digest",
    )
    assert (subscriber.email_status, subscriber.sms_status) == ("pending", "unsubscribed")

    invalid = await client.post(path, data={"timezone": "Nowhere/Land", "channels": "email"})
    assert invalid.status_code == 422
    assert "timezone" in invalid.text
    invalid_json = await client.post(path, json={"language": "french"})
    assert invalid_json.status_code == 422
    assert {e["field"] for e in invalid_json.json()["errors"]} == {"language"}
    # A body that is no JSON at all: the same 422 shape, as documented.
    unreadable = await client.post(
        path, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert unreadable.status_code == 422
    assert unreadable.json()["errors"] == [{"field": "body", "message": "body is not valid JSON"}]
    # A JSON caller with a bad link gets JSON, as documented; a browser gets the page.
    bad_link = await client.post(tamper(path), json={"language": "fr"})
    assert bad_link.status_code == 404
    assert bad_link.json() == {"detail": "unknown or invalid link"}


async def test_the_preferences_page_shows_what_can_change_not_who_they_are(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    """Whoever holds a forwarded preferences link sees the page: not the subscriber's name nor
    addresses. An empty name field keeps the name; a new one replaces it."""
    subscriber = await signed_up(client, sessionmaker)
    async with sessionmaker() as session, session.begin():
        await session.execute(update(Subscriber).values(name="Ana Lima-Okonkwo"))
    path = path_of(links.preferences(subscriber.public_id))

    page = await client.get(path)

    assert page.status_code == 200
    for personal in ("Lima-Okonkwo", "ana@example.net", "7911123456"):
        assert personal not in page.text
    assert 'id="name" name="name"' in page.text
    kept = await client.post(path, data={"name": "", "channels": ["email", "sms"]})
    assert kept.status_code == 200 and "Lima-Okonkwo" not in kept.text
    assert (await reload(sessionmaker)).name == "Ana Lima-Okonkwo"
    await client.post(path, data={"name": "Ana L.", "channels": ["email", "sms"]})
    assert (await reload(sessionmaker)).name == "Ana L."


async def test_preferences_json_turns_a_channel_back_on_with_a_confirmation(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    subscriber = await signed_up(client, sessionmaker)
    path = path_of(links.preferences(subscriber.public_id))
    await client.post(path, json={"channels": ["sms"]})
    assert (await reload(sessionmaker)).email_status == "unsubscribed"
    before = len(await outbox(sessionmaker, "dispatch.message"))

    response = await client.post(path, json={"channels": ["email", "sms"], "themes": []})

    assert response.status_code == 200
    body = response.json()
    assert body["channels"] == {"email": "pending", "sms": "pending"}
    assert body["awaiting_confirmation"] == ["email", "sms"]
    messages = await outbox(sessionmaker, "dispatch.message")
    assert [m["template"] for m in messages[before:]] == ["confirm_email"]


async def test_an_https_public_url_means_hsts_on_every_page(subscriptions_db: str) -> None:
    https = create_app(service_settings(subscriptions_db, public_url="https://act.example.org"))
    plain = create_app(service_settings(subscriptions_db))
    answers = []
    for app in (https, plain):
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
                answers.append(await http.get("/signup"))
    assert answers[0].headers["strict-transport-security"].startswith("max-age=31536000")
    assert "strict-transport-security" not in answers[1].headers


async def test_every_page_sends_the_security_headers(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    subscriber = await signed_up(client, sessionmaker)
    pages = [
        await client.get("/signup"),
        await client.get(path_of(links.preferences(subscriber.public_id))),
        await client.get("/confirm/not-a-token"),  # the 404 page too
        await client.post("/api/v1/subscribers", json={"email": "x"}),  # and the JSON 422
    ]
    for page in pages:
        policy = page.headers["content-security-policy"]
        # No script at all, nothing inline; forms only to us.
        assert "script-src 'none'" in policy and "unsafe-inline" not in policy, policy
        assert "form-action 'self'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        # The URL holds the subscriber's signed token: never sent on in a Referer.
        assert page.headers["referrer-policy"] == "no-referrer"
