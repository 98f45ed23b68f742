"""The actions API through HTTP, in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from services.publisher.bounces import BounceConsumer
from services.publisher.models import ActionUpdate, Outbox, TargetBounce
from shared import events
from tests.publisher.conftest import Api, sample_action


async def outbox_messages(api: Api) -> list[tuple[str, dict[str, Any]]]:
    """What the outbox says about urgent actions (the fixture's API tokens are announced too)."""
    async with api.app.state.runtime.sessionmaker() as session:
        rows = (await session.execute(select(Outbox).order_by(Outbox.created_at))).scalars()
        return [
            (row.routing_key, json.loads(row.body))
            for row in rows
            if not row.routing_key.startswith("token.")
        ]


async def test_the_life_of_an_urgent_action(api: Api) -> None:
    created = await api.create()
    action_id = created["id"]
    assert created["status"] == "draft"
    assert created["reference"].startswith("UA 1/")
    assert created["published_at"] is None
    assert created["targets"][0]["name"] == "Head of the Judiciary"
    assert await outbox_messages(api) == []  # a draft tells no one

    edited = await api.client.patch(
        f"/api/v1/actions/{action_id}",
        json={"title": "Journalist released on bail, still at risk", "urgency": "standard"},
        headers=api.auth("staff"),
    )
    assert edited.status_code == 200, edited.text
    assert edited.json()["title"] == "Journalist released on bail, still at risk"
    assert edited.json()["urgency"] == "standard"
    assert edited.json()["content"] == created["content"]  # untouched fields stay

    published = await api.publish(action_id)
    assert published["status"] == "published"
    assert published["published_at"] is not None
    [(key, body)] = await outbox_messages(api)
    assert key == "action.published"
    event = events.ActionPublished.model_validate(body)
    assert str(event.action_id) == action_id
    assert event.reference == created["reference"]
    assert event.title == "Journalist released on bail, still at risk"
    assert event.urgency == "standard"
    assert event.audience.countries == ["GB", "IE"]
    assert set(event.content) == {"en", "fr"}
    assert event.content["en"].model_letter.startswith("I am writing")
    assert event.targets[0].email == "judiciary@example.org"

    for path, body_in in [
        (f"/api/v1/actions/{action_id}", {"title": "Too late"}),
        (f"/api/v1/actions/{action_id}/publish", None),
    ]:
        method = api.client.patch if body_in else api.client.post
        refused = await method(path, json=body_in, headers=api.auth("staff"))
        assert refused.status_code == 409, path

    update = await api.client.post(
        f"/api/v1/actions/{action_id}/updates",
        json={
            "kind": "further_information",
            "content": {"en": {"subject": "Moved to Evin prison", "body": "…", "sms": "Moved"}},
        },
        headers=api.auth("staff"),
    )
    assert update.status_code == 202, update.text
    update_id = update.json()["id"]

    closed = await api.client.post(
        f"/api/v1/actions/{action_id}/close",
        json={
            "outcome": "released",
            "content": {"en": {"subject": "Released!", "body": "Thank you.", "sms": "Released"}},
        },
        headers=api.auth("staff"),
    )
    assert closed.status_code == 200, closed.text
    assert closed.json()["status"] == "closed"
    assert closed.json()["outcome"] == "released"

    messages = await outbox_messages(api)
    assert [key for key, _ in messages] == ["action.published", "action.updated", "action.closed"]
    updated = events.ActionUpdated.model_validate(messages[1][1])
    assert str(updated.update_id) == update_id
    assert updated.kind == "further_information" and updated.default_language == "en"
    closed_event = events.ActionClosed.model_validate(messages[2][1])
    assert closed_event.outcome == "released"
    assert closed_event.content is not None and closed_event.content["en"].subject == "Released!"
    async with api.app.state.runtime.sessionmaker() as session:
        closing = await session.get(ActionUpdate, closed_event.update_id)
        assert closing is not None and closing.kind == "closed"

    after_close: list[tuple[str, dict[str, Any]]] = [
        (f"/api/v1/actions/{action_id}/close", {"outcome": "other"}),
        (
            f"/api/v1/actions/{action_id}/updates",
            {"kind": "further_information", "content": {"en": {"subject": "s", "sms": "t"}}},
        ),
    ]
    for path, body_in in after_close:
        refused = await api.client.post(path, json=body_in, headers=api.auth("staff"))
        assert refused.status_code == 409, path

    fetched = await api.client.get(f"/api/v1/actions/{action_id}", headers=api.auth("coordinator"))
    assert fetched.status_code == 200
    assert fetched.json()["status"] == "closed"
    assert len(await outbox_messages(api)) == 3  # refused requests wrote nothing


async def test_references_run_per_year_and_the_list_is_newest_first(api: Api) -> None:
    made = [await api.create(title=f"Case {n}") for n in range(1, 6)]
    numbers = [int(a["reference"].split()[1].split("/")[0]) for a in made]
    assert numbers == [1, 2, 3, 4, 5]
    year = made[0]["created_at"][2:4]
    assert all(a["reference"].endswith(f"/{year}") for a in made)

    first = await api.client.get("/api/v1/actions?limit=2", headers=api.auth("coordinator"))
    assert first.status_code == 200
    page = first.json()
    assert page["total"] == 5 and page["next_offset"] == 2
    assert [a["title"] for a in page["items"]] == ["Case 5", "Case 4"]
    last = await api.client.get("/api/v1/actions?limit=2&offset=4", headers=api.auth("coordinator"))
    assert [a["title"] for a in last.json()["items"]] == ["Case 1"]
    assert last.json()["next_offset"] is None

    await api.publish(made[0]["id"])
    drafts = await api.client.get("/api/v1/actions?status=draft", headers=api.auth("admin"))
    assert drafts.json()["total"] == 4


async def test_a_draft_cannot_be_closed_or_followed_up(api: Api) -> None:
    draft = await api.create()
    close = await api.client.post(
        f"/api/v1/actions/{draft['id']}/close",
        json={"outcome": "released"},
        headers=api.auth("staff"),
    )
    assert close.status_code == 409
    update = await api.client.post(
        f"/api/v1/actions/{draft['id']}/updates",
        json={
            "kind": "outcome",
            "outcome": "improved",
            "content": {"en": {"subject": "s", "sms": "t"}},
        },
        headers=api.auth("staff"),
    )
    assert update.status_code == 409
    assert await outbox_messages(api) == []


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("get", "", None),
        ("patch", "", {"title": "x"}),
        ("post", "/publish", None),
        ("post", "/close", {"outcome": "released"}),
        ("put", "/targets", {"targets": [{"name": "Minister"}]}),
        ("get", "/stats", None),
        ("get", "/stats.csv", None),
        ("get", "/stats/stream", None),
    ],
)
@pytest.mark.parametrize("action_id", ["8409277a-32e3-4996-b527-5c912296e1f4", "not-a-uuid", "1"])
async def test_unknown_action_is_404(
    sqlite_api: Api, method: str, suffix: str, body: dict[str, Any] | None, action_id: str
) -> None:
    role = "admin"
    request = getattr(sqlite_api.client, method)
    kwargs: dict[str, Any] = {"headers": sqlite_api.auth(role)}
    if body is not None:
        kwargs["json"] = body
    response = await request(f"/api/v1/actions/{action_id}{suffix}", **kwargs)
    assert response.status_code == 404, response.text


