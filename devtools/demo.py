"""``uanet up --demo``: seed the running stack the way real users would, through its public APIs.

Three subscribers sign up through the subscriptions API and confirm for real (the link in the
confirmation email from the in-process mail catcher; a ``YES`` reply through the SMS outbox). A
staff token publishes a sample urgent action in English and French; then the demo plays a few
responses back (delivery receipts, an ``SENT 2`` reply, a letter reported on the action page) so the
counts move within seconds. An admin token is printed to read them.

Everything here is best-effort: a step that cannot happen (mail sent to a real server, a service
that answers unexpectedly) is reported in one line and the rest goes on.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, Protocol

import httpx
import typer

from devtools.mailcatcher import CaughtMail, MailCatcher
from devtools.twilio_fake import FakeTwilio, SentSms
from shared.settings import Settings


class DemoStack(Protocol):
    """What the demo needs of a running stack (``devtools.up.Stack`` is one): the settings,
    the service URLs, and the inbox and SMS outbox it reads the confirmation links from."""

    settings: Settings
    catcher: MailCatcher | None
    outbox: FakeTwilio | None

    def local_url(self, service: str) -> str: ...


WAIT = 30.0


@dataclass(frozen=True)
class DemoSubscriber:
    name: str
    country: str
    language: str
    timezone: str
    channels: tuple[str, ...]
    email: str | None = None
    phone: str | None = None

    def signup(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": self.name,
            "country": self.country,
            "language": self.language,
            "timezone": self.timezone,
            "channels": list(self.channels),
            "themes": [],
            "frequency": "immediate",
        }
        if self.email:
            body["email"] = self.email
        if self.phone:
            body["phone"] = self.phone
        return body


def demo_subscribers(run: str | None = None, *, phones: bool = True) -> list[DemoSubscriber]:
    """Fresh addresses each run (a known address signing up again gets no new confirmation).

    Addresses are at example.net (reserved). Ofcom's drama range (+44 7700 900xxx) is not a valid
    number for libphonenumber, so the sign-up refuses it; the demo numbers are ordinary-looking
    mobiles and are only used with ``phones=True``, i.e. when SMS go to the in-process outbox and
    never to a phone.
    """
    run = run or secrets.token_hex(2)
    numbers = secrets.SystemRandom().sample(range(123000, 124000), 2)
    people = [
        DemoSubscriber(
            name="Ana Lima",
            email=f"ana.lima+{run}@example.net",
            country="GB",
            language="en",
            timezone="Europe/London",
            channels=("email",),
        ),
        DemoSubscriber(
            name="Camille Durand",
            email=f"camille.durand+{run}@example.net",
            phone=f"+447911{numbers[0]}" if phones else None,
            country="IE",
            language="fr",
            timezone="Europe/Dublin",
            channels=("email", "sms") if phones else ("email",),
        ),
    ]
    if phones:
        people.append(
            DemoSubscriber(
                name="Tom Okafor",
                phone=f"+447911{numbers[1]}",
                country="GB",
                language="en",
                timezone="Europe/London",
                channels=("sms",),
            )
        )
    return people


def sample_action(today: date | None = None) -> dict[str, Any]:
    """A sample urgent action in the shape of contract §3 (a fictional case)."""
    deadline = (today or date.today()) + timedelta(days=14)
    target = {
        "name": "Head of the Judiciary",
        "title": "Head of the Judiciary",
        "address": "c/o Embassy, 16 Prince's Gate, London SW7 1PT",
        "email": "judiciary@example.org",
        "salutation": "Dear Head of the Judiciary",
    }
    return {
        "title": "Journalist held incommunicado at risk of torture",
        "country": "IR",
        "themes": ["torture", "freedom-of-expression"],
        "urgency": "urgent",
        "channels": ["email", "sms"],
        "deadline": deadline.isoformat(),
        "default_language": "en",
        "audience": {"countries": ["GB", "IE"], "themes": [], "languages": []},
        "targets": [target],
        "content": {
            "en": {
                "subject": "Urgent Action: journalist at risk of torture",
                "summary": "Journalist Reza Karimi has been held incommunicado since his arrest "
                "last week and is at risk of torture.",
                "body": "Reza Karimi, a journalist, was arrested at his home after reporting on "
                "protests. His family has not been told where he is held.\n\n"
                "**Please write** to the Head of the Judiciary, urging the authorities to:\n\n"
                "- release him immediately and unconditionally;\n"
                "- protect him from torture and other ill-treatment;\n"
                "- give him access to his family and a lawyer of his choice.",
                "sms": "Journalist held incommunicado, at risk of torture. Act now:",
                "model_letter": "Dear Head of the Judiciary,\n\nI am writing to urge you to "
                "release Reza Karimi immediately and unconditionally, to protect him from "
                "torture, and to give him access to his family and a lawyer.\n\nYours sincerely,",
            },
            "fr": {
                "subject": "Action urgente : un journaliste risque la torture",
                "summary": "Le journaliste Reza Karimi est détenu au secret depuis son "
                "arrestation la semaine dernière et risque la torture.",
                "body": "Reza Karimi, journaliste, a été arrêté chez lui après avoir couvert des "
                "manifestations. Sa famille ne sait pas où il est détenu.\n\n"
                "**Écrivez** au responsable du pouvoir judiciaire pour demander aux autorités :\n\n"
                "- de le libérer immédiatement et sans condition ;\n"
                "- de le protéger de la torture et des mauvais traitements ;\n"
                "- de lui permettre de voir sa famille et un avocat de son choix.",
                "sms": "Un journaliste détenu au secret risque la torture. Agissez :",
                "model_letter": "Monsieur le Responsable du pouvoir judiciaire,\n\nJe vous "
                "demande de libérer Reza Karimi immédiatement et sans condition, de le protéger "
                "de la torture et de lui permettre de voir sa famille et un avocat.\n\n"
                "Veuillez agréer mes salutations distinguées,",
            },
        },
    }


def _say(message: str) -> None:
    typer.echo(f"demo: {message}")


def _link(mail: CaughtMail, path: str) -> str | None:
    return next((link for link in mail.links if path in link), None)


async def _best_effort(what: str, step: Awaitable[object]) -> bool:
    try:
        await step
        return True
    except TimeoutError:
        _say(f"{what}: nothing arrived within {WAIT:.0f}s")
    except (httpx.HTTPError, LookupError, ValueError) as exc:
        _say(f"{what}: {type(exc).__name__}: {exc}")
    return False


def demo_account(run: str | None = None) -> tuple[str, str]:
    """A console account's email and password for this demo run (development only: printed)."""
    run = run or secrets.token_hex(3)
    return f"demo-{run}@example.org", secrets.token_urlsafe(12)


