"""uanet's own words in alerts (greetings, footers, "Reply STOP to opt out", the digest's heading),
from gettext catalogues like every service's: ``locale/<lang>/LC_MESSAGES/messages.po``, compiled
in memory with Babel (``shared.i18n``). Staff write the urgent actions themselves.

English is the fallback for a language with no catalogue; the urgent action's own text follows
the recipient's language, else the action's default language.

Keeping the catalogues up to date (from ``rendering/``)::

    pybabel extract -F babel.cfg -k N_ -o locale/messages.pot .
    pybabel update -i locale/messages.pot -d locale
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from shared.i18n import DEFAULT_LANGUAGE, RTL_LANGUAGES, Translations, base_language
from shared.i18n import text_direction as text_direction

LOCALE_DIR: Final = Path(__file__).resolve().parent / "locale"
FALLBACK: Final = DEFAULT_LANGUAGE
__all__ = ["FALLBACK", "LOCALE_DIR", "MESSAGES", "RTL_LANGUAGES", "STRINGS", "strings"]


def N_(message: str) -> str:  # noqa: N802 - gettext's conventional marker name
    """Marks a text for ``pybabel extract``; it is translated when the catalogues load."""
    return message


# What templates and code ask for (``t.take_action``), and its English text (the msgid).
MESSAGES: Final[dict[str, str]] = {
    "stop": N_("Reply STOP to opt out"),
    "greeting": N_("Dear {name},"),
    "greeting_anonymous": N_("Dear supporter,"),
    "take_action": N_("Take action now"),
    "act_before": N_("Please act before {date}."),
    "reference": N_("Reference"),
    "targets": N_("Who to write to"),
    "unsubscribe": N_("Unsubscribe"),
    "preferences": N_("Manage your preferences"),
    "why": N_("You receive this because you signed up for Urgent Action alerts."),
    "confirm_subject": N_("Please confirm your Urgent Action alerts"),
    "confirm_intro": N_(
        "Thank you for signing up for Urgent Action alerts. "
        "Please confirm your email address to start receiving them."
    ),
    "confirm_button": N_("Confirm my subscription"),
    "confirm_ignore": N_("If you did not sign up, ignore this email: you will not hear from us."),
    "confirm_sms": N_("Reply YES to confirm your Urgent Action alerts. Reply STOP to opt out"),
    "letter_check_subject": N_("Send your letter to the officials?"),
    "letter_check_intro": N_(
        "A letter to the officials of an urgent action was written on our action page with this "
        "email address for their replies. It goes only if you send it."
    ),
    "letter_check_button": N_("Send my letter"),
    "letter_check_ignore": N_("If this was not you, ignore this email: no letter will be sent."),
    "letter_check_why": N_(
        "You receive this one email because this address was given for a letter."
    ),
    # The last line of every letter to officials: who sent it, and how.
    "letter_closing": N_("Sent by a supporter through the action page of {organisation}."),
    "digest_subject": N_("Your daily Urgent Action digest"),
    "digest_intro": N_("New urgent actions since your last digest:"),
}


def _load() -> dict[str, dict[str, str]]:
    # Looked up once per language at import: rendering asks for these per message.
    translations = Translations.load(LOCALE_DIR, FALLBACK)
    return {
        language: {key: translations.gettext(language, text) for key, text in MESSAGES.items()}
        for language in translations.languages
    }


STRINGS: Final[dict[str, dict[str, str]]] = _load()


def strings(language: str) -> dict[str, str]:
    return STRINGS.get(language) or STRINGS.get(base_language(language)) or STRINGS[FALLBACK]
