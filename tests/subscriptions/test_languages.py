"""The service's own words in English, French, Spanish and Arabic: catalogues complete and up to
date, pages and SMS answers in the visitor's or subscriber's language, Arabic right to left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from babel.messages.pofile import read_po
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.web import LOCALE_DIR, SERVICE_DIR, make_renderer
from shared.i18n import Translations, missing_translations, parse_accept_language
from tests.subscriptions.conftest import add_subscriber, twilio_headers

LANGUAGES = ("fr", "es", "ar")


def catalogue_ids(path: Path) -> set[str | tuple[str, ...]]:
    with path.open("rb") as handle:
        return {m.id for m in read_po(handle) if m.id}


def test_every_text_is_translated_in_every_language() -> None:
    template = catalogue_ids(LOCALE_DIR / "messages.pot")
    assert len(template) > 50
    for language in LANGUAGES:
        po_file = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
        ids = [m if isinstance(m, str) else m[0] for m in template]
        assert missing_translations(po_file, ids) == [], language
        assert catalogue_ids(po_file) >= template, language


def test_the_template_catalogue_holds_every_text_of_the_code(tmp_path: Path) -> None:
    """A text added to a page without running ``pybabel extract`` fails here."""
    extracted = tmp_path / "messages.pot"
    subprocess.run(
        [
            str(Path(sys.executable).parent / "pybabel"),
            "extract",
            "-F",
            "babel.cfg",
            "-o",
            str(extracted),
            ".",
        ],
        cwd=SERVICE_DIR,
        check=True,
        capture_output=True,
    )
    assert catalogue_ids(extracted) == catalogue_ids(LOCALE_DIR / "messages.pot")


def test_accept_language_is_read_by_preference() -> None:
    assert parse_accept_language("fr-CH, fr;q=0.9, en;q=0.8, de;q=0.7, *;q=0.5") == [
        "fr",
        "fr",
        "en",
        "de",
    ]
    assert parse_accept_language("en;q=0.2, ar") == ["ar", "en"]
    assert parse_accept_language("es;q=0, en;q=bogus, ;;, x") == ["x"]
    translations = Translations.load(LOCALE_DIR)
    assert translations.negotiate(None, "de-DE, es;q=0.5") == "es"
    assert translations.negotiate("ar", "fr") == "ar"
    assert translations.negotiate("xx", None) == "en"


def test_plural_answers_follow_each_language() -> None:
    renderer = make_renderer()

    def counted(language: str, count: int) -> str:
        return renderer.sms(language, "reported.txt", {"count": count, "reference": "UA 1/26"})

    assert counted("en", 1) == "Thank you! We counted 1 action for UA 1/26."
    assert counted("en", 3) == "Thank you! We counted 3 actions for UA 1/26."
    assert counted("fr", 2) == "Merci ! Nous avons compté 2 actions pour UA 1/26."
    assert counted("ar", 1) == "شكرًا! احتسبنا تحركًا واحدًا لـ UA 1/26."
    assert counted("ar", 2) == "شكرًا! احتسبنا تحركين لـ UA 1/26."
    assert counted("ar", 11) == "شكرًا! احتسبنا 11 تحركًا لـ UA 1/26."


async def test_sign_up_page_speaks_the_visitors_language(client: httpx.AsyncClient) -> None:
    english = await client.get("/signup")
    assert '<html lang="en" dir="ltr">' in english.text
    assert "Get Urgent Action alerts" in english.text

    french = await client.get("/signup", headers={"Accept-Language": "fr-FR,fr;q=0.9,en;q=0.5"})
    assert '<html lang="fr" dir="ltr">' in french.text
    assert "Recevez les alertes Actions urgentes" in french.text
    assert french.headers["content-language"] == "fr"
    assert '<option value="FR" selected>' not in french.text
    assert ">France</option>" in french.text  # country names in French

    spanish = await client.get("/signup?lang=es", headers={"Accept-Language": "fr"})
    assert "Recibe las alertas de Acciones Urgentes" in spanish.text
    assert 'action="/api/v1/subscribers?lang=es"' in spanish.text

    arabic = await client.get("/signup?lang=ar")
    assert '<html lang="ar" dir="rtl">' in arabic.text
    assert "تلقَّ تنبيهات التحركات العاجلة" in arabic.text
    # Every field has a label tied to it.
    for field in ("name", "email", "phone", "country", "language", "timezone", "themes"):
        assert f'<label for="{field}">' in arabic.text, field
        assert f'id="{field}"' in arabic.text, field


async def test_validation_messages_on_the_form_are_translated(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/subscribers?lang=fr",
        data={"email": "pas-une-adresse", "country": "FR", "channels": "email"},
    )
    assert response.status_code == 422
    assert '<html lang="fr" dir="ltr">' in response.text
    assert "Merci d’indiquer une adresse email valide" in response.text
    assert 'href="#email"' in response.text
    assert 'value="pas-une-adresse"' in response.text  # what was typed stays in the form

    arabic = await client.post(
        "/api/v1/subscribers?lang=ar", data={"email": "ana@example.net", "country": "ZZ"}
    )
    assert arabic.status_code == 422
    assert "يرجى اختيار البلد الذي تعيش فيه." in arabic.text


async def test_pages_of_a_subscriber_follow_their_language(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    response = await client.post(
        "/api/v1/subscribers",
        json={"email": "nadia@example.net", "country": "LB", "language": "ar"},
    )
    assert response.status_code == 202
    from tests.subscriptions.conftest import outbox, path_of

    [message] = await outbox(sessionmaker, "dispatch.message")
    assert message["language"] == "ar"
    asked = await client.get(path_of(message["context"]["confirm_url"]))
    assert '<html lang="ar" dir="rtl">' in asked.text
    assert "نعم، أرسلوا إليّ تنبيهات التحركات العاجلة" in asked.text
    confirmed = await client.post(path_of(message["context"]["confirm_url"]))
    assert '<html lang="ar" dir="rtl">' in confirmed.text
    assert "شكرًا، تم تأكيد اشتراكك" in confirmed.text
    unsubscribe = await client.get(path_of(message["unsubscribe_url"]))
    assert "هل تريد التوقف عن تلقي تنبيهات التحركات العاجلة عبر البريد الإلكتروني؟" in (
        unsubscribe.text
    )


async def test_sms_answers_in_the_subscribers_language(
    client: httpx.AsyncClient, sessionmaker: async_sessionmaker[AsyncSession]
) -> None:
    async with sessionmaker() as session, session.begin():
        await add_subscriber(session, phone="+34612345678", sms_status="pending", language="es")

    async def sms(sender: str, body: str) -> str:
        params = {"From": sender, "Body": body, "MessageSid": f"SM{sender[-4:]}{body}"}
        response = await client.post(
            "/webhooks/twilio/sms", data=params, headers=twilio_headers(params)
        )
        assert response.status_code == 200
        return response.text

    assert "A partir de ahora recibirás las alertas" in await sms("+34612345678", "YES")
    assert "Alertas de la Red de Acciones Urgentes" in await sms("+34612345678", "HELP")
    # A number we do not know is answered in the default language.
    assert "This number is not signed up" in await sms("+447911000999", "DONE")
