"""Quiet hours and digest times in the subscriber's own time zone (pure functions, no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from services.dispatcher.digests import digest_language
from services.dispatcher.models import DIGEST, SCHEDULED
from services.dispatcher.schedule import (
    DEFAULT_ZONE,
    held_until,
    local_date,
    next_digest_at,
    sms_not_before,
    zone_of,
)

from .conftest import recipient

LONDON = ZoneInfo("Europe/London")
NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
KOLKATA = ZoneInfo("Asia/Kolkata")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def local(zone: ZoneInfo, *args: int) -> datetime:
    return datetime(*args, tzinfo=zone).astimezone(UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("zone", "moment", "expected"),
    [
        # West of UTC: 02:00 UTC is 21:00 the day before in New York (winter, UTC-5).
        (NEW_YORK, utc(2026, 1, 15, 2, 0), local(NEW_YORK, 2026, 1, 15, 8, 0)),
        (NEW_YORK, utc(2026, 1, 15, 1, 59, 59), None),  # 20:59:59 local
        (NEW_YORK, utc(2026, 1, 15, 12, 59), local(NEW_YORK, 2026, 1, 15, 8, 0)),  # 07:59
        (NEW_YORK, utc(2026, 1, 15, 13, 0), None),  # 08:00 exactly: the day has begun
        # East of UTC: 23:00 UTC is 08:00 the next day in Tokyo (UTC+9).
        (TOKYO, utc(2026, 1, 14, 22, 59, 59), local(TOKYO, 2026, 1, 15, 8, 0)),
        (TOKYO, utc(2026, 1, 14, 23, 0), None),
        (TOKYO, utc(2026, 1, 15, 12, 0), local(TOKYO, 2026, 1, 16, 8, 0)),  # 21:00 exactly
        # A half-hour zone (UTC+5:30).
        (KOLKATA, utc(2026, 1, 15, 2, 29), local(KOLKATA, 2026, 1, 15, 8, 0)),
        (KOLKATA, utc(2026, 1, 15, 2, 30), None),
    ],
)
def test_standard_sms_waits_for_local_daytime(
    zone: ZoneInfo, moment: datetime, expected: datetime | None
) -> None:
    assert sms_not_before(moment, zone) == expected


def test_the_window_edges_are_0800_inclusive_and_2100_exclusive() -> None:
    day = (2026, 6, 1)
    assert sms_not_before(local(LONDON, *day, 8, 0), LONDON) is None
    assert sms_not_before(local(LONDON, *day, 20, 59, 59), LONDON) is None
    assert sms_not_before(local(LONDON, *day, 21, 0), LONDON) == local(LONDON, 2026, 6, 2, 8, 0)
    assert sms_not_before(local(LONDON, *day, 7, 59, 59), LONDON) == local(LONDON, *day, 8, 0)


def test_on_the_spring_forward_night_the_sms_goes_at_0800_summer_time() -> None:
    # New York moves from UTC-5 to UTC-4 at 02:00 on 8 March 2026.
    evening = local(NEW_YORK, 2026, 3, 7, 23, 0)
    release = sms_not_before(evening, NEW_YORK)
    assert release == utc(2026, 3, 8, 12, 0)  # 08:00 EDT, not 13:00 UTC (08:00 EST)
    assert release is not None and release.astimezone(NEW_YORK).hour == 8


def test_on_the_fall_back_night_the_sms_goes_at_0800_winter_time() -> None:
    # London moves from UTC+1 to UTC+0 at 02:00 on 25 October 2026.
    night = utc(2026, 10, 25, 1, 30)  # 01:30 GMT, after the change
    assert sms_not_before(night, LONDON) == utc(2026, 10, 25, 8, 0)
    before_change = utc(2026, 10, 24, 23, 30)  # 00:30 BST
    assert sms_not_before(before_change, LONDON) == utc(2026, 10, 25, 8, 0)


@pytest.mark.parametrize("name", [None, "", "Mars/Olympus_Mons", "../etc/passwd", "Europe"])
def test_a_missing_or_unknown_zone_counts_as_utc(name: str | None) -> None:
    assert zone_of(name) is DEFAULT_ZONE
    assert sms_not_before(utc(2026, 1, 15, 22, 0), zone_of(name)) == utc(2026, 1, 16, 8, 0)


def test_digest_time_is_the_next_0900_local() -> None:
    assert next_digest_at(local(TOKYO, 2026, 1, 15, 8, 0), TOKYO) == local(TOKYO, 2026, 1, 15, 9, 0)
    nine = local(TOKYO, 2026, 1, 15, 9, 0)
    assert next_digest_at(nine, TOKYO) == nine
    assert next_digest_at(nine, TOKYO, after=True) == local(TOKYO, 2026, 1, 16, 9, 0)
    assert next_digest_at(local(NEW_YORK, 2026, 3, 7, 10, 0), NEW_YORK) == utc(
        2026, 3, 8, 13, 0
    )  # 09:00 EDT on the day the clocks change
    # The local date, not the UTC one: 23:30 UTC is already tomorrow in Tokyo.
    assert local_date(utc(2026, 1, 15, 23, 30), TOKYO).day == 16


def test_what_waits_and_what_goes_at_once() -> None:
    night = local(LONDON, 2026, 1, 15, 23, 0)
    sms = recipient("sms", timezone="Europe/London")
    digest_reader = recipient(timezone="Europe/London", frequency="daily_digest")
    reader = recipient(timezone="Europe/London")
    assert held_until(sms, urgency="standard", message_kind="alert", now=night) == (
        SCHEDULED,
        local(LONDON, 2026, 1, 16, 8, 0),
    )
    assert held_until(sms, urgency="standard", message_kind="closed", now=night) is not None
    assert held_until(sms, urgency="urgent", message_kind="alert", now=night) is None
    assert held_until(reader, urgency="standard", message_kind="alert", now=night) is None
    assert held_until(digest_reader, urgency="standard", message_kind="alert", now=night) == (
        DIGEST,
        local(LONDON, 2026, 1, 16, 9, 0),
    )
    assert held_until(digest_reader, urgency="urgent", message_kind="alert", now=night) is None
    # A follow-up by email is not digested: the digest lists new actions.
    assert held_until(digest_reader, urgency="standard", message_kind="closed", now=night) is None


def test_digest_speaks_the_language_most_of_its_alerts_came_in() -> None:
    assert digest_language(["fr", "en", "fr"]) == "fr"
    assert digest_language(["fr", "en"]) == "en"  # a tie: the newest
    assert digest_language(["xx"]) == "en"
