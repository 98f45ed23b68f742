"""The bounce port: an SMTP server (aiosmtpd) that takes the mail an MTA's transport for the
bounce address hands on (``UANET_BOUNCE_SMTP_PORT``, on ``UANET_BOUNCE_SMTP_HOST``).

Every mail is accepted once it is read: a report we cannot use (an auto-reply, a malformed
mail) is logged, without addresses, and dropped, so the MTA does not keep offering it. Only a
failure of our own (the database away) answers 451, and the MTA tries again later; the report's
key makes that second offer apply once.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import SMTP, Envelope, Session

from services.dispatcher.feedback.mail import read_bounce
from services.dispatcher.feedback.record import FeedbackRecorder

log = logging.getLogger(__name__)

# A bounce quotes at most the returned message; ours are small. Larger is refused at DATA.
MAX_BOUNCE_BYTES = 10 * 1024 * 1024


class _BounceHandler:
    def __init__(self, recorder: FeedbackRecorder) -> None:
        self.recorder = recorder

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        raw = envelope.original_content or envelope.content
        if not isinstance(raw, bytes):
            raw = str(raw or "").encode("utf-8", "replace")
        recipients = [str(address) for address in envelope.rcpt_tos]
        try:
            reports = read_bounce(raw, envelope_recipients=recipients)
        except Exception:  # noqa: BLE001 - unreadable mail is dropped, never bounced back
            log.warning("bounce mail could not be read; dropped", exc_info=False)
            return "250 2.0.0 Dropped"
        if not reports:
            log.info("bounce mail reported nothing to act on")
            return "250 2.0.0 Nothing to do"
        try:
            await self.recorder.record_all(reports)
        except Exception:  # noqa: BLE001 - our side failed: the MTA offers it again later
            log.exception("bounce mail not recorded; the MTA will retry")
            return "451 4.3.0 Try again later"
        return "250 2.0.0 Recorded"


class BouncePort:
    """The server, on the service's own event loop (started and stopped by its lifespan)."""

    def __init__(self, recorder: FeedbackRecorder, *, host: str, port: int) -> None:
        self.recorder = recorder
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        handler = _BounceHandler(self.recorder)

        def protocol() -> SMTP:
            return SMTP(
                handler,
                hostname="uanet-bounces",
                data_size_limit=MAX_BOUNCE_BYTES,
                enable_SMTPUTF8=True,
                loop=loop,
            )

        self._server = await loop.create_server(
            protocol, host=self.host, port=self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("bounce port listening", extra={"port": self.port})

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
