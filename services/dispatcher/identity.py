"""What names one email uanet sent: its Message-ID and, with ``UANET_BOUNCE_ADDRESS``, its VERP
envelope sender.

Both carry one short signed tag that points at the ledger row of that message: an alert or
follow-up (``dispatch_deliveries``), a digest, a letter to one target, a transactional message.
Each row is unique for what the message is (action, message kind, subscriber, channel; a letter
and its target), so a message sent again after a crash carries the Message-ID of its first send
and a mailbox that deduplicates by Message-ID shows one. A bounce, a complaint or an ESP event
that quotes the tag finds its row without guessing, and nobody can forge one for a row of their
choosing. The tag holds no personal data: a row number and a signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

LedgerName = Literal["delivery", "digest", "letter", "transactional"]

# One letter per ledger, first in the tag.
_PREFIX: dict[LedgerName, str] = {
    "delivery": "d",
    "digest": "g",
    "letter": "l",
    "transactional": "t",
}
_LEDGER: dict[str, LedgerName] = {letter: name for name, letter in _PREFIX.items()}
# A tag: ledger letter, the row's key (digits, or a UUID's 32 hex digits), a dash, 10 base32
# characters of HMAC-SHA256 (50 bits: enough that guessing one is hopeless, short enough for
# a local part). Lower case: some relays lower-case the local part of a bounce address.
_TAG = re.compile(r"^([dglt])([0-9a-f]{1,32})-([a-z2-7]{10})$")
_SIGNATURE_CHARS = 10
# Without UANET_SECRET_KEY (unit tests, a development stack) tags are still deterministic.
_DEVELOPMENT_KEY = b"uanet-development-message-tags"


@dataclass(frozen=True)
class MessageRef:
    """One sent message: which ledger, and the key of its row there."""

    ledger: LedgerName
    key: str  # the row id (an integer) or, for transactional messages, the message id (UUID)

    @classmethod
    def delivery(cls, row_id: int) -> MessageRef:
        return cls("delivery", str(row_id))

    @classmethod
    def digest(cls, row_id: int) -> MessageRef:
        return cls("digest", str(row_id))

    @classmethod
    def letter(cls, row_id: int) -> MessageRef:
        return cls("letter", str(row_id))

    @classmethod
    def transactional(cls, message_id: str) -> MessageRef:
        return cls("transactional", message_id.replace("-", "").lower())


class MessageTags:
    """Makes and reads the tag of each message; one per dispatcher process (the key is
    derived once)."""

    def __init__(self, secret: str | None, *, domain: str, bounce_address: str | None = None):
        material = secret.encode() if secret else _DEVELOPMENT_KEY
        # A key of its own, so a tag never doubles as any other signature made with the secret.
        self._key = hashlib.sha256(b"uanet message tag\x00" + material).digest()
        self.domain = domain
        local, _, bounce_domain = (bounce_address or "").partition("@")
        self._bounce = (local, bounce_domain) if local and bounce_domain else None

    def tag(self, ref: MessageRef) -> str:
        body = _PREFIX[ref.ledger] + ref.key
        return f"{body}-{self._signature(body)}"

    def read(self, tag: str) -> MessageRef | None:
        """The message a tag names, or None if it is not one of ours (or was tampered with)."""
        found = _TAG.match(tag.strip().lower())
        if found is None:
            return None
        letter, key, signature = found.groups()
        if not hmac.compare_digest(signature, self._signature(letter + key)):
            return None
        return MessageRef(_LEDGER[letter], key)

    # ---- Message-ID -----------------------------------------------------------------------

    def message_id(self, ref: MessageRef) -> str:
        """The Message-ID header's value, angle brackets included."""
        return f"<{self.tag(ref)}@{self.domain}>"

    def from_message_id(self, value: str) -> MessageRef | None:
        """The message a Message-ID (with or without brackets, any domain) names."""
        local = value.strip().strip("<>").rpartition("@")[0]
        return self.read(local) if local else None

    # ---- VERP -----------------------------------------------------------------------------

    @property
    def verp_enabled(self) -> bool:
        return self._bounce is not None

    def envelope_sender(self, ref: MessageRef) -> str | None:
        """``bounces+<tag>@domain`` for this message; None without UANET_BOUNCE_ADDRESS."""
        if self._bounce is None:
            return None
        local, domain = self._bounce
        return f"{local}+{self.tag(ref)}@{domain}"

    def from_bounce_address(self, address: str) -> MessageRef | None:
        """The message a bounce was addressed for (``bounces+<tag>@domain``), or None."""
        if self._bounce is None:
            return None
        local, _, domain = address.strip().strip("<>").rpartition("@")
        base, plus, tag = local.partition("+")
        expected_local, expected_domain = self._bounce
        if not plus or base.lower() != expected_local.lower():
            return None
        if domain.lower() != expected_domain.lower():
            return None
        return self.read(tag)

    def _signature(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()
        return base64.b32encode(digest).decode("ascii").lower()[:_SIGNATURE_CHARS]