def _without(field: str) -> dict[str, Any]:
    action = sample_action()
    del action[field]
    return action


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_without("title"), "title"),
        (sample_action(title="   "), "title"),
        (sample_action(country="XX"), "country"),
        (sample_action(country="GBR"), "country"),
        (sample_action(country=7), "country"),
        (sample_action(urgency="whenever"), "urgency"),
        (sample_action(channels=[]), "channels"),
        (sample_action(channels=["email", "fax"]), "channels.1"),
        (sample_action(deadline="next week"), "deadline"),
        (sample_action(default_language="de"), "default_language"),
        (sample_action(default_language="english"), "default_language"),
        (sample_action(targets=[]), "targets"),
        (sample_action(targets=[{"title": "Minister"}]), "targets.0.name"),
        (sample_action(targets=[{"name": "M", "email": "not-an-email"}]), "targets.0.email"),
        (sample_action(content={}), "content"),
        (sample_action(content={"en": {"body": "no subject", "sms": "x"}}), "content.en.subject"),
        (sample_action(content={"eng": {"subject": "s", "sms": "x"}}), "content.eng.[key]"),
        (sample_action(content={"en": {"subject": "s"}}), "content"),  # SMS channel, no SMS text
        (sample_action(audience={"countries": ["ZZ"]}), "audience.countries.0"),
        (sample_action(audience={"languages": ["french"]}), "audience.languages.0"),
        (sample_action(themes=["Not a slug!"]), "themes.0"),
        (sample_action(colour="red"), "colour"),
    ],
)
async def test_invalid_action_is_422_naming_the_field(
    sqlite_api: Api, body: dict[str, Any], field: str
) -> None:
    response = await sqlite_api.client.post(
        "/api/v1/actions", json=body, headers=sqlite_api.auth("staff")
    )
    assert response.status_code == 422, response.text
    fields = {e["field"] for e in response.json()["errors"]}
    assert field in fields, fields


