"""The action page (``/act/{token}``) and reports of what subscribers did."""

from __future__ import annotations

import logging
import re
import uuid
from dataclasses import dataclass

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.data_rights import erase_subscriber
from services.subscriptions.links import Links
from services.subscriptions.models import KnownAction, Response
from services.subscriptions.responses import MAX_ACTIONS_PER_PERSON, REPORTS_PER_HOUR
from shared.web import install_common
from tests.subscriptions.conftest import (
    action_published,
    add_recipient,
    add_subscriber,
    known_action,
    outbox,
    path_of,
)

HOSTILE = '<script>alert("x")</script>'


@dataclass
class Seeded:
    action_id: uuid.UUID
    path: str
    subscriber_public_id: uuid.UUID


async def seed(
    sessionmaker: async_sessionmaker[AsyncSession], links: Links, *, language: str = "en"
) -> Seeded:
    event = action_published(
        content={
            "en": {
                "subject": f"Urgent Action {HOSTILE}",
                "summary": f"Summary {HOSTILE}",
                "body": f"Case text with **emphasis**.\n\n{HOSTILE}\n\n[bad](javascript:alert(1))",
                "sms": "Act now",
                "model_letter": f"Dear Sir,\n{HOSTILE}\nYours",
            },
            "fr": {
                "subject": "Action urgente : journaliste en danger",
                "summary": "Résumé.",
                "body": "Texte du cas.",
                "sms": "Agissez",
                "model_letter": "Monsieur,",
            },
        },
        targets=[{"name": f"Minister {HOSTILE}", "salutation": "Dear Minister"}],
    )
    async with sessionmaker() as session:
        subscriber = await add_subscriber(
            session, email="ana@example.net", email_status="confirmed", language=language
        )
        action = known_action(event)
        session.add(action)
        await session.flush()
        recipient = await add_recipient(session, action, subscriber)
        await session.commit()
    return Seeded(event.action_id, path_of(links.act(recipient.id)), subscriber.public_id)


async def responses(sessionmaker: async_sessionmaker[AsyncSession]) -> list[Response]:
    async with sessionmaker() as session:
        return list((await session.execute(select(Response))).scalars())


async def test_action_page_renders_staff_content_escaped(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)

    page = await client.get(seeded.path)

    assert page.status_code == 200
    assert "<script>" not in page.text
    assert "&lt;script&gt;" in page.text
    assert 'href="javascript' not in page.text
    assert "<strong>emphasis</strong>" in page.text  # Markdown still works
    assert "Dear Minister" in page.text
    assert "Dear Sir," in page.text  # the model letter
    report_id = re.search(r'name="report_id" value="([0-9a-f-]{36})"', page.text)
    assert report_id is not None
    for kind in ("letter", "email", "call", "other"):
        assert f'value="{kind}"' in page.text


