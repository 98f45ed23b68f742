"""Turning an urgent action into email bytes and SMS text, fast and safely.

Safety: staff-written text is data, never a template. It reaches our own (sandboxed, autoescaped)
templates as values; the Markdown body goes through markdown-it with raw HTML disabled; control
characters are stripped, and header values lose CR/LF.

Speed: what every recipient shares is rendered once per (action, message kind, language) into
quoted-printable byte chunks with named slots between them; a recipient's message is then the
chunks joined with their own values (greeting, links) encoded in between, plus a few headers.
Quoted-printable soft line breaks (``=`` at the end of a line) let pre-encoded chunks be
concatenated, so the ``email`` package never runs per recipient.
"""

from __future__ import annotations

import functools
import html
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from email import policy, quoprimime
from email.utils import format_datetime, parseaddr
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import FileSystemLoader, StrictUndefined, select_autoescape
from jinja2.sandbox import SandboxedEnvironment
from markdown_it import MarkdownIt
from markupsafe import Markup

from rendering.i18n import FALLBACK, STRINGS, strings, text_direction
from shared.events import ActionContent, Target, UpdateContent

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
SLOT_NAMES = ("greeting", "act_url", "unsubscribe_url", "preferences_url", "confirm_url")
# NUL never survives clean_text(), so staff text can never forge a slot.
_SLOT = re.compile("\x00(" + "|".join(SLOT_NAMES) + ")\x00")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HEADER_UNSAFE = re.compile(r"[\x00-\x1f\x7f]+")
_SPACES = re.compile(r"[ \t]+")
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~"


def clean_text(value: str) -> str:
    """Staff or subscriber text for a body: no control characters but tab and newline."""
    return _CONTROL.sub("", value.replace("\r\n", "\n").replace("\r", "\n"))


# What the two functions below leave as it is (the usual value, checked in one pass: they run
# four times a message, and their substitutions were 5 % of the dispatcher's time).
_HEADER_FINE = re.compile(r"[!-~]+(?: [!-~]+)*")
_URL_FINE = re.compile(r"[A-Za-z0-9_.~:/?#\[\]@!$&'()*+,;=%-]+")


def header_safe(value: str, limit: int = 500) -> str:
    """A value for a header: one line, no control characters (so no header injection)."""
    if _HEADER_FINE.fullmatch(value):
        return value[:limit]
    return _SPACES.sub(" ", _HEADER_UNSAFE.sub(" ", value)).strip()[:limit]


def safe_url(url: str) -> str:
    """A link fit for a header or an SMS: one line, ASCII (anything else percent-encoded)."""
    if _URL_FINE.fullmatch(url):
        return url[:2000]
    return quote(header_safe(url, limit=2000), safe=_URL_SAFE)


def pick_language(wanted: str, available: Mapping[str, object], default: str) -> str:
    """The recipient's language if the text exists in it, else the action's default language."""
    if wanted in available:
        return wanted
    base = wanted.split("-")[0]
    if base in available:
        return base
    if default in available:
        return default
    return next(iter(available), default)


# Printable ASCII but "=": nothing to encode, only lines to wrap (links, most names).
_QP_VERBATIM = re.compile(r"[!-<>-~]*")


def _qp(text: str) -> bytes:
    """Quoted-printable with a trailing soft line break, so encoded pieces can be concatenated."""
    if _QP_VERBATIM.fullmatch(text):
        # The per-recipient fast path: soft breaks every 74 characters, no encoding pass.
        raw = text.encode("ascii")
        return b"".join(raw[i : i + 74] + b"=\r\n" for i in range(0, len(raw), 74)) or b"=\r\n"
    latin = text.replace("\r\n", "\n").encode("utf-8").decode("latin-1")
    # 75 leaves room for the soft-break "=" within the 76-character line limit.
    return quoprimime.body_encode(latin, maxlinelen=75, eol="\r\n").encode("ascii") + b"=\r\n"


