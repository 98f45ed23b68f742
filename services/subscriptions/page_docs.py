"""What the OpenAPI document says the subscriber pages answer (pages.py's routes): a link that is
tampered with, unknown or expired is a 404 page; the JSON callers of a page's POST get JSON (the
same error bodies as the API), a browser's form post a page."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel

from services.subscriptions.schemas import LetterCreate, PreferencesUpdate, ReportCreate
from shared.web import HTML, OpenApiResponses, error_responses, html_page, request_body


class PreferencesRead(BaseModel):
    channels: dict[str, str | None]
    themes: list[str]
    language: str
    timezone: str
    frequency: str
    awaiting_confirmation: list[str]


class ReportRecorded(BaseModel):
    status: Literal["recorded", "duplicate"]
    report_id: uuid.UUID


class LetterAccepted(BaseModel):
    # confirm_email: the reply address is not the subscriber's confirmed email; it was sent a
    # link, and the letter goes when it is followed.
    status: Literal["accepted", "duplicate", "confirm_email"]
    letter_id: uuid.UUID
    targets: int


class LetterConfirmed(BaseModel):
    status: Literal["sent", "already_sent"]
    letter_id: uuid.UUID


def page_or_json_errors(*codes: int) -> OpenApiResponses:
    return error_responses(*codes, html=True)


INVALID_LINK: OpenApiResponses = {
    404: html_page("The link is tampered with, unknown, expired, or its subscriber erased")
}

PREFERENCES_SAVED: OpenApiResponses = {
    200: {
        "description": "Saved: the preferences as JSON, or the page again",
        "model": PreferencesRead,
        "content": HTML,
    },
    **page_or_json_errors(404, 422),
}

REPORTED: OpenApiResponses = {
    202: {
        "description": "Counted (or a duplicate of a report counted before)",
        "model": ReportRecorded,
    },
    303: {
        "description": "From the form: back to the action page, which thanks them",
        "headers": {"Location": {"schema": {"type": "string"}}},
    },
    # 429: one link's reports an hour are bounded (contract §7, counts that cannot be forged).
    **page_or_json_errors(404, 422, 429),
}

LETTER_SENT: OpenApiResponses = {
    200: html_page("From the form: the letter is on its way, or its reply address was sent a link"),
    202: {
        "description": "Accepted (or a duplicate of a letter sent before)",
        "model": LetterAccepted,
    },
    **page_or_json_errors(404, 409, 410, 422, 429),
}


# The POST routes' documentation: their JSON-or-form bodies and their answers.
SAVE_PREFERENCES: dict[str, Any] = {
    "openapi_extra": request_body(PreferencesUpdate),
    "responses": PREFERENCES_SAVED,
}
REPORT: dict[str, Any] = {"openapi_extra": request_body(ReportCreate), "responses": REPORTED}
LETTER: dict[str, Any] = {"openapi_extra": request_body(LetterCreate), "responses": LETTER_SENT}
LETTER_CONFIRMED: dict[str, Any] = {
    "responses": {
        200: {
            "description": "Sent (or sent before): JSON, or a page from the button",
            "model": LetterConfirmed,
            "content": HTML,
        },
        **page_or_json_errors(404, 409, 410),
    }
}
