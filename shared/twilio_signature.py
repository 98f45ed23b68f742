"""Checking ``X-Twilio-Signature`` on an inbound webhook, against the URL Twilio was given."""

from __future__ import annotations

from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator


def twilio_signature_valid(
    *, auth_token: str, url: str, form: FormData, signature: str | None
) -> bool:
    if not signature:
        return False
    params = {key: str(value) for key, value in form.multi_items()}
    return bool(RequestValidator(auth_token).validate(url, params, signature))
