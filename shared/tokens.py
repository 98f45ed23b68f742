"""Signed tokens for every link sent to a subscriber (itsdangerous, one salt per purpose)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Literal

from itsdangerous import BadData, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer
from itsdangerous.encoding import base64_encode

Purpose = Literal["confirm", "unsubscribe", "preferences", "act", "letter"]

# Confirmation links (of a sign-up, of a letter's reply address) expire; the others stay valid
# as long as the subscriber exists (a link in an old email must still unsubscribe).
CONFIRM_MAX_AGE = 7 * 24 * 3600
TIMED: frozenset[Purpose] = frozenset({"confirm", "letter"})


class InvalidToken(Exception):
    """Tampered, unknown or expired: the page answers 4xx."""


class LinkSigner:
    def __init__(self, secret_key: str) -> None:
        self._secret = secret_key
        self._serializers: dict[Purpose, URLSafeSerializer] = {}
        # Derived signing key per untimed purpose: itsdangerous derives it again (a SHA-1) and
        # builds a new signer for every token, which was half the cost of a fan-out's page.
        self._keys: dict[Purpose, bytes] = {}

    def _timed(self, purpose: Purpose) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._secret, salt=f"uanet.{purpose}")

    def _plain(self, purpose: Purpose) -> URLSafeSerializer:
        serializer = self._serializers.get(purpose)
        if serializer is None:
            serializer = URLSafeSerializer(self._secret, salt=f"uanet.{purpose}")
            self._serializers[purpose] = serializer
        return serializer

    def sign(self, purpose: Purpose, payload: Any) -> str:
        if purpose in TIMED:
            return self._timed(purpose).dumps(payload)
        # Untimed tokens are shorter, which matters for the SMS action link.
        serializer = self._plain(purpose)
        key = self._keys.get(purpose)
        if key is None:
            key = self._keys[purpose] = serializer.make_signer().derive_key()
        # serializer.dumps(payload) without its zlib try: payload (compact JSON, base64), ".",
        # HMAC-SHA1 (base64). A link's payload is ids, which never compress, so the bytes are
        # the same; trying cost a third of a fan-out's signing. loads reads both forms.
        value = base64_encode(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))
        signature = base64_encode(hmac.new(key, value, hashlib.sha1).digest())
        return (value + b"." + signature).decode("ascii")

    def fingerprint(self, value: str) -> str:
        """A keyed digest of ``value`` (HMAC-SHA256, hex): a table can count by an address
        without keeping it, and nobody without the secret can tell whose count it is."""
        key = hashlib.sha256(f"uanet.fingerprint:{self._secret}".encode()).digest()
        return hmac.new(key, value.encode(), hashlib.sha256).hexdigest()

    def unsign(self, purpose: Purpose, token: str, *, max_age: int = CONFIRM_MAX_AGE) -> Any:
        try:
            if purpose in TIMED:
                return self._timed(purpose).loads(token, max_age=max_age)
            return self._plain(purpose).loads(token)
        except SignatureExpired as exc:
            raise InvalidToken("expired") from exc
        except (BadData, UnicodeError, ValueError, TypeError) as exc:
            # BadData covers BadSignature and BadPayload (a valid signature over a payload that
            # does not decode).
            raise InvalidToken("invalid") from exc
