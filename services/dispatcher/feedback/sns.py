"""Amazon SNS message signatures (how SES bounce, complaint and delivery notifications arrive).

SNS signs each message with the key of a certificate it names by URL (``SigningCertURL``). That
URL is only believed, and fetched, when it is exactly
``https://sns.<region>.amazonaws.com/SimpleNotificationService-<hex>.pem`` for a real AWS region
(no query, no fragment, no user, no port): any other host under amazonaws.com (an S3 bucket,
``sns.s3.amazonaws.com``, is one anyone can name) or path could serve an attacker's key. The
``SubscribeURL`` we visit to confirm a subscription must be on such a host too. Both go through
``SnsGateway``, so tests hand in one with a certificate they made.
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

# The AWS regions SNS runs in (docs.aws.amazon.com/general/latest/gr/sns.html); a new region
# is added here before its feedback is used.
AWS_REGIONS = frozenset(
    {
        "af-south-1",
        "ap-east-1",
        "ap-east-2",
        "ap-northeast-1",
        "ap-northeast-2",
        "ap-northeast-3",
        "ap-south-1",
        "ap-south-2",
        "ap-southeast-1",
        "ap-southeast-2",
        "ap-southeast-3",
        "ap-southeast-4",
        "ap-southeast-5",
        "ap-southeast-6",
        "ap-southeast-7",
        "ca-central-1",
        "ca-west-1",
        "eu-central-1",
        "eu-central-2",
        "eu-north-1",
        "eu-south-1",
        "eu-south-2",
        "eu-west-1",
        "eu-west-2",
        "eu-west-3",
        "il-central-1",
        "me-central-1",
        "me-south-1",
        "mx-central-1",
        "sa-east-1",
        "us-east-1",
        "us-east-2",
        "us-gov-east-1",
        "us-gov-west-1",
        "us-west-1",
        "us-west-2",
    }
)
AWS_CHINA_REGIONS = frozenset({"cn-north-1", "cn-northwest-1"})  # under amazonaws.com.cn
_SNS_HOST = re.compile(r"sns\.([a-z0-9-]{1,40})\.amazonaws\.com(\.cn)?")
_PRINTABLE = re.compile(r"[!-~]{1,2048}")
_CERTIFICATE_PATH = re.compile(r"/SimpleNotificationService-[0-9a-f]{1,64}\.pem")
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


def _sns_host(netloc: str) -> bool:
    """``sns.<a real region>.amazonaws.com`` exactly as written: no user, no port, no dot after."""
    found = _SNS_HOST.fullmatch(netloc)
    if found is None:
        return False
    region, china = found.group(1), found.group(2)
    return region in (AWS_CHINA_REGIONS if china else AWS_REGIONS)


def sns_url_allowed(url: str) -> bool:
    """``https://sns.<region>.amazonaws.com/...`` and nothing else (no port, no user)."""
    if _PRINTABLE.fullmatch(url) is None:  # urlsplit drops tabs and newlines; httpx would not
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme == "https" and _sns_host(parts.netloc) and "#" not in url


def certificate_url_allowed(url: str) -> bool:
    """``https://sns.<region>.amazonaws.com/SimpleNotificationService-<hex>.pem``, no query."""
    if not sns_url_allowed(url) or "?" in url:
        return False
    return _CERTIFICATE_PATH.fullmatch(urlsplit(url).path) is not None


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
