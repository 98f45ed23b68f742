"""shared.twilio_signature against signatures made by Twilio's own RequestValidator."""

from __future__ import annotations

from typing import Any

from starlette.datastructures import FormData, UploadFile
from twilio.request_validator import RequestValidator

from shared.twilio_signature import twilio_signature_valid

TOKEN = "0123456789abcdef0123456789abcdef"
URL = "https://alerts.example.org/twilio/inbound"
PARAMS = {
    "MessageSid": "SM0123456789abcdef0123456789abcdef",
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "From": "+447700900123",
    "To": "+15005550006",
    "Body": "SENT 2 — ¡sí!",
    "NumMedia": "0",
}


def _sign(url: str, params: Any, token: str = TOKEN) -> str:
    return str(RequestValidator(token).compute_signature(url, params))


def test_a_signature_from_twilio_is_valid() -> None:
    signature = _sign(URL, dict(PARAMS))
    form = FormData(list(PARAMS.items()))
    assert twilio_signature_valid(auth_token=TOKEN, url=URL, form=form, signature=signature)


def test_a_url_with_a_query_and_the_port_variants() -> None:
    url = "https://alerts.example.org/twilio/status?ua=UA-2024-001"
    form = FormData(list(PARAMS.items()))
    assert twilio_signature_valid(
        auth_token=TOKEN, url=url, form=form, signature=_sign(url, dict(PARAMS))
    )
    # Twilio may sign with or without the default port; both are accepted.
    with_port = "https://alerts.example.org:443/twilio/status?ua=UA-2024-001"
    assert twilio_signature_valid(
        auth_token=TOKEN, url=url, form=form, signature=_sign(with_port, dict(PARAMS))
    )


def test_anything_changed_is_invalid() -> None:
    signature = _sign(URL, dict(PARAMS))
    form = FormData(list(PARAMS.items()))
    changed = FormData([(k, "STOP" if k == "Body" else v) for k, v in PARAMS.items()])
    extra = FormData([*PARAMS.items(), ("Injected", "1")])
    assert not twilio_signature_valid(auth_token=TOKEN, url=URL, form=changed, signature=signature)
    assert not twilio_signature_valid(auth_token=TOKEN, url=URL, form=extra, signature=signature)
    assert not twilio_signature_valid(
        auth_token="another-token", url=URL, form=form, signature=signature
    )
    assert not twilio_signature_valid(
        auth_token=TOKEN, url=URL + "/other", form=form, signature=signature
    )
    assert not twilio_signature_valid(auth_token=TOKEN, url=URL, form=form, signature=None)
    assert not twilio_signature_valid(auth_token=TOKEN, url=URL, form=form, signature="")
    assert not twilio_signature_valid(
        auth_token=TOKEN, url=URL, form=form, signature=signature[:-2] + "xx"
    )


def test_repeated_parameters_are_all_signed() -> None:
    # Twilio signs every value of a repeated parameter (sorted); none may be dropped.
    items: list[tuple[str, str | UploadFile]] = [
        *PARAMS.items(),
        ("MediaUrl", "https://a.example/1"),
        ("MediaUrl", "https://a.example/2"),
    ]

    class Multi(dict[str, list[str]]):
        def getlist(self, key: str) -> list[str]:
            return self[key]

    params = Multi()
    for key, value in items:
        params.setdefault(key, []).append(str(value))
    signature = _sign(URL, params)
    form = FormData(items)
    assert twilio_signature_valid(auth_token=TOKEN, url=URL, form=form, signature=signature)
    only_last = FormData([*PARAMS.items(), ("MediaUrl", "https://a.example/2")])
    assert not twilio_signature_valid(
        auth_token=TOKEN, url=URL, form=only_last, signature=signature
    )
