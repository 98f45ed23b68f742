"""Messages that travel between the services (version 1).

Events are past tense (something happened in the service that owns it); commands are imperative
(one service asks the dispatcher to send). Every message carries ``message_id``: the AMQP
``message_id`` too, and the key consumers use to handle a redelivered message only once.

Routing keys live beside each model (``ROUTING_KEY``) so publishers and topology agree.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Channel = Literal["email", "sms"]
Urgency = Literal["urgent", "standard"]
Outcome = Literal[
    "released", "charges_dropped", "sentence_commuted", "improved", "no_change", "other"
]
ResponseKind = Literal["letter", "email", "call", "sms_reply", "other"]
UpdateKind = Literal["further_information", "outcome"]
ResponseSource = Literal["page", "sms", "letter"]
UnsubscribeReason = Literal["link", "one_click", "sms_stop", "complaint", "hard_bounce", "admin"]
# What a delivery is: the first alert, a follow-up (by update id) or the closing outcome.
MessageKind = str  # "alert" | "update:<uuid>" | "closed"

SCHEMA_VERSION = 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")
    ROUTING_KEY: ClassVar[str]

    message_id: uuid.UUID = Field(default_factory=uuid.uuid4)
    occurred_at: datetime = Field(default_factory=utcnow)
    version: int = SCHEMA_VERSION


# ---- shapes shared by several messages ------------------------------------------------------


class Target(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    title: str | None = None
    address: str | None = None
    email: str | None = None
    salutation: str | None = None


class Audience(BaseModel):
    model_config = ConfigDict(frozen=True)
    countries: list[str] = []
    themes: list[str] = []
    languages: list[str] = []


class ActionContent(BaseModel):
    """One language's text of an urgent action."""

    model_config = ConfigDict(frozen=True)
    subject: str
    summary: str = ""
    body: str = ""
    sms: str = ""
    model_letter: str = ""


class UpdateContent(BaseModel):
    """One language's text of a follow-up or a closing outcome."""

    model_config = ConfigDict(frozen=True)
    subject: str
    body: str = ""
    sms: str = ""


# ---- publisher -> everyone --------------------------------------------------------------------


class ActionPublished(Message):
    ROUTING_KEY: ClassVar[str] = "action.published"
    action_id: uuid.UUID
    reference: str
    title: str
    country: str
    themes: list[str]
    urgency: Urgency
    channels: list[Channel]
    deadline: date | None = None
    default_language: str
    audience: Audience
    targets: list[Target]
    content: dict[str, ActionContent]
    published_at: datetime


class ActionUpdated(Message):
    """A follow-up: goes only to those who received the action."""

    ROUTING_KEY: ClassVar[str] = "action.updated"
    action_id: uuid.UUID
    update_id: uuid.UUID
    reference: str
    kind: UpdateKind
    outcome: Outcome | None = None
    content: dict[str, UpdateContent]
    default_language: str


class ActionClosed(Message):
    """Closed; alerts not yet out are cancelled. ``content`` (optional) goes to recipients."""

    ROUTING_KEY: ClassVar[str] = "action.closed"
    action_id: uuid.UUID
    update_id: uuid.UUID
    reference: str
    outcome: Outcome
    content: dict[str, UpdateContent] | None = None
    default_language: str


class ActionTargetsChanged(Message):
    """Staff changed a published action's targets (a bounced address fixed, say): letters from
    now on go to these, and the action page shows them."""

    ROUTING_KEY: ClassVar[str] = "action.targets_changed"
    action_id: uuid.UUID
    reference: str
    targets: list[Target]


class ApiTokenIssued(Message):
    """An API token was created (only its SHA-256 travels), so every service can check it."""

    ROUTING_KEY: ClassVar[str] = "token.issued"
    token_id: uuid.UUID
    name: str
    role: Literal["admin", "staff", "coordinator"]
    token_hash: str  # hex SHA-256 of the token
    expires_at: datetime | None = None  # refused from then on, everywhere


