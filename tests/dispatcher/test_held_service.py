"""Quiet hours and digests in the running service: batches over a real RabbitMQ, SMS through the
Twilio-compatible endpoint, email to SMTP on loopback, and a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from devtools.twilio_fake import FakeTwilio
from services.dispatcher.models import Delivery
from shared.settings import Settings
from tests.support import SmtpRecorder, eventually

from .conftest import ManualClock, action_published, batch, recipient
from .test_service import running, service_settings, smtp, twilio  # noqa: F401 - fixtures

LONDON = ZoneInfo("Europe/London")


def at(day: int, hour: int) -> datetime:
    return datetime(2026, 1, day, hour, tzinfo=LONDON).astimezone(UTC)


async def test_night_sms_waits_for_morning_and_digest_waits_for_0900(
    service_settings: Settings,  # noqa: F811
    smtp: SmtpRecorder,  # noqa: F811
    twilio: FakeTwilio,  # noqa: F811
) -> None:
    clock = ManualClock(at(15, 23))
    async with running(service_settings, clock=clock) as (app, _, broker):
        first = action_published(urgency="standard", reference="UA 30/26")
        second = action_published(urgency="standard", reference="UA 31/26")
        urgent = action_published(urgency="urgent", reference="UA 32/26")
        phone = recipient("sms", address="+447700900777", timezone="Europe/London")
        reader = recipient(timezone="Europe/London", frequency="daily_digest")
        for action in (first, second, urgent):
            await broker.publish_event(action)
        await broker.publish_event(batch(first, [phone, reader]))
        await broker.publish_event(batch(second, [reader]))
        # Urgent alerts carry no zone: at once, whatever the hour or the frequency.
        at_once = [p.model_copy(update={"timezone": None}) for p in (phone, reader)]
        await broker.publish_event(batch(urgent, at_once))

        await eventually(lambda: twilio.messages, what="the urgent SMS")
        await eventually(lambda: smtp.to(reader.address), what="the urgent email")
        sessionmaker = app.state.runtime.sessionmaker

        async def held() -> list[str]:
            async with sessionmaker() as session:
                rows = await session.scalars(
                    select(Delivery.status).where(Delivery.status.in_(("scheduled", "digest")))
                )
                found = sorted(rows)
            return found if len(found) == 3 else []

        assert await eventually(held, what="three held rows") == ["digest", "digest", "scheduled"]
        assert len(twilio.messages) == 1 and len(smtp.to(reader.address)) == 1

        clock.set(at(16, 8))
        app.state.scheduler.wake()
        await eventually(lambda: len(twilio.messages) == 2, what="the held SMS at 08:00")
        assert twilio.messages[1].to == phone.address
        assert twilio.messages[1].body.endswith("Reply STOP to opt out")
        assert len(smtp.to(reader.address)) == 1  # the digest waits for 09:00

        clock.set(at(16, 9))
        app.state.scheduler.wake()
        await eventually(lambda: len(smtp.to(reader.address)) == 2, what="the digest")
        digest = smtp.to(reader.address)[1]
        assert digest.header("Subject") == "Your daily Urgent Action digest"
        assert digest.header("List-Unsubscribe") == f"<{reader.unsubscribe_url}>"
        text = digest.part("plain")
        assert "UA 30/26" in text and "UA 31/26" in text and "UA 32/26" not in text
        assert reader.act_url in digest.links() and reader.unsubscribe_url in digest.links()
