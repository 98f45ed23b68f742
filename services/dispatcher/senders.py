"""The two ways out, each behind a small interface with a result that says what the ledger should
do (sent, failed for good, or try again later): ``EmailSender`` (``smtp_sender`` is the real one)
and ``SmsSender`` (Twilio, here).

Neither adapter raises for a delivery problem and neither logs an address or a number.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client as TwilioClient

from shared.settings import Settings

log = logging.getLogger(__name__)

SuppressReason = Literal["hard_bounce", "opted_out"]
TWILIO_OPTED_OUT = 21610


@dataclass(frozen=True)
class SendResult:
    outcome: Literal["sent", "failed", "temporary"]
    provider_message_id: str | None = None
    error_code: str | None = None
    # Set when the address must never be contacted again.
    suppress: SuppressReason | None = None

    @classmethod
    def sent(cls, provider_message_id: str | None = None) -> SendResult:
        return cls("sent", provider_message_id)

    @classmethod
    def failed(cls, code: str, suppress: SuppressReason | None = None) -> SendResult:
        return cls("failed", error_code=code, suppress=suppress)

    @classmethod
    def temporary(cls, code: str) -> SendResult:
        return cls("temporary", error_code=code)


class EmailSender(Protocol):
    async def send(self, sender: str, recipient: str, message: bytes) -> SendResult: ...

    async def close(self) -> None: ...


class SmsSender(Protocol):
    async def send(self, to: str, body: str) -> SendResult: ...

    async def close(self) -> None: ...


# ---- Twilio ---------------------------------------------------------------------------------


class TwilioSmsSender:
    """Twilio's own async client, pointed at ``UANET_TWILIO_API_BASE``."""

    def __init__(self, settings: Settings, *, timeout: float = 15.0) -> None:
        self.settings = settings
        self.status_callback = f"{settings.dispatcher_public_url}/webhooks/twilio/status"
        self._warned = False
        self._http: AsyncTwilioHttpClient | None = None
        self._client: TwilioClient | None = None
        if settings.twilio_enabled and settings.twilio_from:
            # The twilio package logs every request at INFO; keep ours to warnings.
            quiet = logging.getLogger("uanet.twilio.http")
            quiet.setLevel(logging.WARNING)
            self._http = AsyncTwilioHttpClient(timeout=timeout, logger=quiet)
            token = settings.twilio_auth_token
            self._client = TwilioClient(
                settings.twilio_account_sid,
                token.get_secret_value() if token else None,
                http_client=self._http,
            )
            # Every REST call goes through the Api domain's base URL (twilio 9.x).
            self._client.api.base_url = settings.twilio_api_base

    async def send(self, to: str, body: str) -> SendResult:
        if self._client is None:
            if not self._warned:
                log.warning("Twilio credentials or sending number missing: SMS wait for them")
                self._warned = True
            return SendResult.temporary("twilio:not_configured")
        sender = self.settings.twilio_from or ""
        route = {"messaging_service_sid": sender} if sender.startswith("MG") else {"from_": sender}
        try:
            message = await self._client.messages.create_async(
                to=to, body=body, status_callback=self.status_callback, **route
            )
        except TwilioRestException as exc:
            return twilio_result(exc.status, exc.code)
        except (TwilioException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("Twilio unreachable: %s", type(exc).__name__)
            return SendResult.temporary("twilio:unavailable")
        return SendResult.sent(message.sid)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()


def twilio_result(status: int, code: int | None) -> SendResult:
    """Contract §5: 21610 opts the number out; 429 and 5xx come back later; other 4xx fail."""
    label = f"twilio:{code or status}"
    if code == TWILIO_OPTED_OUT:
        return SendResult.failed(label, "opted_out")
    if status == 429 or status >= 500:
        return SendResult.temporary(label)
    return SendResult.failed(label)
