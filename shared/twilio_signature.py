"""Checking ``X-Twilio-Signature`` on an inbound webhook, against the URL Twilio was given."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import APIKeyHeader
from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator

# Read from the header and named in the OpenAPI document as the webhooks' security scheme.
_signature_header = APIKeyHeader(
    name="X-Twilio-Signature",
    auto_error=False,
    scheme_name="TwilioSignature",
    description="Twilio's signature of the webhook URL and every form parameter (HMAC-SHA1 "
    "with the account's auth token); a wrong or missing one gets 403",
)
TwilioSignature = Annotated[str | None, Depends(_signature_header)]

# How a webhook answers a request it cannot trust, as documented.
FORBIDDEN_RESPONSE: dict[int | str, dict[str, Any]] = {
    403: {
        "description": "Missing or wrong X-Twilio-Signature (or a body that is not a form)",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
}


class _Params(dict[str, list[str]]):
    """Every value of every parameter: Twilio signs all values of a repeated one (sorted), so a
    plain dict (last value wins) would turn a genuine request into an invalid one."""

    def getlist(self, key: str) -> list[str]:  # what RequestValidator.get_values looks for
        return self[key]


def twilio_signature_valid(
    *, auth_token: str, url: str, form: FormData, signature: str | None
) -> bool:
    if not signature:
        return False
    params = _Params()
    for key, value in form.multi_items():
        params.setdefault(key, []).append(value if isinstance(value, str) else str(value))
    return bool(RequestValidator(auth_token).validate(url, params, signature))