async def test_action_page_in_the_subscribers_language(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    french = await seed(sessionmaker, links, language="fr")
    page = await client.get(french.path)
    assert "Action urgente" in page.text
    assert '<html lang="fr" dir="ltr">' in page.text
    assert "Dites-nous ce que vous avez fait" in page.text  # the page's own words too


async def test_action_page_falls_back_to_the_default_language(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    german = await seed(sessionmaker, links, language="de")
    page = await client.get(german.path)
    assert "Urgent Action &lt;script&gt;" in page.text
    # Pages in German do not exist: English around the English text.
    assert '<html lang="en" dir="ltr">' in page.text
    assert '<h1 lang="en">' in page.text


async def test_report_as_json_counts_once_per_report_id(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)
    report_id = str(uuid.uuid4())

    first = await client.post(
        seeded.path, json={"kind": "letter", "count": 2, "report_id": report_id}
    )
    retried = await client.post(
        seeded.path, json={"kind": "letter", "count": 2, "report_id": report_id}
    )
    without_id = await client.post(seeded.path, json={"kind": "call"})

    assert (first.status_code, first.json()["status"]) == (202, "recorded")
    assert (retried.status_code, retried.json()["status"]) == (202, "duplicate")
    assert without_id.status_code == 202
    stored = await responses(sessionmaker)
    assert sorted((r.kind, r.count, r.source) for r in stored) == [
        ("call", 1, "page"),
        ("letter", 2, "page"),
    ]
    recorded = await outbox(sessionmaker, "response.recorded")
    assert len(recorded) == 2
    letter = next(m for m in recorded if m["kind"] == "letter")
    assert letter["message_id"] == report_id
    assert letter["action_id"] == str(seeded.action_id)
    assert letter["subscriber_id"] == str(seeded.subscriber_public_id)
    assert letter["country"] == "GB"


async def test_invalid_reports_are_refused(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)
    for body, field in (
        ({"kind": "letter", "count": 0}, "count"),
        ({"kind": "letter", "count": 51}, "count"),
        ({"kind": "sms_reply", "count": 1}, "kind"),
        ({"kind": "letter", "count": "many"}, "count"),
        ({"kind": "letter", "report_id": "not-a-uuid"}, "report_id"),
        ({}, "kind"),
    ):
        response = await client.post(seeded.path, json=body)
        assert response.status_code == 422, body
        assert field in {e["field"] for e in response.json()["errors"]}
    bad_form = await client.post(seeded.path, data={"kind": "letter", "count": "0"})
    assert bad_form.status_code == 422
    assert "count" in bad_form.text
    assert await responses(sessionmaker) == []


async def test_report_from_the_form_counts_once_when_resubmitted(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)
    page = await client.get(seeded.path)
    match = re.search(r'name="report_id" value="([0-9a-f-]{36})"', page.text)
    assert match is not None
    form = {"report_id": match.group(1), "kind": "email", "count": "3"}

    first = await client.post(seeded.path, data=form)
    second = await client.post(seeded.path, data=form)

    assert first.status_code == second.status_code == 303
    thanks = await client.get(first.headers["location"])
    assert "Your action is counted" in thanks.text
    assert [(r.kind, r.count) for r in await responses(sessionmaker)] == [("email", 3)]


async def test_closed_action_is_still_shown_and_still_takes_reports(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)
    async with sessionmaker() as session:
        action = await session.get(KnownAction, seeded.action_id)
        assert action is not None
        action.status, action.outcome = "closed", "released"
        await session.commit()

    page = await client.get(seeded.path)
    assert page.status_code == 200
    assert "This case is closed: the person was released" in page.text
    report = await client.post(seeded.path, json={"kind": "letter"})
    assert report.status_code == 202
    assert len(await responses(sessionmaker)) == 1


async def test_unknown_recipient_is_404(client: httpx.AsyncClient, links: Links) -> None:
    path = path_of(links.act(987654))
    assert (await client.get(path)).status_code == 404
    assert (await client.post(path, json={"kind": "letter"})).status_code == 404
    assert (await client.get("/act/" + "x" * 5000)).status_code == 404


# ---- counts that cannot be forged ---------------------------------------------------------------


async def test_one_link_adds_at_most_the_cap_however_often_it_reports(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)

    first = await client.post(seeded.path, json={"kind": "letter", "count": 30})
    second = await client.post(seeded.path, json={"kind": "call", "count": 30})
    third = await client.post(seeded.path, json={"kind": "other", "count": 50})
    by_form = await client.post(seeded.path, data={"kind": "email", "count": "50"})

    assert [r.json()["status"] for r in (first, second, third)] == [
        "recorded",
        "recorded",
        "capped",
    ]
    assert by_form.status_code == 303
    # The second report added only what was left of the cap; nothing after it.
    stored = sorted((r.kind, r.count) for r in await responses(sessionmaker))
    assert stored == [("call", MAX_ACTIONS_PER_PERSON - 30), ("letter", 30)]
    recorded = await outbox(sessionmaker, "response.recorded")
    assert sum(m["count"] for m in recorded) == MAX_ACTIONS_PER_PERSON


async def test_reports_beyond_the_rate_are_refused_and_count_nothing(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)
    for _ in range(REPORTS_PER_HOUR):
        taken = await client.post(seeded.path, json={"kind": "call", "count": 1})
        assert taken.json()["status"] == "recorded"

    refused = await client.post(seeded.path, json={"kind": "call", "count": 1})
    refused_form = await client.post(seeded.path, data={"kind": "call", "count": "1"})

    assert refused.status_code == refused_form.status_code == 429
    assert refused.headers["retry-after"] == "3600"
    assert len(await responses(sessionmaker)) == REPORTS_PER_HOUR


# ---- a forwarded link, an erased person, hostile bodies ---------------------------------------


async def test_the_action_page_shows_no_personal_data(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)
    async with sessionmaker() as session, session.begin():
        action = await session.get(KnownAction, seeded.action_id)
        assert action is not None
        action.targets = [{"name": "Minister", "email": "minister@gov.example"}]

    page = await client.get(seeded.path)

    assert 'name="letter"' in page.text  # the letter form, where the name and address were
    # Whoever the alert was forwarded to sees the case, not whom it was sent to.
    assert page.status_code == 200
    assert "ana@example.net" not in page.text
    assert 'value="Ana"' not in page.text


async def test_an_erased_persons_act_link_stops_working(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)
    async with sessionmaker() as session, session.begin():
        assert await erase_subscriber(session, seeded.subscriber_public_id)

    assert (await client.get(seeded.path)).status_code == 404
    assert (await client.post(seeded.path, json={"kind": "call"})).status_code == 404
    letter = {"name": "X", "email": "x@example.org", "letter": "Hello"}
    assert (await client.post(seeded.path + "/letter", json=letter)).status_code == 404
    assert await responses(sessionmaker) == []


async def test_deeply_nested_json_is_bad_input(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    seeded = await seed(sessionmaker, links)
    nested = b"[" * 200_000 + b"]" * 200_000
    headers = {"Content-Type": "application/json"}

    for path in (seeded.path, "/api/v1/subscribers", "/preferences/x"):
        answer = await client.post(path, content=nested, headers=headers)
        assert answer.status_code in (404, 422), path


async def test_no_token_reaches_the_log_on_an_error(caplog: pytest.LogCaptureFixture) -> None:
    app = FastAPI()
    install_common(app, _ready)

    @app.get("/act/{token}")
    async def broken(token: str) -> None:
        raise RuntimeError("a bug")

    token = "secret-subscriber-token-0123456789"
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        with caplog.at_level(logging.ERROR):
            answer = await http.get(f"/act/{token}")

    assert answer.status_code == 500
    assert "unhandled error on GET /act/{token}" in caplog.text
    assert token not in caplog.text


async def _ready() -> dict[str, bool]:
    return {}