def _split(rendered: str) -> list[bytes | str]:
    """Rendered text -> pre-encoded literal chunks (bytes) and slot names (str) between them."""
    pieces: list[bytes | str] = []
    for index, part in enumerate(_SLOT.split(rendered)):
        if index % 2:
            pieces.append(part)
        elif part:
            pieces.append(_qp(part))
    return pieces


@dataclass(frozen=True)
class RecipientFill:
    """What differs between two recipients of the same message."""

    to: str
    greeting: str
    unsubscribe_url: str | None = None
    act_url: str | None = None
    preferences_url: str | None = None
    confirm_url: str | None = None

    def value(self, slot: str) -> str:
        value: str | None = getattr(self, slot)
        return value or ""


class InvalidAddress(ValueError):
    """An address that cannot go in a header safely."""


class PreparedEmail:
    """One message for many recipients: shared headers and body chunks, encoded once."""

    def __init__(
        self,
        *,
        shared_headers: bytes,
        text: list[bytes | str],
        html_part: list[bytes | str],
        one_click_unsubscribe: bool,
    ) -> None:
        self.boundary = f"==uanet_{secrets.token_hex(16)}=="
        b = self.boundary.encode("ascii")
        self._head = (
            shared_headers
            + b"MIME-Version: 1.0\r\n"
            + b'Content-Type: multipart/alternative; boundary="'
            + b
            + b'"\r\n\r\n'
        )
        self._text_open = (
            b"--" + b + b'\r\nContent-Type: text/plain; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        self._html_open = (
            b"\r\n--" + b + b'\r\nContent-Type: text/html; charset="utf-8"\r\n'
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n"
        )
        self._close = b"\r\n--" + b + b"--\r\n"
        self._text = text
        self._html = html_part
        self._one_click = one_click_unsubscribe

    def build(self, fill: RecipientFill, *, now: datetime, message_id: str) -> bytes:
        """The whole message for one recipient; ``message_id`` (``<tag@domain>``, from
        ``identity.MessageTags``) is fixed by what the message is, so a resend repeats it."""
        to = header_safe(fill.to, limit=320)
        if not to or " " in to or "<" in to or ">" in to or "," in to:
            raise InvalidAddress("address not fit for a header")
        # Each value once per message, whatever the number of places it appears in.
        values: dict[str, str] = {}
        encoded: dict[str, bytes] = {}
        lines = [
            b"To: " + to.encode("utf-8"),
            b"Date: " + _date_header(now),
            b"Message-ID: " + message_id.encode("ascii"),
        ]
        if self._one_click and fill.unsubscribe_url:
            unsubscribe = self._value(fill, "unsubscribe_url", values)
            lines.append(b"List-Unsubscribe: <" + unsubscribe.encode() + b">")
            lines.append(b"List-Unsubscribe-Post: List-Unsubscribe=One-Click")
        out = [b"\r\n".join(lines), b"\r\n", self._head, self._text_open]
        out.extend(self._fill(self._text, fill, values, encoded, escape=False))
        out.append(self._html_open)
        out.extend(self._fill(self._html, fill, values, encoded, escape=True))
        out.append(self._close)
        return b"".join(out)

    @staticmethod
    def _value(fill: RecipientFill, slot: str, values: dict[str, str]) -> str:
        value = values.get(slot)
        if value is None:
            value = fill.value(slot)
            if slot.endswith("_url"):
                value = safe_url(value)
            values[slot] = value
        return value

    @classmethod
    def _fill(
        cls,
        pieces: list[bytes | str],
        fill: RecipientFill,
        values: dict[str, str],
        encoded: dict[str, bytes],
        *,
        escape: bool,
    ) -> list[bytes]:
        out: list[bytes] = []
        for piece in pieces:
            if isinstance(piece, bytes):
                out.append(piece)
                continue
            value = cls._value(fill, piece, values)
            if escape:
                value = html.escape(value, quote=True)
            chunk = encoded.get(value)
            if chunk is None:
                chunk = encoded[value] = _qp(value)
            out.append(chunk)
        return out