async def test_not_json_is_422_not_500(sqlite_api: Api) -> None:
    for body in (b"{", b"[]", b'"text"', b"\xff\xfe"):
        response = await sqlite_api.client.post(
            "/api/v1/actions",
            content=body,
            headers={**sqlite_api.auth("staff"), "Content-Type": "application/json"},
        )
        assert response.status_code == 422, body


async def test_country_and_languages_are_normalised(sqlite_api: Api) -> None:
    created = await sqlite_api.create(
        country="ir", audience={"countries": ["gb", "GB"], "languages": ["EN"]}
    )
    assert created["country"] == "IR"
    assert created["audience"] == {"countries": ["GB"], "themes": [], "languages": ["en"]}


async def test_patch_is_validated_as_a_whole(sqlite_api: Api) -> None:
    draft = await sqlite_api.create()
    path = f"/api/v1/actions/{draft['id']}"
    staff = sqlite_api.auth("staff")
    for body, field in [
        ({"country": "XX"}, "country"),
        ({"title": None}, "title"),
        ({"default_language": "de"}, "default_language"),
        ({"content": {"fr": draft["content"]["fr"]}}, "default_language"),  # en removed
        ({"status": "published"}, "status"),  # not editable
    ]:
        response = await sqlite_api.client.patch(path, json=body, headers=staff)
        assert response.status_code == 422, body
        assert field in {e["field"] for e in response.json()["errors"]}, response.json()
    unchanged = await sqlite_api.client.get(path, headers=sqlite_api.auth("coordinator"))
    assert unchanged.json()["country"] == "IR"
    assert unchanged.json()["status"] == "draft"

    switched = await sqlite_api.client.patch(
        path, json={"default_language": "fr", "channels": ["email"]}, headers=staff
    )
    assert switched.status_code == 200
    assert switched.json()["default_language"] == "fr"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "outcome", "content": {"en": {"subject": "s", "sms": "t"}}}, "outcome"),
        (
            {
                "kind": "further_information",
                "outcome": "released",
                "content": {"en": {"subject": "s", "sms": "t"}},
            },
            "outcome",
        ),
        ({"kind": "gossip", "content": {"en": {"subject": "s", "sms": "t"}}}, "kind"),
        ({"kind": "further_information", "content": {}}, "content"),
        (
            {"kind": "further_information", "content": {"fr": {"subject": "s", "sms": "t"}}},
            "content",
        ),
        ({"kind": "further_information", "content": {"en": {"subject": "s"}}}, "content"),
    ],
)
async def test_invalid_follow_up_is_422(sqlite_api: Api, body: dict[str, Any], field: str) -> None:
    action = await sqlite_api.create()
    await sqlite_api.publish(action["id"])
    response = await sqlite_api.client.post(
        f"/api/v1/actions/{action['id']}/updates", json=body, headers=sqlite_api.auth("staff")
    )
    assert response.status_code == 422, response.text
    assert field in {e["field"] for e in response.json()["errors"]}


