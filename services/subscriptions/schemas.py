"""What subscribers send us (sign-up, preferences, reports), validated field by field.

Errors name the field and never echo the input back (it may be someone's address).
"""

from __future__ import annotations

import re
import uuid
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from phonenumbers import timezone as phone_timezones
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from shared.events import Channel

Frequency = Literal["immediate", "daily_digest"]
ReportKind = Literal["letter", "email", "call", "other"]

THEME_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
LANGUAGE_CODE = re.compile(r"^[a-z]{2}$")
MAX_THEMES = 50
_LIST_SEPARATORS = re.compile(r"[,;\s]+")


class FieldError(Exception):
    """A problem with one field found after pydantic's own checks (e.g. across fields)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def normalize_email(value: str) -> str:
    try:
        checked = validate_email(value, check_deliverability=False)
    except EmailNotValidError:
        raise ValueError("not a valid email address") from None
    # Stored lowercased so one mailbox is one subscriber, however it was typed.
    return checked.normalized.lower()


def normalize_phone(value: str, region: str | None) -> str:
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        raise ValueError("not a valid phone number") from None
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def valid_timezone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError("not a known time zone (e.g. Europe/London)") from None
    return value


def timezone_of_phone(phone: str) -> str | None:
    """The number's time zone when it has only one (most countries)."""
    zones = phone_timezones.time_zones_for_number(phonenumbers.parse(phone))
    if len(zones) == 1 and zones[0] != phone_timezones.UNKNOWN_TIMEZONE:
        try:
            return valid_timezone(zones[0])
        except ValueError:
            return None
    return None


# The validation context of text input (a form, a CSV row), where a list arrives as text.
TEXT_INPUT = {"text_lists": True}


def is_text_input(info: ValidationInfo) -> bool:
    return isinstance(info.context, dict) and bool(info.context.get("text_lists"))


def text_list(value: Any, info: ValidationInfo) -> Any:
    """From a form or a CSV a list may be one text; from JSON a list is a list, and a string
    is refused (contract §7), not taken as a list of one."""
    if not is_text_input(info):
        return value
    if isinstance(value, str) and not value.strip():
        return None if info.field_name == "channels" else []
    return split_list(value)


def split_list(value: Any) -> Any:
    """Forms send lists as repeated fields or as one text ("torture, death-penalty")."""
    if isinstance(value, str):
        return [part for part in _LIST_SEPARATORS.split(value) if part]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return [part for v in value for part in _LIST_SEPARATORS.split(v) if part]
    return value


def _empty_to_none(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        return None
    return value


def _name(value: str) -> str:
    # One line, and storable: PostgreSQL refuses a NUL in text (a 500 otherwise).
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError("must be on one line")
    return value


def _language(value: str) -> str:
    value = value.lower()
    if not LANGUAGE_CODE.match(value):
        raise ValueError("must be a two-letter language code (e.g. en)")
    return value


def _themes(value: list[str]) -> list[str]:
    themes: list[str] = []
    for theme in value:
        slug = theme.strip().lower()
        if not THEME_SLUG.match(slug) or len(slug) > 60:
            raise ValueError("each theme must be a slug such as death-penalty")
        if slug not in themes:
            themes.append(slug)
    if len(themes) > MAX_THEMES:
        raise ValueError(f"at most {MAX_THEMES} themes")
    return themes


class SubscriberCreate(BaseModel):
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    # country first: the phone number is read with it as the default region.
    country: str = Field(max_length=2)
    email: str | None = Field(None, max_length=320)
    phone: str | None = Field(None, max_length=40)
    name: str = Field("", max_length=200)
    language: str = Field("en", max_length=2)
    timezone: str | None = Field(None, max_length=64)
    channels: list[Channel] | None = Field(None, max_length=2)
    themes: list[str] = Field(default_factory=list, max_length=200)
    frequency: Frequency = "immediate"

    @field_validator("email", "phone", "timezone", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("channels", "themes", mode="before")
    @classmethod
    def _lists(cls, value: Any, info: ValidationInfo) -> Any:
        return text_list(value, info)

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        value = value.upper()
        if value not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError("must be a two-letter country code (e.g. GB)")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return None if value is None else normalize_email(value)

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        return normalize_phone(value, info.data.get("country"))

    @field_validator("language")
    @classmethod
    def _language(cls, value: str) -> str:
        return _language(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _name(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else valid_timezone(value)

    @field_validator("themes")
    @classmethod
    def _themes(cls, value: list[str]) -> list[str]:
        return _themes(value)

    def checked(self) -> SubscriberCreate:
        """Cross-field rules; raises FieldError naming the field to fix."""
        if self.email is None and self.phone is None:
            raise FieldError("email", "an email address or a phone number is required")
        addresses: tuple[tuple[Channel, str | None], ...] = (
            ("email", self.email),
            ("sms", self.phone),
        )
        channels = self.channels
        if channels is None:
            channels = [c for c, a in addresses if a]
        for channel, address in addresses:
            if channel in channels and address is None:
                field = "email" if channel == "email" else "phone"
                raise FieldError(field, f"required for the {channel} channel")
        timezone = self.timezone
        if timezone is None:
            timezone = (timezone_of_phone(self.phone) if self.phone else None) or "UTC"
        return self.model_copy(update={"channels": sorted(set(channels)), "timezone": timezone})

    @property
    def wanted_channels(self) -> list[Channel]:
        return list(self.channels or [])


class PreferencesUpdate(BaseModel):
    """The preference centre; a field left out stays as it is."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    channels: list[Channel] | None = Field(None, max_length=2)
    themes: list[str] | None = Field(None, max_length=200)
    language: str | None = Field(None, max_length=2)
    timezone: str | None = Field(None, max_length=64)
    frequency: Frequency | None = None
    name: str | None = Field(None, max_length=200)

    @field_validator("channels", "themes", mode="before")
    @classmethod
    def _lists(cls, value: Any, info: ValidationInfo) -> Any:
        return text_list(value, info)

    @field_validator("language")
    @classmethod
    def _language(cls, value: str | None) -> str | None:
        return None if value is None else _language(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        return None if value is None else _name(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        return None if value is None else valid_timezone(value)

    @field_validator("themes")
    @classmethod
    def _themes(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _themes(value)


class ReportCreate(BaseModel):
    """A subscriber's report of what they did for an action."""

    model_config = ConfigDict(extra="ignore")

    kind: ReportKind
    count: int = Field(1, ge=1, le=50)
    # Generated when the page was rendered, so a resubmitted form counts once.
    report_id: uuid.UUID | None = None

    @field_validator("report_id", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return _empty_to_none(value)


MAX_LETTER_LENGTH = 10_000


class LetterCreate(BaseModel):
    """A letter to the officials of an action, written (or edited) by the subscriber."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=1, max_length=320)
    letter: str = Field(min_length=1, max_length=MAX_LETTER_LENGTH)
    # Generated when the page was rendered, so a resubmitted form sends once.
    letter_id: uuid.UUID | None = None

    @field_validator("letter_id", mode="before")
    @classmethod
    def _blank(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # One line: it becomes the display name of the email's From and Reply-To.
        if any(ch in value for ch in "\r\n\x00"):
            raise ValueError("must be on one line")
        return value

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        return normalize_email(value)
