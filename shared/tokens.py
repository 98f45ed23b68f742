"""Signed tokens for every link sent to a subscriber (itsdangerous, one salt per purpose)."""

from __future__ import annotations

from typing import Any, Literal

from itsdangerous import BadData, SignatureExpired, URLSafeSerializer, URLSafeTimedSerializer

Purpose = Literal["confirm", "unsubscribe", "preferences", "act"]

# Confirmation links expire; the others stay valid as long as the subscriber exists (a link in an
# old email must still unsubscribe).
CONFIRM_MAX_AGE = 7 * 24 * 3600


class InvalidToken(Exception):
    """Tampered, unknown or expired: the page answers 4xx."""


class LinkSigner:
    def __init__(self, secret_key: str) -> None:
        self._secret = secret_key

    def _timed(self, purpose: Purpose) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._secret, salt=f"uanet.{purpose}")

    def _plain(self, purpose: Purpose) -> URLSafeSerializer:
        return URLSafeSerializer(self._secret, salt=f"uanet.{purpose}")

    def sign(self, purpose: Purpose, payload: Any) -> str:
        if purpose == "confirm":
            return self._timed(purpose).dumps(payload)
        # Untimed tokens are shorter, which matters for the SMS action link.
        return self._plain(purpose).dumps(payload)

    def unsign(self, purpose: Purpose, token: str, *, max_age: int = CONFIRM_MAX_AGE) -> Any:
        try:
            if purpose == "confirm":
                return self._timed(purpose).loads(token, max_age=max_age)
            return self._plain(purpose).loads(token)
        except SignatureExpired as exc:
            raise InvalidToken("expired") from exc
        except (BadData, UnicodeError, ValueError, TypeError) as exc:
            # BadData covers BadSignature and BadPayload (a valid signature over a payload that
            # does not decode).
            raise InvalidToken("invalid") from exc