async def test_an_outcome_follow_up_records_the_outcome(sqlite_api: Api) -> None:
    action = await sqlite_api.create(channels=["email"])
    await sqlite_api.publish(action["id"])
    response = await sqlite_api.client.post(
        f"/api/v1/actions/{action['id']}/updates",
        json={"kind": "outcome", "outcome": "charges_dropped", "content": {"en": {"subject": "s"}}},
        headers=sqlite_api.auth("admin"),
    )
    assert response.status_code == 202
    assert response.json()["outcome"] == "charges_dropped"
    fetched = await sqlite_api.client.get(
        f"/api/v1/actions/{action['id']}", headers=sqlite_api.auth("admin")
    )
    assert fetched.json()["outcome"] == "charges_dropped"
    assert fetched.json()["status"] == "published"


async def test_close_needs_a_known_outcome(sqlite_api: Api) -> None:
    action = await sqlite_api.create()
    await sqlite_api.publish(action["id"])
    for body in ({}, {"outcome": "freed"}, {"outcome": "released", "content": {"en": {}}}):
        response = await sqlite_api.client.post(
            f"/api/v1/actions/{action['id']}/close", json=body, headers=sqlite_api.auth("staff")
        )
        assert response.status_code == 422, body


async def test_targets_change_on_a_published_action_and_the_others_hear_of_it(api: Api) -> None:
    created = await api.create()
    action_id = created["id"]
    path = f"/api/v1/actions/{action_id}/targets"
    fixed = [{**created["targets"][0], "email": "judiciary-office@example.org"}]
    draft = await api.client.put(path, json={"targets": fixed}, headers=api.auth("staff"))
    assert draft.status_code == 200, draft.text
    assert draft.json()["targets"][0]["email"] == "judiciary-office@example.org"
    assert await outbox_messages(api) == []  # a draft tells no one

    await api.publish(action_id)
    fixed = [{"name": "Head of the Judiciary", "email": "head@judiciary.example.org"}]
    changed = await api.client.put(path, json={"targets": fixed}, headers=api.auth("admin"))
    assert changed.status_code == 200, changed.text
    assert changed.json()["targets"] == [
        {
            "name": "Head of the Judiciary",
            "title": None,
            "address": None,
            "email": "head@judiciary.example.org",
            "salutation": None,
        }
    ]
    assert changed.json()["status"] == "published"
    [_, (key, body)] = await outbox_messages(api)
    assert key == "action.targets_changed"
    event = events.ActionTargetsChanged.model_validate(body)
    assert str(event.action_id) == action_id
    assert [t.email for t in event.targets] == ["head@judiciary.example.org"]

    for bad, field in [
        ({"targets": []}, "targets"),
        ({"targets": [{"name": "M", "email": "not-an-email"}]}, "targets.0.email"),
        ({"targets": [{"email": "m@example.org"}]}, "targets.0.name"),
        ({"targets": [{"name": "M"}], "title": "x"}, "title"),
        ({}, "targets"),
    ]:
        refused = await api.client.put(path, json=bad, headers=api.auth("staff"))
        assert refused.status_code == 422, refused.text
        assert field in {e["field"] for e in refused.json()["errors"]}, bad

    closed = await api.client.post(
        f"/api/v1/actions/{action_id}/close",
        json={"outcome": "released"},
        headers=api.auth("staff"),
    )
    assert closed.status_code == 200
    late = await api.client.put(path, json={"targets": fixed}, headers=api.auth("staff"))
    assert late.status_code == 409


