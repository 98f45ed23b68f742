"""What the API takes and gives (contract §3). Validation errors name the field (422)."""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

from shared.events import Channel, Outcome, Urgency

# phonenumbers knows every ISO 3166-1 alpha-2 region that has a numbering plan: all countries
# and territories people live in, which is what a country of residence or a case needs.
COUNTRY_CODES = frozenset(phonenumbers.SUPPORTED_REGIONS)
_LANGUAGE = re.compile(r"^[a-z]{2}$")
_THEME = re.compile(r"^[a-z0-9][a-z0-9-]{0,49}$")


def _country(value: str) -> str:
    code = value.strip().upper()
    if code not in COUNTRY_CODES:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code, e.g. GB")
    return code


def _language(value: str) -> str:
    code = value.strip().lower()
    if not _LANGUAGE.match(code):
        raise ValueError("must be a two-letter ISO 639-1 language code, e.g. en")
    return code


def _theme(value: str) -> str:
    slug = value.strip().lower()
    if not _THEME.match(slug):
        raise ValueError("must be a lowercase slug of letters, digits and dashes")
    return slug


def _unique(values: list[Any]) -> list[Any]:
    # Order kept; a repeated value is harmless, so drop it rather than refuse the request.
    return list(dict.fromkeys(values))


def _section_code(value: str) -> str:
    code = value.strip().upper()
    if not re.fullmatch(r"[A-Z0-9]{1,16}", code):
        raise ValueError("a section's code: letters and digits, at most 16 (e.g. UK)")
    return code


SectionCode = Annotated[str, AfterValidator(_section_code)]
SectionList = Annotated[list[SectionCode], Field(max_length=200), AfterValidator(_unique)]
CountryCode = Annotated[str, AfterValidator(_country)]
LanguageCode = Annotated[str, AfterValidator(_language)]
Theme = Annotated[str, AfterValidator(_theme)]
Text = Annotated[str, StringConstraints(strip_whitespace=True, max_length=20_000)]
Line = Annotated[str, StringConstraints(strip_whitespace=True, max_length=300)]
RequiredLine = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)
]
# An alert SMS also carries a link and the opt-out line: keep the text itself short.
SmsText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=300)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AudienceIn(Strict):
    countries: Annotated[list[CountryCode], AfterValidator(_unique)] = []
    themes: Annotated[list[Theme], AfterValidator(_unique)] = []
    languages: Annotated[list[LanguageCode], AfterValidator(_unique)] = []


class TargetIn(Strict):
    name: RequiredLine
    title: Line | None = None
    address: Annotated[str, StringConstraints(strip_whitespace=True, max_length=1000)] | None = None
    email: EmailStr | None = None
    salutation: Line | None = None


Targets = Annotated[list[TargetIn], Field(min_length=1, max_length=100)]


class ActionContentIn(Strict):
    subject: RequiredLine
    summary: Text = ""
    body: Text = ""
    sms: SmsText = ""
    model_letter: Text = ""


class UpdateContentIn(Strict):
    subject: RequiredLine
    body: Text = ""
    sms: SmsText = ""


def _check_content_languages(content: dict[str, Any]) -> dict[str, Any]:
    if not content:
        raise ValueError("must have the text in at least one language")
    return content


class UrgentActionCreate(Strict):
    title: RequiredLine
    country: CountryCode
    themes: Annotated[list[Theme], Field(max_length=20), AfterValidator(_unique)] = []
    urgency: Urgency
    channels: Annotated[list[Channel], Field(min_length=1), AfterValidator(_unique)]
    deadline: date | None = None
    audience: AudienceIn = AudienceIn()
    targets: Targets
    content: Annotated[
        dict[LanguageCode, ActionContentIn], AfterValidator(_check_content_languages)
    ]
    # After channels and content, so its check can see them.
    default_language: LanguageCode
    # On a hub: the sections it goes to (codes of `uanet sections list`); none given, all.
    sections: (
        Annotated[list[SectionCode], Field(max_length=200), AfterValidator(_unique)] | None
    ) = None

    @field_validator("content")
    @classmethod
    def _sms_text_when_texting(
        cls, content: dict[str, ActionContentIn], info: ValidationInfo
    ) -> dict[str, ActionContentIn]:
        if "sms" in (info.data.get("channels") or []):
            missing = sorted(lang for lang, text in content.items() if not text.sms)
            if missing:
                raise ValueError(f"sms text required when sending by SMS ({', '.join(missing)})")
        return content

    @field_validator("default_language")
    @classmethod
    def _default_has_content(cls, language: str, info: ValidationInfo) -> str:
        content = info.data.get("content")
        if content is not None and language not in content:
            raise ValueError("content must include the default language")
        return language


class TargetsReplace(Strict):
    """PUT .../targets: the whole list, also on a published action (a bounced address fixed)."""

    targets: Targets


