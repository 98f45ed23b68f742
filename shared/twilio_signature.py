"""Checking ``X-Twilio-Signature`` on an inbound webhook, against the URL Twilio was given."""

from __future__ import annotations

from starlette.datastructures import FormData
from twilio.request_validator import RequestValidator


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