async def run_demo(stack: DemoStack) -> None:
    from services.publisher.auth import create_api_token
    from services.publisher.staff import create_staff_user
    from shared.db import make_engine, make_sessionmaker

    settings = stack.settings
    engine = make_engine(settings.publisher_database_url)
    account_email, account_password = demo_account()
    try:
        sessions = make_sessionmaker(engine)
        staff_token = await create_api_token(sessions, role="staff", name="demo staff")
        admin_token = await create_api_token(sessions, role="admin", name="demo admin")
        # The action page asks for a console sign-in: one an admin can use for everything.
        await create_staff_user(
            sessions, email=account_email, role="admin", password=account_password
        )
    finally:
        await engine.dispose()

    # With a real Twilio account the demo must not text anyone: no phone numbers then.
    subscribers = demo_subscribers(phones=stack.outbox is not None)
    publisher = stack.local_url("publisher")
    subscriptions = stack.local_url("subscriptions")
    async with httpx.AsyncClient(timeout=15) as http:
        for person in subscribers:
            response = await http.post(f"{subscriptions}/api/v1/subscribers", json=person.signup())
            if response.status_code != 202:
                raise ValueError(f"sign-up answered {response.status_code}: {response.text[:200]}")
        _say(f"signed up {len(subscribers)} subscribers; confirming them…")
        await asyncio.gather(*(_confirm(stack, http, p) for p in subscribers))

        staff = {"Authorization": f"Bearer {staff_token}"}
        response = await http.post(
            f"{publisher}/api/v1/actions", json=sample_action(), headers=staff
        )
        if response.status_code != 201:
            raise ValueError(
                f"creating the action answered {response.status_code}: {response.text[:200]}"
            )
        action = response.json()
        response = await http.post(
            f"{publisher}/api/v1/actions/{action['id']}/publish", headers=staff
        )
        if response.status_code != 200:
            raise ValueError(f"publishing answered {response.status_code}: {response.text[:200]}")
        action = response.json()
        _say(f"published {action.get('reference', action['id'])}: {action['title']}")

        await asyncio.gather(*(_respond(stack, http, p) for p in subscribers))

        stats_url = (
            f"http://localhost:{settings.publisher_port}/api/v1/actions/{action['id']}/stats"
        )
        admin = {"Authorization": f"Bearer {admin_token}"}
        await asyncio.sleep(1.0)  # the tally consumes the events asynchronously
        response = await http.get(f"{publisher}/api/v1/actions/{action['id']}/stats", headers=admin)
        if response.status_code == 200:
            stats = response.json()
            sent = {c: d["sent"] for c, d in stats["deliveries"].items()}
            delivered = {c: d["delivered"] for c, d in stats["deliveries"].items()}
            _say(
                f"counts so far: recipients {stats['recipients']}, sent {sent}, "
                f"delivered {delivered}, people who acted {stats['responses']['people']}, "
                f"actions {stats['responses']['actions']} (the live counts go on updating)"
            )
    console = f"http://localhost:{settings.publisher_port}"
    typer.echo("")
    typer.echo(f"  action page   {console}/actions/{action['id']}")
    typer.echo(f"  sign in at    {console}/login (development only; a new account each run)")
    typer.echo(f"    email       {account_email}")
    typer.echo(f"    password    {account_password}")
    typer.echo(f"  stats         {stats_url}")
    typer.echo(f"  live counts   {stats_url}/stream")
    typer.echo("  admin token (store it; it is not shown again):")
    typer.echo(f"    {admin_token}")
    typer.echo(f'  try: curl -H "Authorization: Bearer {admin_token}" {stats_url}')
    typer.echo("")


