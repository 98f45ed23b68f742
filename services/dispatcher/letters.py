"""Letters to the officials (mail-to-target): queue ``dispatcher.letters`` (``LetterRequested``).

A subscriber's letter goes by email to each target of the action that has an address, plain
text, the subject of the action in the letter's language. It must not pass for the
organisation's own word (contract §11): ``From`` is ``"<writer's name> via <organisation>"`` at
the ``UANET_MAIL_FROM`` address (the organisation: that setting's display name), and the letter
ends with a line saying a supporter sent it through the organisation's action page.
``Reply-To`` is the writer's address, which subscriptions has proven theirs (their confirmed
email, or an address that followed the link sent to it) before asking for the letter.

- Exactly once per (letter, target): a ledger row, unique on the pair, is claimed (committed)
  before the send and marked after it; a redelivered command finds it final and sends nothing.
- Rate-limited per target address (``UANET_LETTERS_PER_TARGET_PER_MINUTE``), across every
  dispatcher process: a counter row per address and minute, taken with a conditional UPDATE.
  A letter over the limit waits in the queue's 60 s delay queue (a deferral, which does not use
  up its retries); the consumer never sleeps.
- It stops when the action is closed or its deadline has passed: the rows not yet sent become
  ``cancelled`` (not ``failed``: nothing was refused by a mail server; the subscriber's action
  was counted when the letter was accepted).
- A target that refuses the letter for good (SMTP 5xx, or an address unfit for a header) is
  reported to the publisher (``TargetBounced``) so staff can fix it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, parseaddr
from typing import Any

from prometheus_client import Counter
from sqlalchemy import Index, Integer, String, UniqueConstraint, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from rendering.i18n import strings
from rendering.renderer import clean_text, header_safe, pick_language
from services.dispatcher.identity import MessageRef, MessageTags
from services.dispatcher.ledger import STOPPING_DELAY, TRANSACTIONAL_LEASE
from services.dispatcher.models import (
    ACTION_CLOSED,
    CANCELLED,
    FAILED,
    FINAL_STATES,
    RETRY,
    SENDING,
    SENT,
    Base,
    DispatchAction,
    Outbox,
)
from services.dispatcher.senders import EmailSender, SendResult
from services.dispatcher.throttle import SendRate
from shared.db import UTCDateTime, outbox_row, utcnow
from shared.events import LetterRequested, TargetBounced
from shared.messaging import Delivery as AmqpDelivery
from shared.messaging import Reject, Retry

log = logging.getLogger(__name__)

# The delay queue a letter held back by a target's rate limit waits in (one of the queue's).
RATE_WAIT = 60
LETTERS = Counter(
    "uanet_dispatcher_letters_total",
    "Letters to officials, by outcome (one per target)",
    ["outcome"],
)


class LetterDelivery(Base):
    """The letters' ledger: one row per (letter, target address), claimed before the send."""

    __tablename__ = "dispatch_letter_deliveries"
    __table_args__ = (
        UniqueConstraint("letter_id", "target_email", name="uq_dispatch_letter_target"),
        Index("ix_dispatch_letter_deliveries_action", "action_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    letter_id: Mapped[str] = mapped_column(String(36))
    action_id: Mapped[str] = mapped_column(String(36))
    # An official's published address, not a subscriber's: kept, so a bounce can name it.
    target_email: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_code: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TargetWindow(Base):
    """How many letters went to one target address in the current minute (the rate limit)."""

    __tablename__ = "dispatch_letter_windows"

    target_email: Mapped[str] = mapped_column(String(320), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    used: Mapped[int] = mapped_column(Integer, default=0)


@dataclass(frozen=True)
class LetterTarget:
    name: str
    email: str


def letter_targets(action: DispatchAction) -> list[LetterTarget]:
    """The action's targets with an email address, one per address (first name wins)."""
    found: dict[str, LetterTarget] = {}
    for target in action.targets:
        email = str(target.get("email") or "").strip().lower()
        if email and email not in found:
            found[email] = LetterTarget(str(target.get("name") or ""), email)
    return list(found.values())


async def retarget(session: AsyncSession, action: DispatchAction, targets: list[Any]) -> int:
    """ActionTargetsChanged: staff replaced the targets (a bounced address fixed, say).

    Letters are addressed at each handling, so a letter still waiting (rate limit, temporary
    failure) goes to the new addresses when it comes back. Its rows for an address no longer
    among the targets would never be sent: cancelled. Sent and failed rows stay as they are.
    Returns how many were cancelled."""
    action.targets = targets
    current = [t.email for t in letter_targets(action)]
    result = await session.execute(
        update(LetterDelivery)
        .where(
            LetterDelivery.action_id == action.id,
            LetterDelivery.status == RETRY,
            LetterDelivery.target_email.not_in(current),
        )
        .values(status=CANCELLED, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def deadline_passed(action: DispatchAction, today: date) -> bool:
    """Letters may go until the end of the deadline's day (as the subscriptions service says)."""
    return action.deadline is not None and today > action.deadline


def _insert(session: AsyncSession, model: type[Any]) -> Any:
    module: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return module.insert(model)


async def take_rate_slot(session: AsyncSession, *, address: str, limit: int, now: datetime) -> bool:
    """One letter's slot in this minute for ``address``; False when the minute is full.

    Conditional UPDATEs: on PostgreSQL the row lock makes concurrent dispatchers queue and
    re-check ``used < limit``; on SQLite the transaction holds the write lock already.
    """
    if limit <= 0:
        return True
    minute = now.replace(second=0, microsecond=0)
    await session.execute(
        _insert(session, TargetWindow)
        .values(target_email=address, window_start=minute, used=0)
        .on_conflict_do_nothing(index_elements=["target_email"])
    )
    await session.execute(
        update(TargetWindow)
        .where(TargetWindow.target_email == address, TargetWindow.window_start < minute)
        .values(window_start=minute, used=0)
    )
    taken = await session.execute(
        update(TargetWindow)
        .where(
            TargetWindow.target_email == address,
            TargetWindow.window_start == minute,
            TargetWindow.used < limit,
        )
        .values(used=TargetWindow.used + 1)
    )
    return bool(getattr(taken, "rowcount", 0))


@dataclass(frozen=True)
class PreparedLetter:
    sender_name: str
    reply_to: Address
    subject: str
    body: str


@dataclass
class _Claimed:
    row_id: int
    target: LetterTarget


@dataclass
class _Plan:
    """What one handling of a letter does: the rows it claimed and why it must come back."""

    subject: str = ""
    claimed: list[_Claimed] = field(default_factory=list)
    deferred: int = 0  # over a target's rate limit
    busy: int = 0  # held by another handling right now


def _today() -> date:
    return datetime.now(UTC).date()


@dataclass
class LetterDispatcher:
    sessionmaker: async_sessionmaker[AsyncSession]
    email: EmailSender
    mail_from: str
    # Shared with the alerts: the process-wide email rate (UANET_EMAIL_RATE).
    email_rate: SendRate
    per_target_per_minute: int
    notify: Callable[[], None] = lambda: None
    clock: Callable[[], datetime] = utcnow
    today: Callable[[], date] = _today
    # Message-IDs and VERP senders, shared with the alerts (the app passes the dispatcher's).
    tags: MessageTags | None = None
    stopping: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        if self.tags is None:
            domain = self.from_address.rpartition("@")[2] or "uanet.invalid"
            self.tags = MessageTags(None, domain=domain)

    @property
    def from_address(self) -> str:
        return parseaddr(header_safe(self.mail_from))[1] or header_safe(self.mail_from)

    @property
    def organisation(self) -> str:
        """``UANET_MAIL_FROM``'s display name (else its domain): who the letters go through."""
        name = parseaddr(header_safe(self.mail_from))[0].strip()
        return name or self.from_address.rpartition("@")[2] or self.from_address

    def stop_taking_work(self) -> None:
        """SIGTERM: the letter being sent stops before its next target (see handle_letter)."""
        self.stopping = True

    async def handle_letter(self, message: LetterRequested, delivery: AmqpDelivery) -> None:
        if self.stopping:
            raise Retry("dispatcher stopping", delay=STOPPING_DELAY, defer=True)
        letter = self._prepared(message)
        plan = await self._claim(message)
        letter = replace(letter, subject=plan.subject)
        outcomes: list[tuple[_Claimed, SendResult]] = []
        for claimed in plan.claimed:
            if self.stopping:
                break
            ref = MessageRef.letter(claimed.row_id)
            try:
                raw = self.build(letter, claimed.target, now=self.clock(), ref=ref)
            except ValueError:
                outcomes.append((claimed, SendResult.failed("invalid_address")))
                continue
            await self.email_rate.acquire(1)
            assert self.tags is not None  # set in __post_init__
            sender = self.tags.envelope_sender(ref) or self.from_address
            result = await self.email.send(sender, claimed.target.email, raw)
            outcomes.append((claimed, result))
        temporary = await self._record(message, outcomes)
        unsent = [c.row_id for c in plan.claimed[len(outcomes) :]]
        if unsent:
            await self._release(unsent)
            raise Retry(
                f"dispatcher stopping: {len(unsent)} letters left", delay=STOPPING_DELAY, defer=True
            )
        if temporary:
            raise Retry(f"{temporary} letters failed temporarily")
        if plan.busy:
            raise Retry(f"{plan.busy} letters held by another handling")
        if plan.deferred:
            raise Retry(f"{plan.deferred} targets over their rate", delay=RATE_WAIT, defer=True)

    async def _release(self, row_ids: Sequence[int]) -> None:
        """Claimed letters not sent because the process is stopping: claimable again at once
        (not after the lease), and not counted as an attempt."""
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(LetterDelivery)
                .where(LetterDelivery.id.in_(row_ids), LetterDelivery.status == SENDING)
                .values(status=RETRY, attempts=LetterDelivery.attempts - 1, updated_at=utcnow())
                .execution_options(synchronize_session=False)
            )

    def _prepared(self, message: LetterRequested) -> PreparedLetter:
        name = header_safe(message.sender_name, limit=200)
        try:
            reply_to = Address(display_name=name, addr_spec=header_safe(message.sender_email))
        except (ValueError, IndexError):
            raise Reject("sender_email is not an email address") from None
        if not reply_to.username or not reply_to.domain:
            raise Reject("sender_email is not an email address")
        body = clean_text(message.body).strip()
        if not body:
            raise Reject("the letter is empty")
        if name and not body.endswith(name):
            body = f"{body}\n\n{name}"  # signed, as a letter is
        closing = strings(message.language)["letter_closing"].replace(
            "{organisation}", self.organisation
        )
        body = f"{body}\n\n--\n{closing}"
        return PreparedLetter(f"{name} via {self.organisation}", reply_to, "", body)

    async def _claim(self, message: LetterRequested) -> _Plan:
        """Claim the rows to send now, committed before any send."""
        letter_id, action_id = str(message.letter_id), str(message.action_id)
        now = self.clock()
        plan = _Plan()
        async with self.sessionmaker() as session, session.begin():
            action = await session.get(DispatchAction, action_id)
            if action is None:
                raise Retry("action not known yet")
            targets = letter_targets(action)
            if targets:
                await session.execute(
                    _insert(session, LetterDelivery)
                    .values(
                        [
                            {
                                "letter_id": letter_id,
                                "action_id": action_id,
                                "target_email": t.email,
                                "status": RETRY,
                                "attempts": 0,
                                "created_at": now,
                                "updated_at": now,
                            }
                            for t in targets
                        ]
                    )
                    .on_conflict_do_nothing(index_elements=["letter_id", "target_email"])
                )
            rows = {
                row.target_email: row
                for row in (
                    await session.execute(
                        select(LetterDelivery)
                        .where(LetterDelivery.letter_id == letter_id)
                        .order_by(LetterDelivery.id)
                        .with_for_update()
                    )
                ).scalars()
            }
            stopped = action.status == ACTION_CLOSED or deadline_passed(action, self.today())
            for target in targets:
                row = rows[target.email]
                if row.status in FINAL_STATES:
                    continue
                if row.status == SENDING and row.updated_at > now - TRANSACTIONAL_LEASE:
                    plan.busy += 1
                    continue
                if stopped:
                    row.status, row.updated_at = CANCELLED, now
                    LETTERS.labels("cancelled").inc()
                    continue
                if not await take_rate_slot(
                    session, address=target.email, limit=self.per_target_per_minute, now=now
                ):
                    plan.deferred += 1
                    continue
                row.status, row.attempts, row.updated_at = SENDING, row.attempts + 1, now
                plan.claimed.append(_Claimed(row.id, target))
            plan.subject = _subject(action, message.language)
        if stopped:
            log.info(
                "letter stopped: action closed or past its deadline",
                extra={"action_id": action_id, "letter_id": letter_id},
            )
        return plan

    def build(
        self, letter: PreparedLetter, target: LetterTarget, *, now: datetime, ref: MessageRef
    ) -> bytes:
        """The email to one target; raises ValueError for an address unfit for a header."""
        assert self.tags is not None  # set in __post_init__
        message = EmailMessage(policy=SMTP)
        message["From"] = Address(display_name=letter.sender_name, addr_spec=self.from_address)
        message["Reply-To"] = letter.reply_to
        message["To"] = Address(display_name=header_safe(target.name, 200), addr_spec=target.email)
        message["Subject"] = letter.subject
        message["Date"] = format_datetime(now)
        # Fixed by the letter and the target: a resend after a crash is the same message.
        message["Message-ID"] = self.tags.message_id(ref)
        message.set_content(letter.body)
        return message.as_bytes()

    async def _record(
        self, message: LetterRequested, outcomes: Sequence[tuple[_Claimed, SendResult]]
    ) -> int:
        """Write each send's outcome (and any bounce) in one transaction; count temporary ones."""
        if not outcomes:
            return 0
        now = self.clock()
        temporary = 0
        async with self.sessionmaker() as session, session.begin():
            for claimed, result in outcomes:
                values: dict[str, Any] = {"updated_at": now, "error_code": result.error_code}
                if result.outcome == "sent":
                    values |= {"status": SENT, "sent_at": now}
                elif result.outcome == "failed":
                    values["status"] = FAILED
                    if _bounced(result):
                        session.add(
                            outbox_row(
                                Outbox,
                                TargetBounced(
                                    action_id=message.action_id,
                                    letter_id=message.letter_id,
                                    target_name=claimed.target.name,
                                    address=claimed.target.email,
                                    error_code=result.error_code,
                                ),
                            )
                        )
                else:
                    values["status"] = RETRY
                    temporary += 1
                LETTERS.labels(values["status"]).inc()
                await session.execute(
                    update(LetterDelivery).where(LetterDelivery.id == claimed.row_id).values(values)
                )
        self.notify()
        return temporary


def _bounced(result: SendResult) -> bool:
    """Refused for good by the target's side: a 5xx, or an address we could not even write."""
    code = result.error_code or ""
    return code == "invalid_address" or (code.startswith("smtp:5") and code[5:].isdigit())


def _subject(action: DispatchAction, language: str) -> str:
    content = action.content.get(pick_language(language, action.content, action.default_language))
    subject = str((content or {}).get("subject") or action.title)
    return header_safe(clean_text(subject), limit=250)