class ApiTokenRevoked(Message):
    ROUTING_KEY: ClassVar[str] = "token.revoked"
    token_id: uuid.UUID


class ApiTokenUsed(Message):
    """A service other than the publisher took a token (at most once a minute per token), so
    ``uanet token list`` shows its last use wherever it was."""

    ROUTING_KEY: ClassVar[str] = "token.used"
    token_id: uuid.UUID
    used_at: datetime


# ---- subscriptions -> publisher / dispatcher --------------------------------------------------


class AudienceCounted(Message):
    """One page of an action's audience was handed to the dispatcher.

    Pages are disjoint, so the publisher sums them: ``recipients`` per channel (alerts to be sent)
    and ``by_country`` (distinct people per country of residence).
    """

    ROUTING_KEY: ClassVar[str] = "audience.counted"
    action_id: uuid.UUID
    recipients: dict[Channel, int]
    by_country: dict[str, int]


class Recipient(BaseModel):
    """One subscriber on one channel, with everything the dispatcher needs to address them."""

    model_config = ConfigDict(frozen=True)
    subscriber_id: uuid.UUID
    channel: Channel
    address: str  # email address or E.164 number
    language: str
    name: str = ""
    act_url: str | None = None
    unsubscribe_url: str
    preferences_url: str | None = None
    # Standard SMS wait for local daytime; None means send at once.
    timezone: str | None = None
    # Digest subscribers get standard actions in one email a day (urgent ones still at once).
    frequency: Literal["immediate", "daily_digest"] = "immediate"


class DeliveryBatch(Message):
    """Command to the dispatcher: send ``message_kind`` of an action to these recipients."""

    ROUTING_KEY: ClassVar[str] = "dispatch.batch"
    action_id: uuid.UUID
    message_kind: MessageKind
    recipients: list[Recipient]


class TransactionalMessage(Message):
    """Command to the dispatcher: one message that is not an alert (confirmation, HELP reply).

    The dispatcher renders ``template`` (a name in its own template set) with ``context``.
    """

    ROUTING_KEY: ClassVar[str] = "dispatch.message"
    template: str
    channel: Channel
    to: str
    language: str
    context: dict[str, Any] = {}
    unsubscribe_url: str | None = None


class ResponseRecorded(Message):
    """A subscriber reported taking action. ``message_id`` is the report's id (dedup key)."""

    ROUTING_KEY: ClassVar[str] = "response.recorded"
    action_id: uuid.UUID
    subscriber_id: uuid.UUID
    country: str | None = None
    kind: ResponseKind
    count: int = Field(ge=1, le=50)
    # Where the report came from: the action page, an SMS reply, a letter sent from the page.
    source: ResponseSource = "page"


class SubscriberChanged(Message):
    """A subscriber confirmed a channel or changed their preferences: what a CRM keeps of them
    (the publisher turns it into a ``subscriber.confirmed`` or ``subscriber.updated`` webhook and
    keeps it no longer than its delivery takes)."""

    ROUTING_KEY: ClassVar[str] = "subscriber.changed"
    change: Literal["confirmed", "updated"]
    subscriber_id: uuid.UUID
    email: str | None = None
    phone: str | None = None
    name: str = ""
    country: str
    language: str
    timezone: str
    channels: list[Channel]  # the confirmed ones
    themes: list[str] = []
    frequency: Literal["immediate", "daily_digest"] = "immediate"
    confirmed_at: datetime | None = None


class SubscriberUnsubscribed(Message):
    """One channel of a subscriber stopped, and why."""

    ROUTING_KEY: ClassVar[str] = "subscriber.unsubscribed"
    subscriber_id: uuid.UUID
    channel: Channel
    reason: UnsubscribeReason


class SubscriberErased(Message):
    """A person was erased: every service forgets them. ``addresses`` (their email address and
    number) let the dispatcher find rows that hold an address but no subscriber id."""

    ROUTING_KEY: ClassVar[str] = "subscriber.erased"
    subscriber_id: uuid.UUID
    # Who asked (the admin token's name), for the publisher's audit log.
    erased_by: str | None = None
    addresses: list[str] = []


