"""The dispatcher's own words come from its gettext catalogues: complete in French, Spanish and
Arabic, and holding every text the code marks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from babel.messages.pofile import read_po

from rendering.i18n import LOCALE_DIR, MESSAGES, strings, text_direction
from shared.i18n import missing_translations


def catalogue_ids(path: Path) -> set[str]:
    with path.open("rb") as handle:
        return {str(m.id) for m in read_po(handle) if m.id}


def test_every_text_is_translated_in_every_language() -> None:
    assert catalogue_ids(LOCALE_DIR / "messages.pot") == set(MESSAGES.values())
    for language in ("fr", "es", "ar"):
        po_file = LOCALE_DIR / language / "LC_MESSAGES" / "messages.po"
        assert missing_translations(po_file, list(MESSAGES.values())) == [], language


def test_the_template_catalogue_is_up_to_date(tmp_path: Path) -> None:
    """A text added to ``MESSAGES`` without running ``pybabel extract`` fails here."""
    extracted = tmp_path / "messages.pot"
    pybabel = str(Path(sys.executable).parent / "pybabel")
    subprocess.run(
        [pybabel, "extract", "-F", "babel.cfg", "-k", "N_", "--no-default-keywords"]
        + ["-o", str(extracted), "."],
        cwd=LOCALE_DIR.parent,
        check=True,
        capture_output=True,
    )
    assert catalogue_ids(extracted) == catalogue_ids(LOCALE_DIR / "messages.pot")


def test_words_follow_the_language_with_english_as_fallback() -> None:
    assert strings("fr")["digest_subject"] == "Votre résumé quotidien des Actions urgentes"
    assert strings("es-MX")["stop"] == "Responde STOP para darte de baja"
    assert strings("ar")["unsubscribe"] == "إلغاء الاشتراك"
    assert strings("de")["take_action"] == "Take action now"
    assert (text_direction("ar"), text_direction("fr")) == ("rtl", "ltr")
