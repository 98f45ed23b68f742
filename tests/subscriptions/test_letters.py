"""Letters to the officials from the action page (``POST /act/{token}/letter``): what is accepted,
what is refused and why, and the two messages an accepted letter writes in its transaction."""

from __future__ import annotations

import re
import uuid
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.data_rights import erase_subscriber
from services.subscriptions.handlers import SubscriptionHandlers
from services.subscriptions.letters import MAX_LETTERS_PER_ACTION
from services.subscriptions.links import Links
from services.subscriptions.models import KnownAction, PendingLetter, Subscriber
from shared.events import ActionTargetsChanged, Target
from shared.messaging import Delivery, Retry
from tests.subscriptions.conftest import (
    action_published,
    add_recipient,
    add_subscriber,
    known_action,
    outbox,
    path_of,
)

TARGETS = [
    {"name": "Head of the Judiciary", "email": "judiciary@example.org"},
    {"name": "Minister of Justice", "email": "minister@example.org"},
    {"name": "Prison governor"},  # no email: written to by post only
]
LETTER = {"name": "Ana Lima", "email": "Ana@Example.net", "letter": "Please release him."}


async def seed(
    sessionmaker: async_sessionmaker[AsyncSession],
    links: Links,
    *,
    targets: list[dict[str, Any]] | None = None,
    language: str = "fr",
    email: str = "ana@example.net",
) -> tuple[uuid.UUID, str]:
    event = action_published(
        targets=TARGETS if targets is None else targets,
        content={
            "en": {"subject": "Urgent Action", "model_letter": "I am writing to urge you."},
            "fr": {"subject": "Action urgente", "model_letter": "Je vous écris pour demander."},
        },
    )
    async with sessionmaker() as session:
        subscriber = await add_subscriber(
            session, email=email, email_status="confirmed", language=language
        )
        action = known_action(event)
        session.add(action)
        await session.flush()
        recipient = await add_recipient(session, action, subscriber)
        await session.commit()
    return event.action_id, path_of(links.act(recipient.id))


async def set_action(
    sessionmaker: async_sessionmaker[AsyncSession], action_id: uuid.UUID, **values: Any
) -> None:
    async with sessionmaker() as session, session.begin():
        await session.execute(update(KnownAction).where(KnownAction.id == action_id).values(values))


