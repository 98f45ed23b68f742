import email
import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rendering.renderer import (
    _HEADER_UNSAFE,
    _SPACES,
    _URL_SAFE,
    FollowUpText,
    InvalidAddress,
    RecipientFill,
    Renderer,
    UrgentActionText,
    header_safe,
    pick_language,
    safe_url,
)
from shared.events import ActionContent, Target, UpdateContent

from .conftest import MAIL_FROM

RENDERER = Renderer(mail_from=MAIL_FROM)
NOW = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)
MESSAGE_ID = "<d1-aaaaaaaaaa@example.org>"


def action(**content: ActionContent) -> UrgentActionText:
    return UrgentActionText(
        reference="UA 12/26",
        default_language="en",
        content=content or {"en": ActionContent(subject="Subject", body="Body")},
        targets=[Target(name="Head of the Judiciary")],
    )


def fill(**overrides: str) -> RecipientFill:
    values = {
        "to": "ana@example.net",
        "greeting": RENDERER.greeting("en", "Ana"),
        "act_url": "http://localhost:8002/act/TOKEN?a=1&b=2",
        "unsubscribe_url": "http://localhost:8002/unsubscribe/UNSUB",
        "preferences_url": "http://localhost:8002/preferences/PREFS",
    }
    values.update(overrides)
    return RecipientFill(**values)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def part(message: EmailMessage, subtype: str) -> str:
    body = message.get_body(preferencelist=(subtype,))
    assert body is not None
    return str(body.get_content())


def test_alert_email_is_multipart_with_links_and_one_click_headers() -> None:
    prepared = RENDERER.alert_email(action(), "en", has_act=True, has_preferences=True)
    message = parse(prepared.build(fill(), now=NOW, message_id=MESSAGE_ID))
    assert message.get_content_type() == "multipart/alternative"
    assert message["From"] == MAIL_FROM
    assert message["To"] == "ana@example.net"
    assert message["Subject"] == "Subject"
    assert message["Message-ID"].endswith("@example.org>")
    assert message["Date"]
    assert message["List-Unsubscribe"] == "<http://localhost:8002/unsubscribe/UNSUB>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    text, html = part(message, "plain"), part(message, "html")
    for body in (text, html):
        assert "Dear Ana," in body
        assert "http://localhost:8002/unsubscribe/UNSUB" in body
        assert "http://localhost:8002/preferences/PREFS" in body
    assert "http://localhost:8002/act/TOKEN?a=1&b=2" in text
    assert 'href="http://localhost:8002/act/TOKEN?a=1&amp;b=2"' in html


def test_one_rendering_serves_many_recipients_with_their_own_values() -> None:
    prepared = RENDERER.alert_email(action(), "en", has_act=True, has_preferences=True)
    first = parse(prepared.build(fill(), now=NOW, message_id=MESSAGE_ID))
    second = parse(
        prepared.build(
            fill(
                to="ben@example.net",
                greeting=RENDERER.greeting("en", "Ben"),
                act_url="http://x/act/B",
            ),
            now=NOW,
            message_id="<d2-bbbbbbbbbb@example.org>",
        )
    )
    assert second["To"] == "ben@example.net"
    assert "Dear Ben," in part(second, "plain") and "Dear Ana" not in part(second, "plain")
    assert "http://x/act/B" in part(second, "html")
    # Each recipient's own Message-ID, exactly as given (identity.MessageTags makes it).
    assert first["Message-ID"] == MESSAGE_ID
    assert second["Message-ID"] == "<d2-bbbbbbbbbb@example.org>"


def test_staff_text_cannot_inject_html_or_template_syntax() -> None:
    hostile = ActionContent(
        subject="<b>Bold</b> {{ 7*7 }}",
        summary="<img src=x onerror=alert(1)> {% for x in range(3) %}loop{% endfor %}",
        body="<script>alert(1)</script>\n\n[click](javascript:alert(1)) and **strong**",
        sms="{{ config }}",
    )
    prepared = RENDERER.alert_email(action(en=hostile), "en", has_act=True, has_preferences=False)
    html = part(parse(prepared.build(fill(), now=NOW, message_id=MESSAGE_ID)), "html")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "<b>Bold</b>" not in html
    assert 'href="javascript:' not in html
    assert "<strong>strong</strong>" in html  # Markdown still works
    assert "{{ 7*7 }}" in html and "49" not in html
    assert "{% for x in range(3) %}loop{% endfor %}" in html
    sms = RENDERER.alert_sms(action(en=hostile), "en", "http://x/act/1")
    assert sms.startswith("{{ config }} ")


def test_staff_text_cannot_forge_a_recipient_slot() -> None:
    content = ActionContent(subject="S", body="before \x00unsubscribe_url\x00 after")
    prepared = RENDERER.alert_email(action(en=content), "en", has_act=True, has_preferences=False)
    text = part(parse(prepared.build(fill(), now=NOW, message_id=MESSAGE_ID)), "plain")
    assert "before unsubscribe_url after" in text


