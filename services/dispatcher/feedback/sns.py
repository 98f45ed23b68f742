"""Amazon SNS message signatures (how SES bounce, complaint and delivery notifications arrive).

SNS signs each message with the key of a certificate it names by URL (``SigningCertURL``). That
URL is only believed, and fetched, when it is an ``https://sns.<region>.amazonaws.com/...pem``
address; the same rule guards the ``SubscribeURL`` we visit to confirm a subscription. Both go
through ``SnsGateway``, so tests hand in one with a certificate they made.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

_SNS_HOST = re.compile(r"^sns\.[a-z0-9-]{1,40}\.amazonaws\.com(\.cn)?$")
# The fields SNS signs, in order, per message type (absent optional ones are skipped).
_SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
    "UnsubscribeConfirmation": (
        "Message",
        "MessageId",
        "SubscribeURL",
        "Timestamp",
        "Token",
        "TopicArn",
        "Type",
    ),
}
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_CACHED_CERTIFICATES = 32


class UntrustedUrl(ValueError):
    """A URL that is not SNS's own: never fetched."""


def sns_url_allowed(url: str) -> bool:
    """``https://sns.<region>.amazonaws.com/...`` and nothing else (no other port, no user)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        return False
    if port not in (None, 443):
        return False
    return bool(parts.hostname and _SNS_HOST.match(parts.hostname))


def certificate_url_allowed(url: str) -> bool:
    return sns_url_allowed(url) and urlsplit(url).path.endswith(".pem")


class SnsGateway(Protocol):
    async def certificate(self, url: str) -> bytes:
        """The PEM certificate at an SNS ``SigningCertURL``."""
        ...

    async def confirm_subscription(self, url: str) -> None:
        """Visit an SNS ``SubscribeURL``."""
        ...


class HttpsSnsGateway:
    """The real one: HTTPS to SNS only, certificates cached by URL (SNS rotates them rarely)."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(timeout=10.0, follow_redirects=False)
        self._certificates: OrderedDict[str, bytes] = OrderedDict()

    async def certificate(self, url: str) -> bytes:
        if not certificate_url_allowed(url):
            raise UntrustedUrl("not an SNS certificate URL")
        cached = self._certificates.get(url)
        if cached is not None:
            self._certificates.move_to_end(url)
            return cached
        response = await self._client.get(url)
        response.raise_for_status()
        self._certificates[url] = response.content
        while len(self._certificates) > _CACHED_CERTIFICATES:
            self._certificates.popitem(last=False)
        return response.content

    async def confirm_subscription(self, url: str) -> None:
        if not sns_url_allowed(url):
            raise UntrustedUrl("not an SNS subscription URL")
        response = await self._client.get(url)
        response.raise_for_status()

    async def close(self) -> None:
        await self._client.aclose()


def string_to_sign(message: dict[str, Any]) -> bytes | None:
    fields = _SIGNED_FIELDS.get(str(message.get("Type")))
    if fields is None:
        return None
    lines: list[str] = []
    for name in fields:
        value = message.get(name)
        if value is None:
            if name == "Subject":
                continue
            return None
        lines.append(f"{name}\n{value}\n")
    return "".join(lines).encode("utf-8")


async def signature_valid(message: dict[str, Any], gateway: SnsGateway) -> bool:
    """Whether SNS signed this message (SignatureVersion 1: SHA1, 2: SHA256, both RSA)."""
    algorithm = _HASHES.get(str(message.get("SignatureVersion")))
    signed = string_to_sign(message)
    url = message.get("SigningCertURL")
    signature = message.get("Signature")
    if algorithm is None or signed is None:
        return False
    if not isinstance(url, str) or not isinstance(signature, str):
        return False
    if not certificate_url_allowed(url):
        return False
    try:
        pem = await gateway.certificate(url)
        key = x509.load_pem_x509_certificate(pem).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            return False
        key.verify(base64.b64decode(signature), signed, padding.PKCS1v15(), algorithm())
    except (InvalidSignature, ValueError, binascii.Error, httpx.HTTPError):
        return False
    return True
