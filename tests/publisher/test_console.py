"""The staff console over HTTP: sign-in, sessions, CSRF, roles, compose, preview, publish,
follow-ups, the dashboard's chart and stream, and the overview."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from services.publisher.auth import create_api_token, hash_token, revoke_api_token
from services.publisher.bounces import BounceConsumer
from services.publisher.charts import Minute, activity_svg
from services.publisher.models import Outbox, StaffUser, UrgentAction
from services.publisher.preview import sms_preview
from services.publisher.tally import TallyConsumer
from shared import events
from tests.publisher.conftest import Api
from tests.publisher.console_support import (
    PASSWORD,
    Browser,
    compose_fields,
    make_user,
)


@pytest.fixture
async def staff(sqlite_api: Api) -> AsyncIterator[Browser]:
    browser = Browser(sqlite_api.app)
    await browser.sign_in(await make_user(sqlite_api.app, "staff"))
    yield browser
    await browser.aclose()


@pytest.fixture
async def coordinator(sqlite_api: Api) -> AsyncIterator[Browser]:
    browser = Browser(sqlite_api.app)
    await browser.sign_in(await make_user(sqlite_api.app, "coordinator"))
    yield browser
    await browser.aclose()


async def compose(browser: Browser, **overrides: str) -> str:
    await browser.get("/actions/new")
    response = await browser.post("/actions/new", compose_fields(**overrides))
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert re.fullmatch(r"/actions/[0-9a-f-]{36}", location)
    return location.rsplit("/", 1)[1]


async def outbox_keys(api: Api) -> list[str]:
    async with api.app.state.runtime.sessionmaker() as session:
        rows = (await session.execute(select(Outbox).order_by(Outbox.created_at))).scalars()
        return [row.routing_key for row in rows]


# ---- signing in ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/actions/new",
        "/overview",
        "/actions/0ccb3af3-197b-4e6e-8a80-a261dc4a5288",
        "/actions/x/preview",
    ],
)
async def test_signed_out_visitors_are_sent_to_the_sign_in_page(sqlite_api: Api, path: str) -> None:
    response = await sqlite_api.client.get(path)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")
    page = await sqlite_api.client.get("/login")
    assert page.status_code == 200
    assert 'name="email"' in page.text and 'name="password"' in page.text


async def test_sign_in_sets_a_safe_session_cookie_and_sign_out_ends_it(sqlite_api: Api) -> None:
    email = await make_user(sqlite_api.app, "staff")
    browser = Browser(sqlite_api.app)
    try:
        response = await browser.sign_in(email.upper())  # email is case-insensitive
        assert response.status_code == 303 and response.headers["location"] == "/"
        cookie = response.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
        assert "Secure" not in cookie  # plain http here; https requests get Secure
        home = await browser.get("/")
        assert home.status_code == 200 and email in home.text

        assert (await browser.post("/logout", {})).status_code == 303
        assert (await browser.get("/")).status_code == 303
    finally:
        await browser.aclose()


async def test_wrong_password_and_unknown_email_get_the_same_answer(sqlite_api: Api) -> None:
    email = await make_user(sqlite_api.app, "staff")
    browser = Browser(sqlite_api.app)
    try:
        wrong = await browser.sign_in(email, "not the password at all")
        unknown = await browser.sign_in("nobody@example.org", "not the password at all")
        assert wrong.status_code == unknown.status_code == 401
        message = "That email and password do not match an account."
        assert message in wrong.text and message in unknown.text
        assert (await browser.get("/")).status_code == 303
    finally:
        await browser.aclose()


async def test_form_posts_without_a_valid_csrf_token_get_403(
    sqlite_api: Api, staff: Browser
) -> None:
    action_id = await compose(staff)
    posts = [
        ("/actions/new", compose_fields()),
        (f"/actions/{action_id}/edit", compose_fields()),
        (f"/actions/{action_id}/publish", [("confirm", "yes")]),
        (
            f"/actions/{action_id}/targets/fix",
            [("old_address", "judiciary@example.org"), ("new_address", "x@example.org")],
        ),
        ("/logout", []),
    ]
    for path, fields in posts:
        missing = await staff.post(path, fields, csrf=False)
        assert missing.status_code == 403, path
        forged = await staff.post(path, [*fields, ("csrf_token", "forged")], csrf=False)
        assert forged.status_code == 403, path
    # The sign-in form too, from a fresh visitor.
    visitor = Browser(sqlite_api.app)
    try:
        await visitor.get("/login")
        login = await visitor.post(
            "/login", {"email": "staff@example.org", "password": PASSWORD}, csrf=False
        )
        assert login.status_code == 403
    finally:
        await visitor.aclose()
    async with sqlite_api.app.state.runtime.sessionmaker() as session:
        action = await session.get(UrgentAction, uuid.UUID(action_id))
        assert action is not None and action.status == "draft"


async def test_a_session_cookie_signed_with_another_key_is_no_session(sqlite_api: Api) -> None:
    client = sqlite_api.client
    client.cookies.set("uanet_console", "eyJjIjoieCIsInUiOjF9.forged.signature")
    assert (await client.get("/")).status_code == 303


# ---- roles -------------------------------------------------------------------------------------


async def test_coordinators_read_but_do_not_write(staff: Browser, coordinator: Browser) -> None:
    action_id = await compose(staff)
    for path in ("/", "/overview", f"/actions/{action_id}", f"/actions/{action_id}/preview"):
        assert (await coordinator.get(path)).status_code == 200, path
    for path in ("/actions/new", f"/actions/{action_id}/edit", f"/actions/{action_id}/publish"):
        assert (await coordinator.get(path)).status_code == 403, path
    await coordinator.get("/")
    refused = await coordinator.post(f"/actions/{action_id}/publish", {"confirm": "yes"})
    assert refused.status_code == 403
    fix = {"old_address": "judiciary@example.org", "new_address": "x@example.org"}
    assert (await coordinator.post(f"/actions/{action_id}/targets/fix", fix)).status_code == 403
    page = await coordinator.get(f"/actions/{action_id}")
    assert "Publish…" not in page.text and "New urgent action" not in page.text


# ---- compose -----------------------------------------------------------------------------------


async def test_compose_saves_a_draft_in_two_languages(sqlite_api: Api, staff: Browser) -> None:
    action_id = await compose(staff)
    response = await sqlite_api.client.get(
        f"/api/v1/actions/{action_id}", headers=sqlite_api.auth("coordinator")
    )
    action = response.json()
    assert action["status"] == "draft"
    assert action["title"] == "Journalist held incommunicado at risk of torture"
    assert action["themes"] == ["torture", "freedom-of-expression"]
    assert action["channels"] == ["email", "sms"]
    assert action["audience"] == {"countries": ["GB", "IE"], "themes": [], "languages": []}
    assert action["targets"][0]["email"] == "judiciary@example.org"
    assert set(action["content"]) == {"en", "fr"}
    assert action["content"]["fr"]["summary"] == "Résumé."
    assert action["deadline"] == "2026-12-20"

    page = await staff.get(f"/actions/{action_id}")
    assert page.status_code == 200 and action["reference"] in page.text
    assert "<strong>bold</strong>" in page.text  # the Markdown body, rendered


async def test_editing_a_draft_changes_it(sqlite_api: Api, staff: Browser) -> None:
    action_id = await compose(staff)
    form = await staff.get(f"/actions/{action_id}/edit")
    assert 'value="Journalist held incommunicado at risk of torture"' in form.text
    saved = await staff.post(f"/actions/{action_id}/edit", compose_fields(title="A new title"))
    assert saved.status_code == 303
    async with sqlite_api.app.state.runtime.sessionmaker() as session:
        action = await session.get(UrgentAction, uuid.UUID(action_id))
        assert action is not None and action.title == "A new title"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"title": "  "}, "title"),
        ({"country": "XX"}, "country"),
        ({"deadline": "next tuesday"}, "deadline"),
        ({"urgency": "whenever"}, "urgency"),
        ({"targets-0-email": "not-an-address"}, "targets-0-email"),
        ({"targets-0-name": "", "targets-0-title": "Minister"}, "targets-0-name"),
        ({"content-fr-subject": ""}, "content-fr-subject"),
        ({"content-fr-sms": ""}, "content"),
        ({"audience_countries": "GB, Narnia"}, "audience_countries"),
        ({"themes": "Not A Slug!"}, "themes"),
        ({"default_language": "de"}, "default_language"),
    ],
)
async def test_invalid_fields_are_shown_next_to_the_field(
    staff: Browser, overrides: dict[str, str], field: str
) -> None:
    await staff.get("/actions/new")
    response = await staff.post("/actions/new", compose_fields(**overrides))
    assert response.status_code == 422
    assert f'id="err-{field}"' in response.text
    assert "The draft was not saved" in response.text
    # What was typed is kept, so nothing is lost.
    assert "Head of the Judiciary" in response.text or field.startswith("targets")


async def test_junk_forms_never_give_a_500(staff: Browser) -> None:
    await staff.get("/actions/new")
    junk: list[list[tuple[str, str]]] = [
        [],
        [("target_count", "999999999")],
        [("target_count", "-4"), ("languages", "../../etc"), ("op", "remove_target:abc")],
        [("languages", "EN"), ("op", "remove_language:zz")],
        [("channels", "fax"), ("title", "x" * 50_000), ("op", "save")],
        [("op", "add_language"), ("new_language", "<script>")],
    ]
    for fields in junk:
        response = await staff.post("/actions/new", fields)
        assert response.status_code in (200, 422), fields
        assert "<script>" not in response.text.replace('src="/static/console.js"', "")
    raw = await staff.client.post(
        "/actions/new", content=b"\xff\xfe\x00", headers={"Content-Type": "multipart/form-data"}
    )
    assert 400 <= raw.status_code < 500
    assert (await staff.get("/actions/not-a-uuid")).status_code == 404
    assert (await staff.get(f"/actions/{uuid.uuid4()}/preview")).status_code == 404


async def test_target_rows_and_language_tabs_are_added_and_removed_without_script(
    staff: Browser,
) -> None:
    await staff.get("/actions/new")
    fields = [f for f in compose_fields() if f[0] != "op"]
    added = await staff.post("/actions/new", [*fields, ("op", "add_target")])
    assert added.status_code == 200 and 'name="targets-1-name"' in added.text
    language = await staff.post(
        "/actions/new", [*fields, ("op", "add_language"), ("new_language", "ES")]
    )
    assert 'name="content-es-subject"' in language.text
    removed = await staff.post("/actions/new", [*fields, ("op", "remove_language:fr")])
    assert 'name="content-fr-subject"' not in removed.text
    assert 'name="content-en-subject"' in removed.text
    bad = await staff.post("/actions/new", [*fields, ("op", "add_language"), ("new_language", "x")])
    assert 'id="err-new_language"' in bad.text


async def test_staff_markdown_cannot_inject_script(staff: Browser) -> None:
    action_id = await compose(
        staff,
        **{
            "content-en-body": "<script>alert(1)</script> [x](javascript:alert(1)) **ok**",
            "title": "<img src=x onerror=alert(1)>",
        },
    )
    page = await staff.get(f"/actions/{action_id}")
    assert "<script>alert(1)</script>" not in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert 'href="javascript:' not in page.text
    assert "<img src=x" not in page.text
    assert "<strong>ok</strong>" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'self'" in policy
    assert "unsafe-inline" not in policy.split("script-src")[1].split(";")[0]


# ---- preview and publish -----------------------------------------------------------------------


def test_sms_size_figures() -> None:
    assert (sms_preview("a" * 160).segments, sms_preview("a" * 160).encoding) == (1, "GSM-7")
    assert sms_preview("a" * 161).segments == 2
    ucs2 = sms_preview("Zażółć " + "a" * 63)
    assert (ucs2.encoding, ucs2.units, ucs2.segments) == ("UCS-2", 70, 1)
    assert sms_preview("Zażółć " + "a" * 64).segments == 2


async def test_preview_shows_each_language_as_subscribers_get_it(staff: Browser) -> None:
    action_id = await compose(staff, **{"content-fr-sms": "Journaliste en danger ✊ agissez"})
    page = await staff.get(f"/actions/{action_id}/preview")
    assert page.status_code == 200
    text = page.text
    assert text.count('<iframe class="email-frame" sandbox=""') == 2
    assert "Urgent Action: journalist at risk of torture" in text
    assert "Action urgente : journaliste en danger" in text
    # The email HTML is inside srcdoc, escaped: it cannot break out of the attribute.
    assert 'srcdoc="&lt;!doctype html&gt;' in text
    encodings = re.findall(r"data-sms-encoding>([^<]+)<", text)
    assert encodings == ["GSM-7", "UCS-2"]  # en first (the default), then fr with an emoji
    segments = [int(n) for n in re.findall(r"data-sms-segments[^>]*>(\d+)<", text)]
    lengths = [int(n) for n in re.findall(r"data-sms-length>(\d+)<", text)]
    assert segments[0] == 1 and lengths[0] <= 160
    assert segments[1] == 2 and lengths[1] > 70  # the link and opt-out make it long
    assert "Reply STOP" in text  # the opt-out line the dispatcher adds


async def test_publishing_needs_a_confirmation_and_writes_the_event(
    sqlite_api: Api, staff: Browser
) -> None:
    action_id = await compose(staff)
    confirm = await staff.get(f"/actions/{action_id}/publish")
    assert confirm.status_code == 200 and "Yes, publish" in confirm.text
    unconfirmed = await staff.post(f"/actions/{action_id}/publish", {})
    assert unconfirmed.headers["location"] == f"/actions/{action_id}/publish"
    assert "action.published" not in await outbox_keys(sqlite_api)

    done = await staff.post(f"/actions/{action_id}/publish", {"confirm": "yes"})
    assert done.status_code == 303 and done.headers["location"] == f"/actions/{action_id}"
    assert (await outbox_keys(sqlite_api)).count("action.published") == 1
    async with sqlite_api.app.state.runtime.sessionmaker() as session:
        row = (
            await session.execute(select(Outbox).where(Outbox.routing_key == "action.published"))
        ).scalar_one()
    published = events.ActionPublished.model_validate_json(row.body)
    assert str(published.action_id) == action_id and set(published.content) == {"en", "fr"}

    again = await staff.post(f"/actions/{action_id}/publish", {"confirm": "yes"})
    assert again.status_code == 409
    assert (await staff.get(f"/actions/{action_id}/edit")).status_code == 409


async def test_follow_up_and_close_from_the_action_page(sqlite_api: Api, staff: Browser) -> None:
    action_id = await compose(staff)
    await staff.get(f"/actions/{action_id}/publish")
    await staff.post(f"/actions/{action_id}/publish", {"confirm": "yes"})
    await staff.get(f"/actions/{action_id}")

    missing = await staff.post(f"/actions/{action_id}/updates", {"kind": "outcome"})
    assert missing.status_code == 422 and 'id="err-update-outcome"' in missing.text
    no_sms = await staff.post(
        f"/actions/{action_id}/updates",
        {"kind": "further_information", "update-en-subject": "News", "update-en-body": "b"},
    )
    assert no_sms.status_code == 422 and 'id="err-update-content"' in no_sms.text
    sent = await staff.post(
        f"/actions/{action_id}/updates",
        {
            "kind": "further_information",
            "update-en-subject": "News",
            "update-en-body": "He was moved.",
            "update-en-sms": "He was moved.",
        },
    )
    assert sent.status_code == 303
    assert "action.updated" in await outbox_keys(sqlite_api)

    await staff.get(f"/actions/{action_id}")
    no_outcome = await staff.post(f"/actions/{action_id}/close", {})
    assert no_outcome.status_code == 422 and 'id="err-close-outcome"' in no_outcome.text
    closed = await staff.post(f"/actions/{action_id}/close", {"close-outcome": "released"})
    assert closed.status_code == 303
    assert "action.closed" in await outbox_keys(sqlite_api)
    page = await staff.get(f"/actions/{action_id}")
    assert "Closed" in page.text and "Released" in page.text


# ---- bounced target addresses ------------------------------------------------------------------


async def test_staff_fix_a_bounced_address_from_the_warning(
    sqlite_api: Api, staff: Browser, coordinator: Browser
) -> None:
    action_id = (await sqlite_api.publish((await sqlite_api.create())["id"]))["id"]
    old, new = "judiciary@example.org", "head.office@judiciary.example.org"
    await BounceConsumer(sqlite_api.app.state.database)(
        events.TargetBounced(
            action_id=uuid.UUID(action_id),
            letter_id=uuid.uuid4(),
            target_name="Head of the Judiciary",
            address=old,
            error_code="smtp:550",
        )
    )
    seen = await coordinator.get(f"/actions/{action_id}")
    assert "data-bounces" in seen.text and "data-fix=" not in seen.text  # reads, no form
    page = await staff.get(f"/actions/{action_id}")
    assert f'data-bounce="{old}"' in page.text and f'data-fix="{old}"' in page.text

    fix_url = f"/actions/{action_id}/targets/fix"
    forged = await staff.post(fix_url, {"old_address": old, "new_address": new}, csrf=False)
    assert forged.status_code == 403
    for typo, message in [
        ("head.office@", "Not a valid email address"),
        ("", "Enter the new email address"),
        (old.upper(), "That is the address that bounced"),
    ]:
        refused = await staff.post(fix_url, {"old_address": old, "new_address": typo})
        assert refused.status_code == 422, typo
        assert 'id="err-fix-new_address"' in refused.text and message in refused.text, typo
        assert 'aria-invalid="true"' in refused.text and "data-bounces" in refused.text
    assert "action.targets_changed" not in await outbox_keys(sqlite_api)

    done = await staff.post(fix_url, {"old_address": old, "new_address": new})
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/actions/{action_id}?notice=target"
    assert (await outbox_keys(sqlite_api)).count("action.targets_changed") == 1
    after = await staff.get(done.headers["location"])
    assert "data-bounces" not in after.text and "data-fix=" not in after.text
    note = after.text.split("data-fixed-bounces")[1].split("</ul>")[0]
    assert f"&lt;{old}&gt;" in note and f"fixed: now sent to &lt;{new}&gt;" in note
    async with sqlite_api.app.state.runtime.sessionmaker() as session:
        action = await session.get(UrgentAction, uuid.UUID(action_id))
        assert action is not None and action.targets[0]["email"] == new
        assert action.targets[0]["salutation"] == "Dear Head of the Judiciary"  # the rest kept

    # The same form again (a second tab): the address is gone, said next to the field.
    stale = await staff.post(fix_url, {"old_address": old, "new_address": new})
    assert stale.status_code == 422 and "no longer among the targets" in stale.text


# ---- the dashboard -----------------------------------------------------------------------------


async def _published(sqlite_api: Api) -> str:
    action = await sqlite_api.publish((await sqlite_api.create())["id"])
    action_id: str = action["id"]
    return action_id


async def test_the_chart_draws_the_running_totals_from_the_tally(
    sqlite_api: Api, coordinator: Browser
) -> None:
    action_id = await _published(sqlite_api)
    tally: TallyConsumer = sqlite_api.app.state.tally
    uid = uuid.UUID(action_id)
    await tally(
        events.DeliveriesReported(action_id=uid, message_kind="alert", channel="email", sent=40)
    )
    await tally(
        events.ResponseRecorded(
            action_id=uid, subscriber_id=uuid.uuid4(), kind="letter", count=3, country="GB"
        )
    )
    await tally(
        events.ResponseRecorded(
            action_id=uid, subscriber_id=uuid.uuid4(), kind="call", count=2, country="IE"
        )
    )
    response = await coordinator.get(f"/actions/{action_id}/chart.svg")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    svg = response.text
    assert svg.startswith("<svg") and "<script" not in svg
    assert 'data-series="sent" data-total="40"' in svg
    assert 'data-series="actions" data-total="5"' in svg

    page = await coordinator.get(f"/actions/{action_id}")
    assert 'data-stat="responses.actions" id="actions-total">5<' in page.text
    assert f'href="/actions/{action_id}/stats.csv"' in page.text
    export = await coordinator.get(f"/actions/{action_id}/stats.csv")
    assert export.status_code == 200 and "TOTAL" in export.text


def test_activity_svg_scales_and_thins_long_series() -> None:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    buckets = [
        Minute(start + timedelta(minutes=m), sent=10, delivered=1, actions=m % 3)
        for m in range(0, 20_000, 7)
    ]
    svg = activity_svg(buckets, start=start, end=start + timedelta(days=14))
    assert svg.count(" L") < 3 * 260  # thinned to a drawable number of points
    assert f'data-total="{10 * len(buckets)}"' in svg
    empty = activity_svg([], start=start, end=start)
    assert "No activity yet" in empty


async def test_the_stream_takes_the_session_cookie(sqlite_api: Api, coordinator: Browser) -> None:
    action_id = await _published(sqlite_api)
    url = f"/api/v1/actions/{action_id}/stats/stream"
    assert (await sqlite_api.client.get(url)).status_code == 401  # neither cookie nor token

    import uvicorn

    config = uvicorn.Config(sqlite_api.app, host="127.0.0.1", port=0, lifespan="off")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        cookies = dict(coordinator.client.cookies.items())
        async with (
            httpx.AsyncClient(timeout=10, cookies=cookies) as client,
            client.stream("GET", f"http://127.0.0.1:{port}{url}") as response,
        ):
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    assert json.loads(line[6:])["action_id"] == action_id
                    break
    finally:
        server.should_exit = True
        await task


async def test_overview_counts_this_months_actions(sqlite_api: Api, coordinator: Browser) -> None:
    action_id = await _published(sqlite_api)
    await sqlite_api.create()  # a draft: not in the figures
    tally: TallyConsumer = sqlite_api.app.state.tally
    uid = uuid.UUID(action_id)
    await tally(
        events.AudienceCounted(action_id=uid, recipients={"email": 8}, by_country={"GB": 8})
    )
    await tally(
        events.ResponseRecorded(
            action_id=uid, subscriber_id=uuid.uuid4(), kind="letter", count=2, country="GB"
        )
    )
    page = await coordinator.get("/overview")
    assert page.status_code == 200
    figures = dict(re.findall(r'data-overview="(\w+)">([^<]+)<', page.text))
    assert figures == {"published": "1", "reached": "8", "people": "1", "rate": "12.5%"}
    assert "<td>GB</td>" in page.text


# ---- API tokens travel to subscriptions; staff accounts from the command line -------------------


async def test_token_issue_and_revoke_write_events_in_the_outbox(sqlite_api: Api) -> None:
    sessionmaker = sqlite_api.app.state.runtime.sessionmaker
    token = await create_api_token(sessionmaker, role="admin", name="ops")
    async with sessionmaker() as session:
        rows = (await session.execute(select(Outbox))).scalars().all()
    issued = [
        events.ApiTokenIssued.model_validate_json(r.body)
        for r in rows
        if r.routing_key == "token.issued"
    ]
    mine = [e for e in issued if e.name == "ops"]
    assert len(mine) == 1 and mine[0].role == "admin"
    assert mine[0].token_hash == hash_token(token)
    assert await revoke_api_token(sessionmaker, name="ops") == 1
    async with sessionmaker() as session:
        revoked = (
            await session.execute(select(Outbox).where(Outbox.routing_key == "token.revoked"))
        ).scalar_one()
    assert events.ApiTokenRevoked.model_validate_json(revoked.body).token_id == mine[0].token_id


def test_users_create_reads_the_password_from_stdin(sqlite_publisher_url: str) -> None:
    from uanet_cli.main import _register_optional, app

    _register_optional()
    runner = CliRunner()
    env = {"UANET_PUBLISHER_DATABASE_URL": sqlite_publisher_url}
    args = ["users", "create", "--email", "Coord@Example.org", "--role", "coordinator"]
    created = runner.invoke(app, args, input=PASSWORD + "\n", env=env)
    assert created.exit_code == 0, created.output
    assert PASSWORD not in created.output
    again = runner.invoke(app, args, input=PASSWORD + "\n", env=env)
    assert again.exit_code == 2
    short = runner.invoke(
        app,
        ["users", "create", "--email", "a@example.org", "--role", "staff"],
        input="short\n",
        env=env,
    )
    assert short.exit_code == 2
    bad_role = runner.invoke(
        app, ["users", "create", "--email", "a@example.org", "--role", "root"], input="x\n"
    )
    assert bad_role.exit_code == 2

    async def stored() -> StaffUser:
        from shared.db import make_engine, make_sessionmaker

        engine = make_engine(sqlite_publisher_url)
        try:
            async with make_sessionmaker(engine)() as session:
                return (await session.execute(select(StaffUser))).scalar_one()
        finally:
            await engine.dispose()

    user = asyncio.run(stored())
    assert user.email == "coord@example.org" and user.role == "coordinator"
    assert user.password_hash.startswith("$argon2id$") and PASSWORD not in user.password_hash
