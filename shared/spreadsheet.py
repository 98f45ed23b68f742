"""CSV that is safe to open in a spreadsheet: no cell starts a formula (CSV injection).

Every CSV uanet writes goes through ``csv_writer``; every CSV it reads back (imports) through
``read_cell``, so an export imports again unchanged.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from typing import IO, Any

# A cell starting with one of these is a formula (or becomes one) to Excel, LibreOffice or
# Google Sheets.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n")
# Prefixed to such a cell, it makes the cell text: spreadsheets show the rest as it is.
ESCAPE = "'"


def _needs_escape(value: str) -> bool:
    # A value that already starts with the escape before a formula is escaped once more, so
    # reading it back gives exactly what was written.
    return value.startswith(FORMULA_STARTS) or (
        value.startswith(ESCAPE) and _needs_escape(value[1:])
    )


def spreadsheet_cell(value: Any) -> Any:
    """``value`` as a CSV cell that no spreadsheet runs as a formula (non-strings unchanged)."""
    if isinstance(value, str) and _needs_escape(value):
        return ESCAPE + value
    return value


def read_cell(value: str) -> str:
    """The value ``spreadsheet_cell`` escaped, back as it was."""
    if value.startswith(ESCAPE) and _needs_escape(value[1:]):
        return value[1:]
    return value


class SafeWriter:
    """``csv.writer`` whose every cell goes through ``spreadsheet_cell``."""

    def __init__(self, handle: IO[str], **options: Any) -> None:
        self._writer = csv.writer(handle, **options)

    def writerow(self, row: Iterable[Any]) -> None:
        self._writer.writerow([spreadsheet_cell(value) for value in row])


def csv_writer(handle: IO[str], **options: Any) -> SafeWriter:
    return SafeWriter(handle, **options)
