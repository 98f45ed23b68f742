"""CSV cells that a spreadsheet would run as formulas are defused."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime

from services.publisher.reports import csv_filename, stats_csv
from services.publisher.schemas import (
    ActionStats,
    ChannelDeliveries,
    CountryCounts,
    ResponseCounts,
)


def test_formula_cells_are_prefixed() -> None:
    zero = ChannelDeliveries(sent=0, delivered=0, failed=0)
    stats = ActionStats(
        action_id=uuid.uuid4(),
        reference='=HYPERLINK("http://evil")',
        recipients={"email": 0, "sms": 0},
        deliveries={"email": zero, "sms": zero},
        responses=ResponseCounts(
            people=0,
            actions=0,
            by_kind=dict.fromkeys(("letter", "email", "call", "sms_reply", "other"), 0),
        ),
        by_country={"@X": CountryCounts(recipients=1, people=0, actions=0)},
        updated_at=datetime.now(UTC),
    )
    rows = list(csv.reader(io.StringIO(stats_csv(stats))))
    assert rows[1][0].startswith("'=") and rows[1][1] == "'@X"
    assert rows[2][0].startswith("'=")


def test_filename_from_reference() -> None:
    assert csv_filename("UA 12/26") == "ua-12-26-stats.csv"