class UrgentActionUpdate(Strict):
    """PATCH of a draft: only the fields given change; the result is validated as a whole."""

    title: Any = None
    country: Any = None
    themes: Any = None
    urgency: Any = None
    channels: Any = None
    deadline: Any = None
    audience: Any = None
    targets: Any = None
    content: Any = None
    default_language: Any = None
    sections: Any = None


class ActionOrigin(BaseModel):
    """Where a section's action came from: the hub, its id and reference there."""

    hub: str
    action_id: uuid.UUID
    reference: str


class PendingUpdate(BaseModel):
    """A hub's follow-up waiting for this section's staff to send it, edited or not."""

    id: uuid.UUID
    kind: Literal["further_information", "outcome"]
    outcome: Outcome | None = None
    content: dict[str, UpdateContentIn]
    received_at: datetime


class UrgentActionRead(BaseModel):
    id: uuid.UUID
    reference: str
    status: Literal["draft", "published", "closed", "declined"]
    outcome: Outcome | None
    title: str
    country: str
    themes: list[str]
    urgency: Urgency
    channels: list[Channel]
    deadline: date | None
    default_language: str
    audience: AudienceIn
    targets: list[TargetIn]
    content: dict[str, ActionContentIn]
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    closed_at: datetime | None
    sections: list[str] | None = None
    origin: ActionOrigin | None = None
    pending_updates: list[PendingUpdate] = []

    model_config = ConfigDict(from_attributes=True)

    @field_validator("pending_updates", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value


class UrgentActionPage(BaseModel):
    """A page of the list: ``next_offset`` is null on the last page."""

    items: list[UrgentActionRead]
    total: int
    limit: int
    offset: int
    next_offset: int | None


UpdateContent = Annotated[
    dict[LanguageCode, UpdateContentIn], AfterValidator(_check_content_languages)
]


class ActionUpdateCreate(Strict):
    kind: Literal["further_information", "outcome"]
    outcome: Outcome | None = Field(default=None, validate_default=True)
    content: UpdateContent

    @field_validator("outcome")
    @classmethod
    def _outcome_only_for_outcome(cls, outcome: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")
        if kind == "outcome" and outcome is None:
            raise ValueError("required when kind is outcome")
        if kind == "further_information" and outcome is not None:
            raise ValueError("only for kind outcome")
        return outcome


class ActionUpdateRead(BaseModel):
    id: uuid.UUID
    action_id: uuid.UUID
    kind: str
    outcome: Outcome | None
    content: dict[str, UpdateContentIn] | None
    created_at: datetime

    model_config = ConfigDict(from_attributes=True)


class ActionClose(Strict):
    outcome: Outcome
    content: UpdateContent | None = None


class ChannelDeliveries(BaseModel):
    sent: int
    delivered: int
    failed: int


class ResponseCounts(BaseModel):
    people: int
    actions: int
    by_kind: dict[str, int]


class CountryCounts(BaseModel):
    recipients: int
    people: int
    actions: int


class SectionStats(BaseModel):
    """A section's newest counts of a hub action (contract §9), in the top level's shape."""

    status: Literal["received", "published", "declined", "closed"]
    reference: str | None
    updated_at: datetime
    # When the section published it to its members (none: not yet, or it did not say).
    published_at: datetime | None = None
    recipients: dict[str, int]
    deliveries: dict[str, ChannelDeliveries]
    responses: ResponseCounts
    by_country: dict[str, CountryCounts]


class NetworkStats(BaseModel):
    """The hub's own counts plus every section's."""

    recipients: dict[str, int]
    deliveries: dict[str, ChannelDeliveries]
    responses: ResponseCounts
    by_country: dict[str, CountryCounts]


class ActionStats(BaseModel):
    """The counts of contract §3, every number an integer, zeros included; on a hub, each
    section's and the whole network's too (§9)."""

    action_id: uuid.UUID
    reference: str
    recipients: dict[str, int]
    deliveries: dict[str, ChannelDeliveries]
    responses: ResponseCounts
    by_country: dict[str, CountryCounts]
    updated_at: datetime
    sections: dict[str, SectionStats] = {}
    network: NetworkStats | None = None


class AuditEntryRead(BaseModel):
    """One change staff made: who (``actor``: a token's name, an account's email, or the login
    of an operator at the command line), what (``event``, ``subject``), when (``at``)."""

    id: int
    at: datetime
    actor_kind: Literal["token", "account", "cli", "hub"]
    actor: str
    event: str
    action_id: uuid.UUID | None
    subject: str
    details: dict[str, Any]

    model_config = ConfigDict(from_attributes=True)


class AuditPage(BaseModel):
    """A page of the audit log, newest first: ``next_offset`` is null on the last page."""

    items: list[AuditEntryRead]
    total: int
    limit: int
    offset: int
    next_offset: int | None
