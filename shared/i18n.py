"""The system's own words in every language it speaks: gettext catalogues, compiled at start.

Each service keeps ``locale/<lang>/LC_MESSAGES/messages.po`` (and ``locale/messages.pot``) beside
its code. The ``.po`` files are compiled in memory with Babel when the service starts, so a fresh
clone or an installed wheel needs no build step and no ``.mo`` file is ever out of date.

Keeping the catalogues up to date (from the service's directory)::

    pybabel extract -F babel.cfg -o locale/messages.pot .
    pybabel update -i locale/messages.pot -d locale

Staff write the urgent actions themselves in each language; this module is only for the texts the
system writes (pages, SMS answers, validation messages).
"""

from __future__ import annotations

import gettext
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from babel import Locale, UnknownLocaleError
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po

DEFAULT_LANGUAGE: Final = "en"
RTL_LANGUAGES: Final = frozenset({"ar", "fa", "he", "ur"})


def base_language(code: str) -> str:
    """``fr-CA`` and ``fr_CA`` are ``fr``."""
    return code.replace("_", "-").split("-")[0].strip().lower()


def text_direction(language: str) -> str:
    return "rtl" if base_language(language) in RTL_LANGUAGES else "ltr"


def language_name(language: str) -> str:
    """The language's name in itself (``Français``), for language pickers."""
    try:
        name = Locale.parse(language).get_display_name(language) or language
    except (UnknownLocaleError, ValueError):
        return language
    return name[:1].upper() + name[1:]


def parse_accept_language(header: str | None) -> list[str]:
    """Languages of an ``Accept-Language`` header, best first (``q=0`` means not wanted)."""
    weighted: list[tuple[float, int, str]] = []
    for position, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*" or len(tag) > 35:
            continue
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            weighted.append((-quality, position, base_language(tag)))
    return [language for _, _, language in sorted(weighted)]


def compile_catalogue(po_file: Path) -> gettext.GNUTranslations:
    """Read a ``.po`` file and compile it in memory (fuzzy entries are left out, as msgfmt does)."""
    with po_file.open("rb") as handle:
        catalogue = read_po(handle)
    buffer = io.BytesIO()
    write_mo(buffer, catalogue, use_fuzzy=False)
    buffer.seek(0)
    return gettext.GNUTranslations(buffer)


@dataclass(frozen=True)
class Translations:
    """Every language one service speaks; ``for_language`` never fails (English is the fallback)."""

    catalogues: Mapping[str, gettext.NullTranslations]
    default: str = DEFAULT_LANGUAGE

    @classmethod
    def load(cls, locale_dir: Path, default: str = DEFAULT_LANGUAGE) -> Translations:
        """Each ``<locale_dir>/<lang>/LC_MESSAGES/messages.po``; the default language needs no
        file (its texts are the message ids themselves)."""
        catalogues: dict[str, gettext.NullTranslations] = {default: gettext.NullTranslations()}
        for po_file in sorted(locale_dir.glob("*/LC_MESSAGES/messages.po")):
            language = po_file.parent.parent.name
            catalogues[language] = compile_catalogue(po_file)
        return cls(catalogues, default)

    @property
    def languages(self) -> tuple[str, ...]:
        """The default first, then the others in alphabetical order."""
        others = sorted(code for code in self.catalogues if code != self.default)
        return (self.default, *others)

    @property
    def languages_named(self) -> tuple[tuple[str, str], ...]:
        """``(code, name in itself)`` of each language, for a language picker."""
        return tuple((code, language_name(code)) for code in self.languages)

    def supports(self, language: str | None) -> bool:
        return bool(language) and base_language(language or "") in self.catalogues

    def choose(self, *candidates: str | None) -> str:
        """The first candidate we speak, else the default."""
        for candidate in candidates:
            if candidate and base_language(candidate) in self.catalogues:
                return base_language(candidate)
        return self.default

    def negotiate(self, query_language: str | None, accept_language: str | None) -> str:
        """For a visitor we do not know yet: ``?lang=`` first, then the browser's languages."""
        return self.choose(query_language, *parse_accept_language(accept_language))

    def for_language(self, language: str | None) -> gettext.NullTranslations:
        return self.catalogues[self.choose(language)]

    def gettext(self, language: str | None, message: str) -> str:
        return self.for_language(language).gettext(message)


def missing_translations(po_file: Path, message_ids: Iterable[str]) -> list[str]:
    """Message ids with no (or only a fuzzy) translation in ``po_file``: what a test checks."""
    with po_file.open("rb") as handle:
        catalogue = read_po(handle)
    missing = []
    for message_id in message_ids:
        entry = catalogue.get(message_id)
        if entry is None or entry.fuzzy or not entry.string:
            missing.append(message_id)
        elif isinstance(entry.string, tuple) and not all(entry.string):
            missing.append(message_id)
    return missing