def test_headers_carry_no_cr_or_lf_from_staff_or_subscriber_input() -> None:
    content = ActionContent(subject="Hello\r\nBcc: victim@example.com\nX-Evil: 1", body="b")
    prepared = RENDERER.alert_email(action(en=content), "en", has_act=True, has_preferences=False)
    raw = prepared.build(
        fill(unsubscribe_url="http://localhost:8002/unsubscribe/U\r\nBcc: x@example.com"),
        now=NOW,
        message_id=MESSAGE_ID,
    )
    message = parse(raw)
    assert message["Bcc"] is None and message["X-Evil"] is None
    assert "Bcc: victim@example.com" in message["Subject"]
    assert "\n" not in message["List-Unsubscribe"]
    head = raw.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in head and b"\nX-Evil" not in head
    assert header_safe("a\r\nb\tc") == "a b c"
    with pytest.raises(InvalidAddress):
        prepared.build(
            fill(to="ana@example.net\r\nBcc: x@example.com"), now=NOW, message_id=MESSAGE_ID
        )


def test_non_ascii_subject_is_encoded_and_round_trips() -> None:
    content = ActionContent(subject="Journaliste en danger : agissez é ç 🙂", body="Texte")
    prepared = RENDERER.alert_email(action(fr=content), "fr", has_act=True, has_preferences=False)
    raw = prepared.build(fill(), now=NOW, message_id=MESSAGE_ID)
    assert all(byte < 128 for byte in raw.split(b"\r\n\r\n", 1)[0])  # headers are 7-bit
    assert parse(raw)["Subject"] == "Journaliste en danger : agissez é ç 🙂"


def test_language_falls_back_to_the_default() -> None:
    assert pick_language("fr", {"en": 1, "fr": 2}, "en") == "fr"
    assert pick_language("fr-CA", {"en": 1, "fr": 2}, "en") == "fr"
    assert pick_language("es", {"en": 1, "fr": 2}, "en") == "en"
    text = action(
        en=ActionContent(subject="English", body="b"),
        fr=ActionContent(subject="Français", body="b"),
    )
    es = parse(
        RENDERER.alert_email(text, "es", has_act=True, has_preferences=False).build(
            fill(), now=NOW, message_id=MESSAGE_ID
        )
    )
    assert es["Subject"] == "English"
    assert "Take action now" in part(es, "plain")
    fr = parse(
        RENDERER.alert_email(text, "fr", has_act=True, has_preferences=False).build(
            fill(), now=NOW, message_id=MESSAGE_ID
        )
    )
    assert fr["Subject"] == "Français" and "Agissez maintenant" in part(fr, "plain")


def test_arabic_email_is_right_to_left() -> None:
    text = action(ar=ActionContent(subject="تحرك عاجل", body="نص"), en=ActionContent(subject="S"))
    html = part(
        parse(
            RENDERER.alert_email(text, "ar", has_act=True, has_preferences=False).build(
                fill(), now=NOW, message_id=MESSAGE_ID
            )
        ),
        "html",
    )
    assert 'dir="rtl"' in html and 'lang="ar"' in html


@pytest.mark.parametrize(
    ("language", "footer"),
    [
        ("en", "Reply STOP to opt out"),
        ("fr", "Répondez STOP pour vous désabonner"),
        ("es", "Responde STOP para darte de baja"),
        ("ar", "أرسل STOP لإلغاء الاشتراك"),
    ],
)
def test_alert_sms_has_text_link_and_stop_in_the_recipients_language(
    language: str, footer: str
) -> None:
    text = action(en=ActionContent(subject="S", sms="Act now:"))
    sms = RENDERER.alert_sms(text, language, "http://localhost:8002/act/T")
    assert sms == f"Act now: http://localhost:8002/act/T {footer}"


def test_follow_up_uses_the_update_text() -> None:
    follow_up = FollowUpText(
        reference="UA 12/26",
        default_language="en",
        content={"en": UpdateContent(subject="Released!", body="He is *free*.", sms="Released.")},
    )
    message = parse(
        RENDERER.follow_up_email(follow_up, "en", has_act=False, has_preferences=False).build(
            fill(act_url=""), now=NOW, message_id=MESSAGE_ID
        )
    )
    assert message["Subject"] == "Released!"
    assert "<em>free</em>" in part(message, "html")
    assert "http://localhost:8002/unsubscribe/UNSUB" in part(message, "plain")
    assert RENDERER.follow_up_sms(follow_up, "en", None) == "Released. Reply STOP to opt out"


def test_confirmation_email_without_unsubscribe_link_has_no_list_headers() -> None:
    prepared = RENDERER.confirm_email("es", has_unsubscribe=False)
    message = parse(
        prepared.build(
            RecipientFill(to="ana@example.net", greeting="Hola:", confirm_url="http://x/confirm/C"),
            now=NOW,
            message_id=MESSAGE_ID,
        )
    )
    assert message["List-Unsubscribe"] is None
    assert message["Subject"] == "Confirma tu suscripción a las Acciones Urgentes"
    assert "http://x/confirm/C" in part(message, "plain")


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=60))
def test_the_quick_paths_of_header_and_url_cleaning_change_nothing(value: str) -> None:
    """header_safe and safe_url skip their substitutions for a value they would leave as it
    is: whatever the value, the result is the one the substitutions give."""

    def slow(text: str, limit: int) -> str:
        return _SPACES.sub(" ", _HEADER_UNSAFE.sub(" ", text)).strip()[:limit]

    assert header_safe(value) == slow(value, 500)
    for link in (value, "https://uanet.example/act/" + value):
        assert safe_url(link) == quote(slow(link, 2000), safe=_URL_SAFE)
