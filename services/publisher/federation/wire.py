"""The calls between a hub and its sections (contract §9): ``POST /api/v1/federation/inbox`` on
the section (an action, a follow-up, a close, as the hub's webhook events carry them) and
``POST /api/v1/federation/counts`` on the hub (a section's counts of one hub action).

Each is signed as Standard Webhooks signs (``services.publisher.webhooks.standard``) with the
section's key and names the section in ``uanet-section``. A call is refused (401) when its
signature does not verify with the key of the section it names, when its timestamp is more than
five minutes off, or when that section is unknown or removed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.publisher.webhooks.standard import WebhookVerificationError, verify

SECTION_HEADER = "uanet-section"
INBOX_PATH = "/api/v1/federation/inbox"
COUNTS_PATH = "/api/v1/federation/counts"
COUNTS_TYPE = "section.counts"
SECTION_CODE = re.compile(r"^[A-Z0-9]{1,16}$")
# The hub's events a section takes.
ACTION_TYPES = ("action.published", "action.updated", "action.closed")

SectionStatus = Literal["received", "published", "declined", "closed"]


class NotSigned(Exception):
    """The call is not from who it says (401)."""


def check_signed(key: str, body: bytes, headers: Mapping[str, str]) -> None:
    try:
        verify(key, body, headers)
    except (WebhookVerificationError, ValueError) as exc:
        raise NotSigned(str(exc)) from None


class Deliveries(BaseModel):
    sent: int = Field(0, ge=0)
    delivered: int = Field(0, ge=0)
    failed: int = Field(0, ge=0)


class Responses(BaseModel):
    people: int = Field(0, ge=0)
    actions: int = Field(0, ge=0)
    by_kind: dict[str, int] = {}


class CountryCounts(BaseModel):
    recipients: int = Field(0, ge=0)
    people: int = Field(0, ge=0)
    actions: int = Field(0, ge=0)


class CountsReport(BaseModel):
    """What a section reports of one hub action: its status and numbers, never a person."""

    model_config = ConfigDict(extra="forbid")
    action_id: uuid.UUID  # the hub's id of the action
    status: SectionStatus
    reference: str | None = Field(None, max_length=40)  # the section's own ("UA 7/26")
    version: int = Field(ge=0)  # newest wins
    updated_at: datetime
    # When the section published it to its members (optional: older sections do not say).
    published_at: datetime | None = None
    recipients: dict[Literal["email", "sms"], int] = {}
    deliveries: dict[Literal["email", "sms"], Deliveries] = {}
    responses: Responses = Responses()
    by_country: dict[str, CountryCounts] = Field({}, max_length=300)


def report_data(report: CountsReport) -> dict[str, Any]:
    return report.model_dump(mode="json")
