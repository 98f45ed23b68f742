"""Loaded by schemathesis (``SCHEMATHESIS_HOOKS``) in tests/e2e/test_schemathesis.py: signs each
generated Twilio webhook call as Twilio would, so the runs reach the webhooks' handling instead
of stopping at 403. The auth token is the stack's (``UANET_TWILIO_AUTH_TOKEN``)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl

import schemathesis
from requests.models import RequestEncodingMixin
from twilio.request_validator import RequestValidator


class _Params(dict[str, list[str]]):
    def getlist(self, key: str) -> list[str]:  # what RequestValidator reads repeated fields with
        return self[key]


def _as_sent(body: Any) -> _Params:
    """The form fields exactly as the server will read them (requests encodes the body)."""
    params = _Params()
    if isinstance(body, dict):
        encoded = RequestEncodingMixin._encode_params(body)
        text = encoded if isinstance(encoded, str) else encoded.decode("utf-8", "replace")
        for key, value in parse_qsl(text, keep_blank_values=True):
            params.setdefault(key, []).append(value)
    return params


@schemathesis.auth().apply_to(path_regex="^/webhooks/twilio/")
class TwilioSignature:
    def get(self, case: Any, context: Any) -> str:
        return os.environ["UANET_TWILIO_AUTH_TOKEN"]

    def set(self, case: Any, data: str, context: Any) -> None:
        url = case.operation.base_url.rstrip("/") + case.formatted_path
        signature = RequestValidator(data).compute_signature(url, _as_sent(case.body))
        case.headers = {**(case.headers or {}), "X-Twilio-Signature": signature}
