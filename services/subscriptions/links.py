"""Every link sent to a subscriber: signed tokens under ``UANET_PUBLIC_URL``.

The shapes are fixed in docs/architecture.md (the dispatcher only passes them on).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from shared.events import Channel
from shared.tokens import InvalidToken, LinkSigner


@dataclass(frozen=True)
class ChannelRef:
    """What a confirm or unsubscribe token names: one channel of one subscriber."""

    subscriber: uuid.UUID
    channel: Channel


def _channel_ref(payload: Any) -> ChannelRef:
    if not isinstance(payload, dict) or payload.get("c") not in ("email", "sms"):
        raise InvalidToken("invalid")
    try:
        return ChannelRef(uuid.UUID(str(payload.get("s"))), payload["c"])
    except ValueError as exc:
        raise InvalidToken("invalid") from exc


class Links:
    def __init__(self, signer: LinkSigner, public_url: str) -> None:
        self.signer = signer
        self.public_url = public_url.rstrip("/")

    # ---- building -------------------------------------------------------------------------

    def confirm(self, subscriber: uuid.UUID, channel: Channel = "email") -> str:
        token = self.signer.sign("confirm", {"s": str(subscriber), "c": channel})
        return f"{self.public_url}/confirm/{token}"

    def unsubscribe(self, subscriber: uuid.UUID, channel: Channel) -> str:
        token = self.signer.sign("unsubscribe", {"s": str(subscriber), "c": channel})
        return f"{self.public_url}/unsubscribe/{token}"

    def preferences(self, subscriber: uuid.UUID) -> str:
        token = self.signer.sign("preferences", str(subscriber))
        return f"{self.public_url}/preferences/{token}"

    def act(self, recipient_id: int) -> str:
        return f"{self.public_url}/act/{self.signer.sign('act', [recipient_id])}"

    def letter(self, letter_id: uuid.UUID) -> str:
        """The link that sends a letter whose reply address is not the subscriber's own."""
        return f"{self.public_url}/letters/{self.signer.sign('letter', str(letter_id))}"

    def signup(self) -> str:
        return f"{self.public_url}/signup"

    # ---- reading (each raises InvalidToken for anything but a well-formed, signed token) -----

    def read_confirm(self, token: str) -> ChannelRef:
        return _channel_ref(self.signer.unsign("confirm", token))

    def read_unsubscribe(self, token: str) -> ChannelRef:
        return _channel_ref(self.signer.unsign("unsubscribe", token))

    def read_preferences(self, token: str) -> uuid.UUID:
        payload = self.signer.unsign("preferences", token)
        try:
            return uuid.UUID(str(payload))
        except ValueError as exc:
            raise InvalidToken("invalid") from exc

    def read_act(self, token: str) -> int:
        payload = self.signer.unsign("act", token)
        if (
            not isinstance(payload, list)
            or len(payload) != 1
            or not isinstance(payload[0], int)
            or isinstance(payload[0], bool)
        ):
            raise InvalidToken("invalid")
        return payload[0]

    def read_letter(self, token: str) -> uuid.UUID:
        payload = self.signer.unsign("letter", token)
        try:
            return uuid.UUID(str(payload))
        except ValueError as exc:
            raise InvalidToken("invalid") from exc