async def bounce(api: Api, action_id: str, address: str, name: str) -> None:
    """What the dispatcher reports when a target refuses a letter (queue publisher.targets)."""
    await BounceConsumer(api.app.state.database)(
        events.TargetBounced(
            action_id=uuid.UUID(action_id),
            letter_id=uuid.uuid4(),
            target_name=name,
            address=address,
            error_code="smtp:550",
        )
    )


async def bounce_rows(api: Api, action_id: str) -> dict[str, TargetBounce]:
    async with api.app.state.runtime.sessionmaker() as session:
        rows = await session.execute(
            select(TargetBounce).where(TargetBounce.action_id == uuid.UUID(action_id))
        )
        return {row.address: row for row in rows.scalars()}


async def test_replacing_a_bounced_address_marks_it_fixed(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    created = await api.create()
    action_id = created["id"]
    await api.publish(action_id)
    judge = created["targets"][0]
    await bounce(api, action_id, "Judiciary@example.org", judge["name"])
    [row] = (await bounce_rows(api, action_id)).values()
    assert row.address == "judiciary@example.org" and row.fixed_at is None

    path = f"/api/v1/actions/{action_id}/targets"
    new = "head.office@judiciary.example.org"
    with caplog.at_level(logging.INFO, logger="services.publisher.actions"):
        fixed = await api.client.put(
            path, json={"targets": [{**judge, "email": new}]}, headers=api.auth("staff")
        )
    assert fixed.status_code == 200, fixed.text
    row = (await bounce_rows(api, action_id))["judiciary@example.org"]
    assert row.fixed_at is not None and row.fixed_to == new
    [line] = [r for r in caplog.records if r.getMessage() == "action targets replaced"]
    assert line.__dict__["bounces_fixed"] == 1
    # Who did it goes to the audit log, not to the log line.
    audit = await api.client.get(
        "/api/v1/audit",
        params={"action_id": action_id, "event": "action.targets_changed"},
        headers=api.auth("admin"),
    )
    [entry] = audit.json()["items"]
    assert (entry["actor_kind"], entry["actor"]) == ("token", "test staff")
    assert entry["details"]["bounces_fixed"] == 1
    assert "example.org" not in json.dumps({k: str(v) for k, v in line.__dict__.items()})

    # A letter that left before the fix and bounces late: still fixed, the count goes on.
    await bounce(api, action_id, "judiciary@example.org", judge["name"])
    row = (await bounce_rows(api, action_id))["judiciary@example.org"]
    assert row.fixed_to == new and row.letters == 2

    # Changed again: the note follows the address letters go to now.
    newer = "head@judiciary.example.org"
    again = await api.client.put(
        path, json={"targets": [{**judge, "email": newer}]}, headers=api.auth("staff")
    )
    assert again.status_code == 200, again.text
    assert (await bounce_rows(api, action_id))["judiciary@example.org"].fixed_to == newer

    # Put back (the new one was wrong after all): the old warning is due again.
    back = await api.client.put(path, json={"targets": [judge]}, headers=api.auth("staff"))
    assert back.status_code == 200, back.text
    row = (await bounce_rows(api, action_id))["judiciary@example.org"]
    assert row.fixed_at is None and row.fixed_to is None

    # The target dropped its email altogether: fixed, with nowhere to send to.
    dropped = await api.client.put(
        path, json={"targets": [{**judge, "email": None}]}, headers=api.auth("staff")
    )
    assert dropped.status_code == 200, dropped.text
    row = (await bounce_rows(api, action_id))["judiciary@example.org"]
    assert row.fixed_at is not None and row.fixed_to is None