class LetterRequested(Message):
    """Command to the dispatcher: email a subscriber's letter to each target of an action that
    has an address (mail-to-target). ``letter_id`` is the dedup key of every send."""

    ROUTING_KEY: ClassVar[str] = "letter.requested"
    letter_id: uuid.UUID
    action_id: uuid.UUID
    subscriber_id: uuid.UUID
    language: str
    sender_name: str = Field(max_length=200)
    sender_email: str = Field(max_length=320)
    body: str = Field(max_length=20_000)


class LetterWritten(Message):
    """A subscriber's letter to an action's officials was taken (the dispatcher emails it): the
    publisher lists it as an OSDI outreach. ``letter_id`` is its id and dedup key. Nothing of the
    letter itself travels (no text, no name, no address): the subscriber's id, the language (the
    email's subject is the action's, in that language) and whom it went to (name and title)."""

    ROUTING_KEY: ClassVar[str] = "letter.written"
    letter_id: uuid.UUID
    action_id: uuid.UUID
    subscriber_id: uuid.UUID
    language: str
    targets: list[Target]


# ---- dispatcher -> publisher / subscriptions --------------------------------------------------


class DeliveriesReported(Message):
    """Counts of one batch's outcomes (aggregated so a 100,000 fan-out is not 100,000 events)."""

    ROUTING_KEY: ClassVar[str] = "delivery.reported"
    action_id: uuid.UUID
    message_kind: MessageKind
    channel: Channel
    sent: int = 0
    failed: int = 0


class DeliveryStatusChanged(Message):
    """A delivery receipt moved a sent message to delivered or failed."""

    ROUTING_KEY: ClassVar[str] = "delivery.status"
    action_id: uuid.UUID | None
    message_kind: MessageKind
    channel: Channel
    status: Literal["delivered", "failed"]


class RecipientSuppressed(Message):
    """An address bounced for good, a number replied STOP to the carrier (Twilio 21610), or a
    recipient reported an email as spam (``complaint``: that channel is unsubscribed too).

    ``address`` is empty when the report named the message but not a trustworthy address (a
    late bounce or complaint tied to its ledger row): then it is the subscriber's own address.
    """

    ROUTING_KEY: ClassVar[str] = "recipient.suppressed"
    subscriber_id: uuid.UUID | None
    channel: Channel
    address: str
    reason: Literal["hard_bounce", "opted_out", "complaint"]


class EmailFeedback(Message):
    """A late report on one email the relay had accepted: a bounce (permanent or temporary), a
    spam complaint, or an ESP's confirmed delivery. ``previous`` is the count the message
    leaves: a permanent bounce moves it from ``sent`` (or ``delivered``) to ``failed``, a
    delivery from ``sent`` to ``delivered``; None moves nothing."""

    ROUTING_KEY: ClassVar[str] = "delivery.feedback"
    action_id: uuid.UUID
    message_kind: MessageKind
    kind: Literal["hard_bounce", "soft_bounce", "complaint", "delivered"]
    previous: Literal["sent", "delivered"] | None = None


class TargetBounced(Message):
    """A letter to an action's target was refused for good (SMTP 5xx): staff should fix it."""

    ROUTING_KEY: ClassVar[str] = "target.bounced"
    action_id: uuid.UUID
    letter_id: uuid.UUID
    target_name: str
    address: str
    error_code: str | None = None


ALL_MESSAGES: tuple[type[Message], ...] = (
    ApiTokenIssued,
    ApiTokenRevoked,
    ApiTokenUsed,
    ActionPublished,
    ActionUpdated,
    ActionClosed,
    AudienceCounted,
    DeliveryBatch,
    TransactionalMessage,
    ResponseRecorded,
    SubscriberChanged,
    SubscriberUnsubscribed,
    SubscriberErased,
    LetterRequested,
    LetterWritten,
    DeliveriesReported,
    DeliveryStatusChanged,
    RecipientSuppressed,
    EmailFeedback,
    TargetBounced,
)
