"""Keys uanet must keep readable (a webhook endpoint's signing secret, a section's key) are
stored sealed with ``UANET_SECRET_KEY`` (Fernet: AES-128-CBC and HMAC-SHA256), so a copy of the
database alone does not let anyone sign as uanet. They are keys, not passwords: a hash would
not let us sign with them."""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken

__all__ = ["InvalidToken", "seal", "unseal"]


def _fernet(secret_key: str) -> Fernet:
    # A key of its own for this use, derived from the deployment's secret.
    digest = hashlib.sha256(b"uanet sealing v1\x00" + secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(secret_key: str, plaintext: str) -> str:
    return _fernet(secret_key).encrypt(plaintext.encode()).decode()


def unseal(secret_key: str, sealed: str) -> str:
    """The plaintext; ``InvalidToken`` if sealed under another ``UANET_SECRET_KEY``."""
    return _fernet(secret_key).decrypt(sealed.encode()).decode()
