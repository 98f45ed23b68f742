"""The two ways out: SMTP and Twilio, each behind a small interface with a result that says what
the ledger should do (sent, failed for good, or try again later).

Neither adapter raises for a delivery problem and neither logs an address or a number.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import aiohttp
import aiosmtplib
from aiosmtplib import SMTPStatus
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


# ---- SMTP -----------------------------------------------------------------------------------


class SmtpEmailSender:
    """A small pool of open SMTP connections; a connection that saw any error is dropped."""

    def __init__(self, settings: Settings, *, pool_size: int = 8, timeout: float = 30.0) -> None:
        self.settings = settings
        self.pool_size = pool_size
        self.timeout = timeout
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(pool_size)

    async def _connect(self) -> aiosmtplib.SMTP:
        s = self.settings
        client = aiosmtplib.SMTP(
            hostname=s.smtp_host,
            port=s.smtp_port,
            timeout=self.timeout,
            # false means plain SMTP: aiosmtplib would otherwise upgrade opportunistically.
            start_tls=s.smtp_starttls,
            username=s.smtp_username or None,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
        )
        await client.connect()
        if client.is_ehlo_or_helo_needed:
            # Greeted once here, so a transaction needs no check (and SIZE is known).
            try:
                await client.ehlo()
            except aiosmtplib.SMTPHeloError:
                await client.helo()
        return client

    async def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
        async with self._slots:
            client: aiosmtplib.SMTP | None = self._idle.pop() if self._idle else None
            try:
                if client is None or not client.is_connected:
                    client = await self._connect()
                await _transaction(client, sender, recipient, message)
            except aiosmtplib.SMTPRecipientRefused as exc:
                await _discard(client)
                return _smtp_result(exc.code, recipient_level=True)
            except aiosmtplib.SMTPResponseException as exc:
                await _discard(client)
                # A refused sender or failed login is our configuration, not the recipient:
                # never suppress anyone for it, try again later.
                if isinstance(
                    exc, aiosmtplib.SMTPSenderRefused | aiosmtplib.SMTPAuthenticationError
                ):
                    log.error("SMTP server refused our sender or login (%s)", exc.code)
                    return SendResult.temporary(f"smtp:{exc.code}")
                return _smtp_result(exc.code, recipient_level=False)
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                await _discard(client)
                log.warning("SMTP unavailable: %s", type(exc).__name__)
                return SendResult.temporary("smtp:unavailable")
            self._idle.append(client)
            return SendResult.sent()

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


async def _transaction(
    client: aiosmtplib.SMTP, sender: str, recipient: str, message: bytes
) -> None:
    """MAIL, RCPT, DATA for one recipient: what ``sendmail`` does, less what it repeats for
    every message (each address parsed by ``email.utils`` twice, the body normalized twice to
    compute its size), a fifth of the dispatcher's time per message. The bytes are ours, CRLF
    already; the addresses too: a recipient fit for our ``To:`` header (rendering refuses any
    with a space, a control character, ``<``, ``>`` or ``,``), the sender from the settings,
    and aiosmtplib still refuses CR, LF or NUL in a command. A refusal raises
    (SMTPSenderRefused, SMTPRecipientRefused, SMTPDataError); the caller drops the connection
    rather than resetting it."""
    options = [b"SIZE=%d" % len(message)] if client.supports_extension("size") else []
    response = await client.execute_command(b"MAIL", b"FROM:<%s>" % sender.encode(), *options)
    if response.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)
    response = await client.execute_command(b"RCPT", b"TO:<%s>" % recipient.encode("ascii"))
    if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
        raise aiosmtplib.SMTPRecipientRefused(response.code, response.message, recipient)
    await client.data(message)


async def _discard(client: aiosmtplib.SMTP | None) -> None:
    if client is not None and client.is_connected:
        client.close()


def _smtp_result(code: int, *, recipient_level: bool) -> SendResult:
    if 400 <= code < 500:
        return SendResult.temporary(f"smtp:{code}")
    if code >= 500:
        # Only a refused recipient is a hard bounce; a 5xx to the whole message (content,
        # size) fails this message without banning the address.
        return SendResult.failed(f"smtp:{code}", "hard_bounce" if recipient_level else None)
    return SendResult.temporary(f"smtp:{code}")


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
