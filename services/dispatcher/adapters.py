"""The adapters the dispatcher's handlers share (``services.dispatcher.handlers.Dispatcher``
adds what it consumes)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parseaddr

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from rendering.renderer import Renderer
from services.dispatcher.group_commit import OutcomeCommits
from services.dispatcher.identity import MessageRef, MessageTags
from services.dispatcher.schedule import Clock, system_clock
from services.dispatcher.senders import EmailSender, SmsSender
from services.dispatcher.sms_lane import SharedAlertMark, SmsLane
from services.dispatcher.throttle import SendRate

# Contract §6 and DESIGN: at most this many messages in doubt after a SIGKILL. At 20 ms from the
# relay 64 slots still carry about 2,000 messages a second (a send and its commit take ~30 ms).
IN_DOUBT_LIMIT = 64


@dataclass
class Adapters:
    """What every handler of the dispatcher works with: the database, the two ways out, the
    renderer, the rate limits, the clock and the message tags; and whether it is stopping."""

    sessionmaker: async_sessionmaker[AsyncSession]
    email: EmailSender
    sms: SmsSender
    renderer: Renderer
    email_rate: SendRate
    sms_rate: SendRate
    # Wakes the outbox relay after a commit.
    notify: Callable[[], None] = lambda: None
    # Sends in flight per batch (the SMTP pool bounds the whole process): UANET_SMTP_CONCURRENCY.
    concurrency: int = 16
    # "Now" for quiet hours and digests (tests set it); leases and stamps use the real time.
    clock: Clock = system_clock
    # Message-IDs and VERP senders (the app passes the secret and UANET_BOUNCE_ADDRESS).
    tags: MessageTags | None = None
    # UANET_CONFIRMATION_SMS_PER_HOUR, all dispatchers together; 0: no budget.
    confirmation_sms_per_hour: int = 0
    # Several dispatchers (PostgreSQL): the mark that puts every one's alerts first.
    shared_alert_mark: SharedAlertMark | None = None

    # Set on SIGTERM: no new batch, no new send; what is in flight finishes and is recorded.
    stopping: bool = field(default=False, init=False)
    # Sends begun and not yet recorded, the whole process together: what a SIGKILL can leave
    # accepted by the relay but looking unsent (sent again, with the same Message-ID).
    in_doubt: asyncio.Semaphore = field(
        default_factory=lambda: asyncio.Semaphore(IN_DOUBT_LIMIT), init=False
    )

    # Alert SMS before confirmations, on the SMS rate (``sms_lane``).
    sms_lane: SmsLane = field(init=False)
    # The outcomes of every batch in flight, committed together (``group_commit``).
    outcomes: OutcomeCommits = field(init=False)

    def __post_init__(self) -> None:
        self.sms_lane = SmsLane(self.sms_rate, shared=self.shared_alert_mark)
        self.outcomes = OutcomeCommits(self.sessionmaker, lambda: self.notify())
        if self.tags is None:
            self.tags = MessageTags(None, domain=self.renderer.message_id_domain)

    def stop_taking_work(self) -> None:
        """A graceful stop begins: sends under way finish and are recorded; the recipients not
        yet sent to go back to the ledger (and their batch to the queue) for the next process."""
        self.stopping = True

    @property
    def message_tags(self) -> MessageTags:
        assert self.tags is not None  # set in __post_init__
        return self.tags

    def envelope_for(self, ref: MessageRef) -> str:
        """MAIL FROM of this message: its VERP address, else the address of UANET_MAIL_FROM."""
        return self.message_tags.envelope_sender(ref) or self.envelope_sender

    @functools.cached_property
    def envelope_sender(self) -> str:
        # Parsed once: parseaddr per message was a visible share of the send path.
        return parseaddr(self.renderer.mail_from)[1] or self.renderer.mail_from
