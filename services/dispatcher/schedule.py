"""When a message may go: quiet hours for standard SMS, the daily digest, and the loop that
releases what was held.

- A ``standard`` action's SMS (alert, follow-up or outcome) goes between 08:00 and 21:00 in the
  subscriber's own time zone; outside that window its ledger row waits as ``scheduled`` with
  ``not_before`` (UTC) set to the next 08:00. ``urgent`` SMS and every email go at once.
- A ``daily_digest`` subscriber's standard alert email waits as ``digest`` until the next 09:00
  of their time zone; the digest then carries every alert due for them (``digests.py``).
- A missing or unknown time zone counts as UTC: subscriptions validates zones at sign-up, so
  this only catches old rows; UTC daytime is a compromise that never texts at 3 a.m. in Europe,
  Africa or the Middle East and keeps the Americas' evenings free.

Nothing sleeps until 08:00: held rows wait in the database and ``scheduler.Scheduler`` releases
them. Every decision reads the injected ``Clock``, so tests set the time.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import ValidationError

from services.dispatcher.models import DIGEST, SCHEDULED
from shared.db import utcnow
from shared.events import Recipient

# The injected time source: "now" as an aware UTC datetime.
Clock = Callable[[], datetime]

DAY_STARTS = time(8)  # standard SMS may go from 08:00...
DAY_ENDS = time(21)  # ...until (not including) 21:00, local time
DIGEST_AT = time(9)
DEFAULT_ZONE = ZoneInfo("UTC")

# A follow-up whose alert is still held goes this long after it: the alert comes first.
FOLLOW_UP_GAP = timedelta(minutes=1)

# A released row that failed temporarily (Twilio 429/5xx) waits this long before the next try.
HELD_RETRY_DELAY = timedelta(minutes=5)
# Tries of a released row before a temporary failure counts as failed (about an hour).
HELD_ATTEMPTS = 12


def system_clock() -> datetime:
    return utcnow()


def zone_of(name: str | None) -> ZoneInfo:
    """The subscriber's IANA zone; missing or unknown: UTC (see the module's notes)."""
    if not name:
        return DEFAULT_ZONE
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return DEFAULT_ZONE


def _at(day: date, moment: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, moment, tzinfo=zone).astimezone(UTC)


def in_daytime(now: datetime, zone: ZoneInfo) -> bool:
    return DAY_STARTS <= now.astimezone(zone).time() < DAY_ENDS


def sms_not_before(now: datetime, zone: ZoneInfo) -> datetime | None:
    """None if a standard SMS may go now, else when the subscriber's next day starts (UTC)."""
    local = now.astimezone(zone)
    if DAY_STARTS <= local.time() < DAY_ENDS:
        return None
    day = local.date() if local.time() < DAY_STARTS else local.date() + timedelta(days=1)
    return _at(day, DAY_STARTS, zone)


def next_digest_at(now: datetime, zone: ZoneInfo, *, after: bool = False) -> datetime:
    """The subscriber's next 09:00 (UTC): at or after ``now``, or strictly after it."""
    local = now.astimezone(zone)
    today = _at(local.date(), DIGEST_AT, zone)
    if today > now or (today == now and not after):
        return today
    return _at(local.date() + timedelta(days=1), DIGEST_AT, zone)


def held_until(
    recipient: Recipient, *, urgency: str, message_kind: str, now: datetime
) -> tuple[str, datetime] | None:
    """Whether this message waits: ``(SCHEDULED or DIGEST, due)``, or None to send it now."""
    if urgency != "standard":
        return None  # urgent: at once, whatever the hour or the frequency
    zone = zone_of(recipient.timezone)
    if recipient.channel == "sms":
        due = sms_not_before(now, zone)
        return None if due is None else (SCHEDULED, due)
    if message_kind == "alert" and recipient.frequency == "daily_digest":
        return DIGEST, next_digest_at(now, zone)
    return None  # email is never held otherwise


def local_date(now: datetime, zone: ZoneInfo) -> date:
    return now.astimezone(zone).date()


def recipient_of(held: object) -> Recipient | None:
    """The recipient kept on a held row (None if it cannot be read back)."""
    try:
        return Recipient.model_validate(held)
    except ValidationError:
        return None