@functools.lru_cache(maxsize=4)
def _date_header_of(second: datetime) -> bytes:
    return format_datetime(second).encode("ascii")


def _date_header(now: datetime) -> bytes:
    """RFC 5322 date, formatted once a second rather than once a message."""
    return _date_header_of(now.replace(microsecond=0))


@dataclass(frozen=True)
class UrgentActionText:
    """What the dispatcher renders of an urgent action."""

    reference: str
    default_language: str
    content: Mapping[str, ActionContent]
    targets: list[Target]
    deadline: date | None = None


@dataclass(frozen=True)
class FollowUpText:
    """A follow-up or the closing outcome."""

    reference: str
    default_language: str
    content: Mapping[str, UpdateContent]


@dataclass(frozen=True)
class DigestEntry:
    """One urgent action in a daily digest, in the language its text is in."""

    reference: str
    subject: str
    summary: str
    act_url: str | None
    language: str


class Renderer:
    def __init__(self, *, mail_from: str) -> None:
        self.mail_from = header_safe(mail_from)
        domain = parseaddr(self.mail_from)[1].rpartition("@")[2]
        self.message_id_domain = header_safe(domain) or "uanet.invalid"
        self._from_header = _header("From", self.mail_from)
        self._env = SandboxedEnvironment(
            loader=FileSystemLoader(TEMPLATES_DIR),
            autoescape=select_autoescape(
                enabled_extensions=("html.j2",), disabled_extensions=("txt.j2",), default=True
            ),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._markdown = MarkdownIt("commonmark", {"html": False}).enable("strikethrough")

    # ---- email ---------------------------------------------------------------------------

    def markdown(self, source: str) -> Markup:
        # Raw HTML in the source is shown as text (html disabled); markdown-it's link
        # validation drops javascript:/vbscript:/data: URLs.
        return Markup(self._markdown.render(clean_text(source)))

    def _prepare(
        self,
        template: str,
        *,
        subject: str,
        language: str,
        has_unsubscribe: bool,
        has_preferences: bool = False,
        **context: Any,
    ) -> PreparedEmail:
        subject = header_safe(clean_text(subject), limit=250)
        values = {
            "subject": subject,
            "language": language,
            "direction": text_direction(language),
            "t": strings(language),
            "slot": {name: f"\x00{name}\x00" for name in SLOT_NAMES},
            "has_unsubscribe": has_unsubscribe,
            "has_preferences": has_preferences,
            **context,
        }
        if isinstance(values.get("content"), dict):
            values["content"]["subject"] = subject
        text = self._env.get_template(f"{template}.txt.j2").render(values)
        body = self._env.get_template(f"{template}.html.j2").render(values)
        shared = self._from_header + _header("Subject", subject)
        return PreparedEmail(
            shared_headers=shared,
            text=_split(text),
            html_part=_split(body),
            one_click_unsubscribe=has_unsubscribe,
        )

    def alert_email(
        self, action: UrgentActionText, language: str, *, has_act: bool, has_preferences: bool
    ) -> PreparedEmail:
        lang = pick_language(language, action.content, action.default_language)
        content = action.content[lang]
        return self._prepare(
            "alert",
            subject=content.subject,
            language=lang,
            has_unsubscribe=True,
            has_preferences=has_preferences,
            has_act=has_act,
            reference=clean_text(action.reference),
            content=_cleaned(content),
            body_html=self.markdown(content.body),
            deadline=action.deadline.isoformat() if action.deadline else "",
            targets=[_cleaned(t) for t in action.targets],
        )

    def follow_up_email(
        self, follow_up: FollowUpText, language: str, *, has_act: bool, has_preferences: bool
    ) -> PreparedEmail:
        lang = pick_language(language, follow_up.content, follow_up.default_language)
        content = follow_up.content[lang]
        return self._prepare(
            "update",
            subject=content.subject,
            language=lang,
            has_unsubscribe=True,
            has_preferences=has_preferences,
            has_act=has_act,
            reference=clean_text(follow_up.reference),
            content=_cleaned(content),
            body_html=self.markdown(content.body),
        )

    def confirm_email(self, language: str, *, has_unsubscribe: bool) -> PreparedEmail:
        lang = language if language in STRINGS else FALLBACK
        return self._prepare(
            "confirm_email",
            subject=strings(lang)["confirm_subject"],
            language=lang,
            has_unsubscribe=has_unsubscribe,
        )

    def letter_check_email(self, language: str) -> PreparedEmail:
        """The one email a letter's reply address gets before the letter goes (a link)."""
        lang = language if language in STRINGS else FALLBACK
        return self._prepare(
            "letter_check",
            subject=strings(lang)["letter_check_subject"],
            language=lang,
            has_unsubscribe=False,
        )

    def digest_email(
        self, language: str, entries: list[DigestEntry], *, has_preferences: bool
    ) -> PreparedEmail:
        """One subscriber's daily digest: rendered for them alone, so each action's act link is
        a plain value (escaped like any other), not a slot."""
        lang = language if language in STRINGS else FALLBACK
        return self._prepare(
            "digest",
            subject=strings(lang)["digest_subject"],
            language=lang,
            has_unsubscribe=True,
            has_preferences=has_preferences,
            entries=[
                {
                    "reference": clean_text(e.reference),
                    "subject": clean_text(e.subject),
                    "summary": clean_text(e.summary),
                    "act_url": safe_url(e.act_url) if e.act_url else "",
                    "language": e.language,
                    "direction": text_direction(e.language),
                }
                for e in entries
            ],
        )

    # ---- per-recipient values and SMS -----------------------------------------------------

    @staticmethod
    def greeting(language: str, name: str) -> str:
        words = strings(language)
        name = header_safe(name, limit=100)
        return words["greeting"].replace("{name}", name) if name else words["greeting_anonymous"]

    @staticmethod
    def alert_sms(action: UrgentActionText, language: str, act_url: str | None) -> str:
        lang = pick_language(language, action.content, action.default_language)
        content = action.content[lang]
        return sms_text(content.sms or content.subject, act_url, footer_language(language, lang))

    @staticmethod
    def follow_up_sms(follow_up: FollowUpText, language: str, act_url: str | None) -> str:
        lang = pick_language(language, follow_up.content, follow_up.default_language)
        content = follow_up.content[lang]
        return sms_text(content.sms or content.subject, act_url, footer_language(language, lang))

    @staticmethod
    def confirm_sms(language: str) -> str:
        return strings(language)["confirm_sms"]


def _header(name: str, value: str) -> bytes:
    """A folded header line, RFC 2047-encoded where it is not ASCII (7-bit safe everywhere)."""
    folded: str = policy.SMTP.header_factory(name, value).fold(policy=policy.SMTP)
    return folded.encode("ascii")


def sms_text(text: str, act_url: str | None, language: str) -> str:
    """``{text} {act_url} {Reply STOP to opt out}`` in the recipient's language."""
    parts = [
        clean_text(text).strip(),
        safe_url(act_url) if act_url else "",
        strings(language)["stop"],
    ]
    return " ".join(p for p in parts if p)


def footer_language(recipient_language: str, content_language: str) -> str:
    """The opt-out line speaks the recipient's language whenever we have it (contract §4)."""
    return recipient_language if recipient_language in STRINGS else content_language


def _cleaned(model: ActionContent | UpdateContent | Target) -> dict[str, Any]:
    return {k: clean_text(v) if isinstance(v, str) else v for k, v in model.model_dump().items()}
