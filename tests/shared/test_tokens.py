"""shared.tokens.LinkSigner: signed subscriber links."""

from __future__ import annotations

import time
import uuid
from typing import Any, get_args

import pytest
from itsdangerous import URLSafeSerializer

from shared.tokens import CONFIRM_MAX_AGE, TIMED, InvalidToken, LinkSigner, Purpose

SECRET = "test-secret-key-not-for-production"
PURPOSES: tuple[Purpose, ...] = get_args(Purpose)

PAYLOADS: dict[str, Any] = {
    "confirm": {"s": str(uuid.uuid4()), "c": "email"},
    "unsubscribe": {"s": str(uuid.uuid4()), "c": "sms"},
    "preferences": str(uuid.uuid4()),
    "act": [123456],
    "letter": str(uuid.uuid4()),
}


@pytest.mark.parametrize("purpose", PURPOSES)
def test_round_trip(purpose: Purpose) -> None:
    signer = LinkSigner(SECRET)
    token = signer.sign(purpose, PAYLOADS[purpose])
    assert signer.unsign(purpose, token) == PAYLOADS[purpose]
    # URL-safe: goes into a path segment as is.
    assert all(c.isalnum() or c in "-_." for c in token)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_tampered_token_is_invalid(purpose: Purpose) -> None:
    signer = LinkSigner(SECRET)
    token = signer.sign(purpose, PAYLOADS[purpose])
    payload, _, signature = token.rpartition(".")
    # The first character: the last one of base64 carries padding bits that may not count.
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    for bad in (
        f"{payload}.{flipped}",
        "x" + token,
        token[:-1],
        "",
        "not-a-token",
        "é.ü",
        token.replace(".", ""),
    ):
        with pytest.raises(InvalidToken):
            signer.unsign(purpose, bad)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_a_token_of_another_purpose_is_invalid(purpose: Purpose) -> None:
    signer = LinkSigner(SECRET)
    token = signer.sign(purpose, PAYLOADS[purpose])
    for other in PURPOSES:
        if other != purpose:
            with pytest.raises(InvalidToken):
                signer.unsign(other, token)


@pytest.mark.parametrize("purpose", PURPOSES)
def test_another_secret_fails(purpose: Purpose) -> None:
    token = LinkSigner(SECRET).sign(purpose, PAYLOADS[purpose])
    with pytest.raises(InvalidToken):
        LinkSigner("another-secret").unsign(purpose, token)


def test_confirm_tokens_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    signer = LinkSigner(SECRET)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - CONFIRM_MAX_AGE - 60)
    old = signer.sign("confirm", PAYLOADS["confirm"])
    letter = signer.sign("letter", PAYLOADS["letter"])
    monkeypatch.setattr(time, "time", lambda: now - CONFIRM_MAX_AGE + 60)
    recent = signer.sign("confirm", PAYLOADS["confirm"])
    monkeypatch.setattr(time, "time", lambda: now)

    with pytest.raises(InvalidToken, match="expired"):
        signer.unsign("confirm", old)
    with pytest.raises(InvalidToken, match="expired"):  # a letter's reply-address link too
        signer.unsign("letter", letter)
    assert signer.unsign("confirm", recent) == PAYLOADS["confirm"]
    with pytest.raises(InvalidToken, match="expired"):
        signer.unsign("confirm", recent, max_age=30)


def test_other_links_do_not_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    # An unsubscribe link in a years-old email must still work.
    signer = LinkSigner(SECRET)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - 3 * 365 * 24 * 3600)
    token = signer.sign("unsubscribe", PAYLOADS["unsubscribe"])
    monkeypatch.setattr(time, "time", lambda: now)
    assert signer.unsign("unsubscribe", token, max_age=1) == PAYLOADS["unsubscribe"]


@pytest.mark.parametrize("purpose", [p for p in PURPOSES if p not in TIMED])
def test_untimed_tokens_are_itsdangerous_tokens_whichever_way_they_were_made(
    purpose: Purpose,
) -> None:
    """The fast path must not change a single link already sent (or unsign would refuse it).
    Links sign without itsdangerous's zlib try (ids never compress): the same bytes as its
    dumps, and a compressed token (a payload that did compress) is still read."""
    signer = LinkSigner(SECRET)
    serializer = URLSafeSerializer(SECRET, salt=f"uanet.{purpose}")
    assert signer.sign(purpose, PAYLOADS[purpose]) == serializer.dumps(PAYLOADS[purpose])
    repetitive = {"s": "a" * 200, "c": "email"}
    compressed = serializer.dumps(repetitive)
    assert compressed.startswith(".")  # itsdangerous marks a compressed payload
    assert signer.unsign(purpose, compressed) == repetitive
    assert signer.unsign(purpose, signer.sign(purpose, repetitive)) == repetitive