async def _confirm(stack: DemoStack, http: httpx.AsyncClient, person: DemoSubscriber) -> None:
    if person.email:
        if stack.catcher is None:
            _say(f"{person.name}: mail goes to a real server; confirm by hand")
        else:
            await _best_effort(
                f"{person.name}'s confirmation email", _click_confirm(stack, http, person.email)
            )
    if person.phone and "sms" in person.channels:
        if stack.outbox is None:
            _say(f"{person.name}: SMS go through Twilio; reply YES by hand")
        else:
            await _best_effort(f"{person.name}'s confirmation SMS", _reply_yes(stack, person.phone))


async def _click_confirm(stack: DemoStack, http: httpx.AsyncClient, address: str) -> None:
    assert stack.catcher is not None
    mail = await stack.catcher.wait_for(lambda m: address in m.envelope_to, timeout=WAIT)
    link = _link(mail, "/confirm/")
    if link is None:
        raise LookupError("no /confirm/ link in the confirmation email")
    # The link shows a page with a button (a mail scanner following it confirms nothing);
    # pressing the button is the page's POST.
    response = await http.post(link, follow_redirects=True)
    response.raise_for_status()


async def _reply_yes(stack: DemoStack, phone: str) -> None:
    outbox = stack.outbox
    assert outbox is not None
    sms = await outbox.wait_for(lambda m: m.to == phone, timeout=WAIT)
    assert outbox.inbound_url is not None
    status = await outbox.send_inbound_sms(
        outbox.inbound_url, from_=phone, body="YES", to=sms.from_ or outbox.phone_number
    )
    if status >= 300:
        raise ValueError(f"the inbound SMS webhook answered {status}")


def _is_alert_sms(message: SentSms, phone: str) -> bool:
    texts = [content["sms"] for content in sample_action()["content"].values()]
    # A prefix: the dispatcher may shorten the text to make room for the link and STOP line.
    return message.to == phone and any(text[:24] in message.body for text in texts)


async def _respond(stack: DemoStack, http: httpx.AsyncClient, person: DemoSubscriber) -> None:
    """Play a subscriber's side after the alert: delivery receipts and what they did."""
    outbox = stack.outbox
    phone = person.phone
    if phone and "sms" in person.channels and outbox is not None:

        def alert(m: SentSms) -> bool:
            return _is_alert_sms(m, phone)

        async def by_sms() -> None:
            assert outbox is not None and outbox.inbound_url is not None
            sms = await outbox.wait_for(alert, timeout=WAIT)
            if sms.status_callback:
                await outbox.send_status_callback(sms.sid, "delivered")
            if person.email is None:  # the SMS-only subscriber reports by SMS
                await outbox.send_inbound_sms(
                    outbox.inbound_url,
                    from_=phone,
                    body="SENT 2",
                    to=sms.from_ or outbox.phone_number,
                )

        await _best_effort(f"{person.name}'s alert SMS", by_sms())
    if person.email and stack.catcher is not None:
        address = person.email

        async def by_email() -> None:
            assert stack.catcher is not None
            mail = await stack.catcher.wait_for(
                lambda m: address in m.envelope_to and _link(m, "/act/") is not None,
                timeout=WAIT,
            )
            act = _link(mail, "/act/")
            assert act is not None
            response = await http.post(act, json={"kind": "letter", "count": 1})
            if response.status_code >= 300:
                raise ValueError(f"reporting answered {response.status_code}")

        await _best_effort(f"{person.name}'s alert email", by_email())