async def test_a_json_letter_is_accepted_once_with_its_command_and_its_count(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    action_id, path = await seed(sessionmaker, links)
    letter_id = str(uuid.uuid4())

    sent = await client.post(f"{path}/letter", json={**LETTER, "letter_id": letter_id})
    again = await client.post(f"{path}/letter", json={**LETTER, "letter_id": letter_id})

    assert sent.status_code == 202, sent.text
    assert sent.json() == {"status": "accepted", "letter_id": letter_id, "targets": 2}
    assert again.status_code == 202
    assert again.json()["status"] == "duplicate"
    [command] = await outbox(sessionmaker, "letter.requested")
    assert command["letter_id"] == letter_id
    assert command["action_id"] == str(action_id)
    assert command["language"] == "fr"
    assert (command["sender_name"], command["sender_email"]) == ("Ana Lima", "ana@example.net")
    assert command["body"] == "Please release him."
    # One action of kind email per target with an address, deduplicated by the letter id.
    [report] = await outbox(sessionmaker, "response.recorded")
    assert (report["message_id"], report["kind"], report["count"]) == (letter_id, "email", 2)
    assert report["action_id"] == str(action_id)


async def test_the_form_shows_the_model_letter_and_thanks_after_sending(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    _, path = await seed(sessionmaker, links)

    page = await client.get(path)
    assert page.status_code == 200
    assert "Je vous écris pour demander.</textarea>" in page.text  # in the subscriber's language
    # Never prefilled with the subscriber's own details: a forwarded link shows the page too.
    assert "ana@example.net" not in page.text
    letter_id = re.search(r'name="letter_id" value="([^"]+)"', page.text)
    assert letter_id

    form = {**LETTER, "letter_id": letter_id.group(1)}
    thanks = await client.post(f"{path}/letter", data=form)
    resubmitted = await client.post(f"{path}/letter", data=form)

    assert thanks.status_code == 200
    assert "Merci ! Votre lettre est en route" in thanks.text
    assert "Minister of Justice" in thanks.text
    assert resubmitted.status_code == 200
    assert len(await outbox(sessionmaker, "letter.requested")) == 1


async def test_bad_input_gets_422_naming_the_field(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    _, path = await seed(sessionmaker, links, language="en")
    cases = {
        "letter": {**LETTER, "letter": "   "},
        "email": {**LETTER, "email": "not-an-address"},
        "name": {**LETTER, "name": "Ana\r\nBcc: everyone@example.org"},
    }
    for field, body in cases.items():
        answer = await client.post(f"{path}/letter", json=body)
        assert answer.status_code == 422, field
        assert [e["field"] for e in answer.json()["errors"]] == [field]
    too_long = await client.post(f"{path}/letter", json={**LETTER, "letter": "x" * 10_001})
    assert too_long.status_code == 422
    assert too_long.json()["detail"] == "invalid: letter"

    page = await client.post(f"{path}/letter", data={**LETTER, "email": "nope"})
    assert page.status_code == 422
    assert 'aria-invalid="true" aria-describedby="letter-email-error"' in page.text
    assert 'value="nope"' in page.text  # what they typed stays, for them to fix
    assert "Please release him.</textarea>" in page.text
    assert await outbox(sessionmaker, "letter.requested") == []


async def test_closed_past_deadline_unknown_and_no_email_targets_are_refused(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    action_id, path = await seed(sessionmaker, links, language="en")

    await set_action(sessionmaker, action_id, deadline=date.today() - timedelta(days=2))
    late = await client.post(f"{path}/letter", json=LETTER)
    assert late.status_code == 410
    assert "deadline" in late.json()["detail"]
    late_page = await client.get(path)
    assert "its deadline has passed" in late_page.text
    assert 'action="' + path + '/letter"' not in late_page.text

    await set_action(sessionmaker, action_id, deadline=None, status="closed")
    closed = await client.post(f"{path}/letter", data=LETTER)
    assert closed.status_code == 409
    assert "This case is closed" in closed.text

    tampered = await client.post(f"{path}x/letter", json=LETTER)
    assert tampered.status_code == 404
    tampered_page = await client.post(f"{path}x/letter", data=LETTER)
    assert tampered_page.status_code == 404
    assert "This link does not work" in tampered_page.text

    _, by_post_only = await seed(
        sessionmaker, links, targets=[{"name": "Governor"}], email="ben@example.net"
    )
    nobody = await client.post(f"{by_post_only}/letter", json=LETTER)
    assert nobody.status_code == 409
    assert "None of the officials" in nobody.json()["detail"]
    assert await outbox(sessionmaker, "letter.requested") == []
    assert await outbox(sessionmaker, "response.recorded") == []


async def test_one_person_cannot_flood_the_officials(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    _, path = await seed(sessionmaker, links, language="en")
    for _ in range(MAX_LETTERS_PER_ACTION):
        assert (await client.post(f"{path}/letter", json=LETTER)).status_code == 202
    refused = await client.post(f"{path}/letter", json=LETTER)
    assert refused.status_code == 429
    assert len(await outbox(sessionmaker, "letter.requested")) == MAX_LETTERS_PER_ACTION


async def test_the_page_shows_a_target_address_staff_fixed(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    action_id, path = await seed(sessionmaker, links)
    handlers = SubscriptionHandlers(sessionmaker, links, lambda: None)
    fixed = "justice.minister@example.org"
    changed = ActionTargetsChanged(
        action_id=action_id,
        reference="UA 12/26",
        targets=[
            Target.model_validate(TARGETS[0]),
            Target(name="Minister of Justice", email=fixed),
        ],
    )
    delivery = Delivery("subscriptions.actions", changed.ROUTING_KEY, 0)
    await handlers.on_action_event(changed, delivery)
    await handlers.on_action_event(changed, delivery)  # redelivered: the same

    page = await client.get(path)
    assert f'href="mailto:{fixed}"' in page.text
    assert "minister@example.org" not in page.text.replace(fixed, "")
    assert "Prison governor" not in page.text  # the list is the one staff set

    unknown = ActionTargetsChanged(action_id=uuid.uuid4(), reference="UA 1/26", targets=[])
    with pytest.raises(Retry, match="action not known yet"):
        await handlers.on_action_event(unknown, delivery)


async def test_another_reply_address_gets_one_link_and_the_letter_goes_when_it_is_followed(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    """Whoever holds a forwarded act link may write, but replies go to an address only once it
    showed it is theirs: a link emailed to it, a page with a button, its POST sends once."""
    action_id, path = await seed(sessionmaker, links)
    other = {**LETTER, "email": "legal-dept@example.com", "name": "Amnesty Legal Dept"}

    asked = await client.post(f"{path}/letter", json=other)

    assert asked.status_code == 202, asked.text
    assert asked.json()["status"] == "confirm_email"
    letter_id = asked.json()["letter_id"]
    assert await outbox(sessionmaker, "letter.requested") == []
    assert await outbox(sessionmaker, "response.recorded") == []  # nothing counts yet
    [check] = await outbox(sessionmaker, "dispatch.message")
    assert (check["template"], check["channel"], check["to"]) == (
        "letter_check",
        "email",
        "legal-dept@example.com",
    )
    assert check["message_id"] == str(uuid.uuid5(uuid.UUID(letter_id), "letter_check"))
    link = path_of(check["context"]["confirm_url"])
    assert link.startswith("/letters/")

    page = await client.get(link)  # a mail scanner following the link sends nothing
    assert page.status_code == 200
    assert f'action="{link}"' in page.text and "<button" in page.text
    assert await outbox(sessionmaker, "letter.requested") == []

    sent = await client.post(link, json={})
    again = await client.post(link, data={})

    assert sent.status_code == 200, sent.text
    assert sent.json() == {"status": "sent", "letter_id": letter_id}
    assert again.status_code == 200
    [command] = await outbox(sessionmaker, "letter.requested")
    assert command["letter_id"] == letter_id and command["action_id"] == str(action_id)
    assert (command["sender_name"], command["sender_email"]) == (
        "Amnesty Legal Dept",
        "legal-dept@example.com",
    )
    [report] = await outbox(sessionmaker, "response.recorded")
    assert (report["message_id"], report["count"]) == (letter_id, 2)
    assert (await client.post(link + "x", json={})).status_code == 404
    assert (await client.get("/letters/not-a-token")).status_code == 404


async def test_reply_address_checks_count_against_the_mailbox_like_confirmations(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    """A forwarded act link must not mail one inbox without end: each spelling of a Gmail
    mailbox is one mailbox, three checks an hour, and a refused letter is not kept."""
    _, path = await seed(sessionmaker, links, language="en")
    spellings = ["victim@gmail.com", "v.ictim@gmail.com", "victim+1@googlemail.com"]
    for spelling in spellings:
        asked = await client.post(f"{path}/letter", json={**LETTER, "email": spelling})
        assert asked.status_code == 202 and asked.json()["status"] == "confirm_email"

    refused = await client.post(f"{path}/letter", json={**LETTER, "email": "Vic.Tim@gmail.com"})
    page = await client.post(f"{path}/letter", data={**LETTER, "email": "victim+2@gmail.com"})

    assert refused.status_code == 429 and "as many messages" in refused.json()["detail"]
    assert page.status_code == 429 and "We cannot email that address now" in page.text
    assert len(await outbox(sessionmaker, "dispatch.message")) == 3
    other = await client.post(f"{path}/letter", json={**LETTER, "email": "someone@example.com"})
    assert other.status_code == 202  # the refused ones did not use up the letters allowed
    async with sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(PendingLetter)) == 4


async def test_an_unconfirmed_own_address_is_asked_too(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    _, path = await seed(sessionmaker, links, email="ana@example.net")
    async with sessionmaker() as session, session.begin():
        await session.execute(update(Subscriber).values(email_status="pending"))

    asked = await client.post(f"{path}/letter", data=LETTER)

    assert asked.status_code == 200
    # The page speaks the subscriber's language (the seed's subscriber reads French).
    assert "Consultez votre boîte de réception pour envoyer votre lettre" in asked.text
    assert await outbox(sessionmaker, "letter.requested") == []
    [check] = await outbox(sessionmaker, "dispatch.message")
    assert check["to"] == "ana@example.net"


async def test_erasure_forgets_a_waiting_letter_and_its_link_stops_working(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession], links: Links
) -> None:
    _, path = await seed(sessionmaker, links)
    asked = await client.post(f"{path}/letter", json={**LETTER, "email": "other@example.com"})
    [check] = await outbox(sessionmaker, "dispatch.message")
    link = path_of(check["context"]["confirm_url"])
    async with sessionmaker() as session:
        subscriber = (await session.execute(select(Subscriber))).scalar_one()

    async with sessionmaker() as session, session.begin():
        assert await erase_subscriber(session, subscriber.public_id)

    assert asked.json()["status"] == "confirm_email"
    async with sessionmaker() as session:
        assert (await session.execute(select(PendingLetter))).scalars().all() == []
    assert (await client.get(link)).status_code == 404
    assert (await client.post(link, json={})).status_code == 404
    assert await outbox(sessionmaker, "letter.requested") == []
