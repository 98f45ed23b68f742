"""SMS rate benchmark: the dispatcher's real batch handler and Twilio client against the
Twilio-compatible fake on loopback, holding ``UANET_SMS_RATE`` (segments a second).

    .venv/bin/python bench/sms_rate.py [--rate 20] [-n 200]

Half the recipients get a GSM-7 text, half a UCS-2 one (Cyrillic), of one to three segments each;
the fake records when each request arrived. Prints the segments a second held over the run
(target: within 5% of the rate) and the most segments in any one-second window after the first
second's allowed burst (never above the rate).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devtools.twilio_fake import FakeTwilio  # noqa: E402
from rendering.renderer import Renderer  # noqa: E402
from rendering.segments import segment_count, sms_size  # noqa: E402
from services.dispatcher.handlers import Dispatcher  # noqa: E402
from services.dispatcher.senders import TwilioSmsSender  # noqa: E402
from services.dispatcher.smtp_sender import SmtpEmailSender  # noqa: E402
from services.dispatcher.throttle import RateLimiter  # noqa: E402
from shared.db import make_engine, make_sessionmaker  # noqa: E402
from shared.events import (  # noqa: E402
    ActionContent,
    ActionPublished,
    Audience,
    DeliveryBatch,
    Recipient,
    Target,
)
from shared.messaging import Delivery  # noqa: E402
from shared.migrations import upgrade  # noqa: E402
from shared.settings import load_settings  # noqa: E402

SID, TOKEN = "AC" + "be" * 16, "bench-token"
TEXTS = {
    "en": "A defender faces execution in Iran. Write to the Head of the Judiciary today:",
    "ru": "Правозащитнику грозит казнь в Иране. Напишите главе судебной власти сегодня:",
}


async def run(rate: Decimal, n: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="uanet-sms-bench-"))
    twilio = FakeTwilio(account_sid=SID, auth_token=TOKEN, max_messages=n + 10)
    await twilio.start()
    recipients = _recipients(n)
    url = f"sqlite+aiosqlite:///{workdir / 'dispatcher.db'}"
    await asyncio.to_thread(upgrade, "dispatcher", url)
    engine = make_engine(url)
    settings = load_settings(
        twilio_account_sid=SID,
        twilio_auth_token=TOKEN,
        twilio_from="+15005550006",
        twilio_api_base=twilio.base_url,
        sms_rate=rate,
    )
    sms = TwilioSmsSender(settings)
    dispatcher = Dispatcher(
        sessionmaker=make_sessionmaker(engine),
        email=SmtpEmailSender(settings),
        sms=sms,
        renderer=Renderer(mail_from=settings.mail_from),
        email_rate=RateLimiter(Decimal(0)),
        sms_rate=RateLimiter(settings.sms_rate),
    )
    action = ActionPublished(
        action_id=uuid.uuid4(),
        reference="UA 1/26",
        title="Bench",
        country="IR",
        themes=[],
        urgency="urgent",
        channels=["sms"],
        default_language="en",
        audience=Audience(),
        targets=[Target(name="Head of the Judiciary")],
        content={
            lang: ActionContent(subject="s", summary="s", body="b", sms=text)
            for lang, text in TEXTS.items()
        },
        published_at=datetime.now(UTC),
    )
    try:
        await dispatcher.handle_action_event(action, Delivery("dispatcher.actions", "", 0))
        batch = DeliveryBatch(
            action_id=action.action_id, message_kind="alert", recipients=recipients
        )
        await dispatcher.handle_batch(batch, Delivery("dispatcher.batches", "dispatch.batch", 0))
        sent = sorted(twilio.messages, key=lambda m: m.created_at)
        assert len(sent) == n, f"{len(sent)} of {n} sent"
        encodings = {sms_size(m.body).encoding for m in sent}
        costs = [(m.created_at.timestamp(), segment_count(m.body)) for m in sent]
        start, end = costs[0][0], costs[-1][0]
        total = sum(c for _, c in costs)
        # The bucket lets up to one second's worth go at once after a pause; the held rate is
        # measured after it: segments started from the first second on, over that time (the
        # last message's segments are paid for by the time after it, so they are left out).
        steady = [c for t, c in costs if t >= start + 1.0]
        steady_start = next(t for t, _ in costs if t >= start + 1.0)
        held = (sum(steady) - costs[-1][1]) / (end - steady_start)
        burst = max(float(rate), 1.0)
        worst = 0.0
        for i, (t0, _) in enumerate(costs):
            if t0 - start < 1.0:
                continue
            window = sum(c for t, c in costs[i:] if t < t0 + 1.0)
            worst = max(worst, window)
        print(f"UANET_SMS_RATE = {rate} segments/s; {n} SMS, {total} segments, {sorted(encodings)}")
        print(f"held: {held:.2f} segments/s ({(held / float(rate) - 1) * 100:+.1f}% of the rate)")
        print(
            f"most segments starting in any 1 s window after the first second: {worst:.0f}"
            f" (a multi-segment SMS is counted whole at its start; first-second burst {burst:.0f})"
        )
    finally:
        await sms.close()
        await twilio.stop()
        await engine.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


def _recipients(n: int) -> list[Recipient]:
    return [
        Recipient(
            subscriber_id=uuid.uuid4(),
            channel="sms",
            address=f"+4477009{i:05d}",
            language="ru" if i % 2 else "en",
            name="",
            # Link lengths vary, so texts take one to three segments.
            act_url="http://127.0.0.1:8002/act/" + "x" * (10 + (i % 7) * 25),
            unsubscribe_url=f"http://127.0.0.1:8002/unsubscribe/{i}",
        )
        for i in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=Decimal, default=Decimal(20), help="UANET_SMS_RATE")
    parser.add_argument("-n", type=int, default=200, help="SMS to send")
    args = parser.parse_args()
    asyncio.run(run(args.rate, args.n))


if __name__ == "__main__":
    main()
