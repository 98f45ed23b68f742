"""OSDI on the publisher (contract §8), on SQLite and PostgreSQL: the entry point, advocacy
campaigns and their outreaches in the shapes of tests/osdi_shapes.py; outreaches kept from
``LetterWritten`` once each, an erasure taking the person off them (the outreach stays, counted);
paging, the modified_date filter, and who may call."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.publisher.audit import AuditConsumer
from services.publisher.osdi.outreaches import OUTREACH_QUEUE, OutreachConsumer
from shared import events
from shared.messaging import Delivery, Reject
from tests.osdi_shapes import (
    AdvocacyCampaign,
    CampaignsPage,
    EntryPoint,
    OutreachesPage,
    checked,
)
from tests.publisher.conftest import Api

ROOT = "/osdi/v1"
CAMPAIGNS = f"{ROOT}/advocacy_campaigns"
PUBLISHER_URL = "http://localhost:8001"  # UANET_CONSOLE_URL's default: the publisher's own base
PEOPLE_URL = "http://localhost:8002/osdi/v1/people"  # under UANET_PUBLIC_URL (subscriptions)
TARGETS = [
    {"name": "Dr Ana Maria Silva", "title": "Minister of Justice", "email": "m@example.org"},
    {"name": "Head of the Judiciary", "title": "Head of the Judiciary"},
    {"name": "The Prosecutor General"},
]


def osdi(api: Api, role: str = "coordinator") -> dict[str, str]:
    return {"OSDI-API-Token": api.tokens[role]}


def delivery(key: str) -> Delivery:
    return Delivery(queue=OUTREACH_QUEUE, routing_key=key, attempt=1)


def letter(action_id: str, subscriber: uuid.UUID, language: str = "en") -> events.LetterWritten:
    return events.LetterWritten(
        letter_id=uuid.uuid4(),
        action_id=uuid.UUID(action_id),
        subscriber_id=subscriber,
        language=language,
        targets=[events.Target(name="Dr Ana Maria Silva", title="Minister of Justice")],
    )


async def _published(api: Api, **overrides: Any) -> str:
    action_id = str((await api.create(targets=TARGETS, **overrides))["id"])
    await api.publish(action_id)
    return action_id


async def test_entry_point_and_campaigns(api: Api) -> None:
    draft = (await api.create())["id"]
    first = await _published(api, title="First")
    second = await _published(api, title="Second")
    closed = await _published(api, title="Closed")
    shut = await api.client.post(
        f"/api/v1/actions/{closed}/close", json={"outcome": "released"}, headers=api.auth("staff")
    )
    assert shut.status_code == 200, shut.text

    entry = checked(EntryPoint, await api.client.get(f"{ROOT}/", headers=osdi(api)))
    assert entry["_links"]["osdi:advocacy_campaigns"]["href"] == PUBLISHER_URL + CAMPAIGNS
    assert entry["_links"]["osdi:people"]["href"] == PEOPLE_URL

    listed = checked(CampaignsPage, await api.client.get(CAMPAIGNS, headers=osdi(api)))
    campaigns = listed["_embedded"]["osdi:advocacy_campaigns"]
    # Published and closed ones, as published; never a draft.
    assert [c["identifiers"] for c in campaigns] == [
        [f"uanet:{first}"],
        [f"uanet:{second}"],
        [f"uanet:{closed}"],
    ]
    assert listed["total_records"] == 3
    one = campaigns[0]
    assert one["title"] == "First" and one["origin_system"] == "uanet"
    assert one["description"] == "Short case summary."
    assert one["total_outreaches"] == 0
    assert one["targets"] == [
        {"title": "Minister of Justice", "given_name": "Ana Maria", "family_name": "Silva"},
        {"title": "Head of the Judiciary"},
        {"title": "The Prosecutor General"},
    ]
    assert one["_links"]["self"]["href"] == f"{PUBLISHER_URL}{CAMPAIGNS}/{first}"
    assert (
        one["_links"]["osdi:outreaches"]["href"] == f"{PUBLISHER_URL}{CAMPAIGNS}/{first}/outreaches"
    )

    # Paging: two a page, a page past the end is empty, 1000 a page is answered with 100.
    page_one = checked(
        CampaignsPage, await api.client.get(CAMPAIGNS, params={"per_page": 2}, headers=osdi(api))
    )
    assert page_one["total_pages"] == 2 and "page=2" in page_one["_links"]["next"]["href"]
    beyond = checked(
        CampaignsPage,
        await api.client.get(CAMPAIGNS, params={"page": 5, "per_page": 2}, headers=osdi(api)),
    )
    assert beyond["_embedded"]["osdi:advocacy_campaigns"] == []
    wide = checked(
        CampaignsPage, await api.client.get(CAMPAIGNS, params={"per_page": 1000}, headers=osdi(api))
    )
    assert wide["per_page"] == 100 and wide["total_pages"] == 1

    single = await api.client.get(f"{CAMPAIGNS}/{second}", headers=osdi(api))
    assert checked(AdvocacyCampaign, single)["title"] == "Second"
    bearer = await api.client.get(f"{CAMPAIGNS}/{second}", headers=api.auth("admin"))
    assert checked(AdvocacyCampaign, bearer)["title"] == "Second"
    for missing in (draft, str(uuid.uuid4()), "UA-12"):
        for path in (f"{CAMPAIGNS}/{missing}", f"{CAMPAIGNS}/{missing}/outreaches"):
            assert (await api.client.get(path, headers=osdi(api))).status_code == 404, path

    for path in (f"{ROOT}/", CAMPAIGNS, f"{CAMPAIGNS}/{first}", f"{CAMPAIGNS}/{first}/outreaches"):
        assert (await api.client.get(path)).status_code == 401, path
        assert (await api.client.get(path, headers=osdi(api, "staff"))).status_code == 403, path
        wrong = {"OSDI-API-Token": "uat_" + "x" * 43}
        assert (await api.client.get(path, headers=wrong)).status_code == 401, path
    assert (await api.client.get(f"{ROOT}/nothing")).status_code == 401
    # The OSDI header opens OSDI only.
    assert (await api.client.get("/api/v1/actions", headers=osdi(api))).status_code == 401


async def test_outreaches_come_from_letters_and_an_erasure_leaves_them_anonymous(
    api: Api,
) -> None:
    action_id = await _published(api)
    quiet = await _published(api, title="No letters")
    consumer = OutreachConsumer(api.app.state.database)
    ana, ben = uuid.uuid4(), uuid.uuid4()
    before_letters = datetime.now(UTC)

    letters = [letter(action_id, ana), letter(action_id, ben, "fr"), letter(action_id, ana)]
    for event in letters:
        await consumer(event, delivery("letter.written"))
    await consumer(letters[0], delivery("letter.written"))  # redelivered: kept once
    with pytest.raises(Reject):
        await consumer(letter(str(uuid.uuid4()), ana), delivery("letter.written"))

    url = f"{CAMPAIGNS}/{action_id}/outreaches"
    page = checked(OutreachesPage, await api.client.get(url, headers=osdi(api)))
    outreaches = page["_embedded"]["osdi:outreaches"]
    assert page["total_records"] == 3
    assert [o["identifiers"] for o in outreaches] == [[f"uanet:{e.letter_id}"] for e in letters]
    assert [o["_links"]["osdi:person"]["href"] for o in outreaches] == [
        f"{PEOPLE_URL}/{ana}",
        f"{PEOPLE_URL}/{ben}",
        f"{PEOPLE_URL}/{ana}",
    ]
    # The email's subject, in the letter's language.
    assert [o["subject"] for o in outreaches] == [
        "Urgent Action: journalist at risk of torture",
        "Action urgente : journaliste en danger",
        "Urgent Action: journalist at risk of torture",
    ]
    assert outreaches[0]["type"] == "email"
    assert outreaches[0]["targets"] == [
        {"title": "Minister of Justice", "given_name": "Ana Maria", "family_name": "Silva"}
    ]
    two = checked(
        OutreachesPage, await api.client.get(url, params={"per_page": 2}, headers=osdi(api))
    )
    assert len(two["_embedded"]["osdi:outreaches"]) == 2 and "next" in two["_links"]

    # The campaign counts them, and its modified_date moved: a sync since then sees it.
    since = before_letters.isoformat().replace("+00:00", "Z")
    changed = checked(
        CampaignsPage,
        await api.client.get(
            CAMPAIGNS, params={"filter": f"modified_date gt '{since}'"}, headers=osdi(api)
        ),
    )
    [campaign] = changed["_embedded"]["osdi:advocacy_campaigns"]
    assert campaign["identifiers"] == [f"uanet:{action_id}"] and campaign["total_outreaches"] == 3
    assert quiet not in str(changed)
    untouched = checked(
        CampaignsPage,
        await api.client.get(
            CAMPAIGNS, params={"filter": f"modified_date lt '{since}'"}, headers=osdi(api)
        ),
    )
    assert untouched["total_records"] == 1
    assert untouched["_embedded"]["osdi:advocacy_campaigns"][0]["identifiers"] == [f"uanet:{quiet}"]

    # Ana is erased: her outreaches stay (and count), without her; they changed.
    before_erasure = datetime.now(UTC) - timedelta(milliseconds=1)
    erasure = events.SubscriberErased(subscriber_id=ana)
    # The audit log (another queue of the publisher) may well take the same message first.
    await AuditConsumer(api.app.state.database)(erasure, delivery("subscriber.erased"))
    await consumer(erasure, delivery("subscriber.erased"))
    # A letter of hers that arrives late (a retried message) does not bring her back.
    late = letter(action_id, ana, "es")
    await consumer(late, delivery("letter.written"))
    after = checked(OutreachesPage, await api.client.get(url, headers=osdi(api)))
    people = [o["_links"].get("osdi:person") for o in after["_embedded"]["osdi:outreaches"]]
    assert people == [None, {"href": f"{PEOPLE_URL}/{ben}"}, None, None]
    assert str(ana) not in str(after)
    since_erasure = before_erasure.isoformat().replace("+00:00", "Z")
    moved = checked(
        OutreachesPage,
        await api.client.get(
            url, params={"filter": f"modified_date gt '{since_erasure}'"}, headers=osdi(api)
        ),
    )
    assert [o["identifiers"][0] for o in moved["_embedded"]["osdi:outreaches"]] == [
        f"uanet:{letters[0].letter_id}",
        f"uanet:{letters[2].letter_id}",
        f"uanet:{late.letter_id}",
    ]
    # Spanish is not among the action's languages: the subject in its default language.
    assert moved["_embedded"]["osdi:outreaches"][-1]["subject"] == outreaches[0]["subject"]
    counted = checked(
        AdvocacyCampaign, await api.client.get(f"{CAMPAIGNS}/{action_id}", headers=osdi(api))
    )
    assert counted["total_outreaches"] == 4

    refused = await api.client.get(url, params={"filter": "title eq 'x'"}, headers=osdi(api))
    assert refused.status_code == 422 and refused.json()["errors"][0]["field"] == "filter"
