"""One SMTP connection that can pipeline (RFC 2920): aiosmtplib opens the session, this module
carries the transactions.

aiosmtplib does the part with many cases and little traffic: connect, greeting, EHLO/HELO,
STARTTLS (its TLS context and certificate checks), AUTH (every mechanism it knows). It cannot
carry pipelined transactions: its protocol keeps one response waiter and drops whatever arrives
while no command is awaiting a reply (a guard against injected responses), so the replies to a
pipelined group, arriving together in one TCP segment, would be lost. Once the session is open
the transport is handed over (``BaseTransport.set_protocol``, the same transport, TLS or not) to
``_ReplyReader`` here, which parses every reply as it arrives and queues them in order; the
sender writes whole groups and reads their replies back one by one.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import deque
from typing import NamedTuple, cast

import aiosmtplib

# A whole reply, continuation lines included, may not exceed this (bounds memory).
MAX_REPLY = 32 * 1024
# Lone LF or lone CR in a message: the dispatcher's bytes are CRLF already; letters and others
# may not be. A bare CR is normalised too (defence in depth): relays that read it as a line end
# could otherwise be shown an end of DATA (``\r.\r``) we never sent (SMTP smuggling).
_LONE_CR_OR_LF = re.compile(rb"\r(?!\n)|(?<!\r)\n")


class Reply(NamedTuple):
    code: int
    text: str


class RelayGone(Exception):
    """The connection broke or timed out: replies still expected will not come."""


class RelayBusy(Exception):
    """The relay answered 421 while opening (too many connections, closing): try again later."""


class RelayRefused(Exception):
    """The relay refused the session (greeting, EHLO, STARTTLS or AUTH)."""

    def __init__(self, code: int, *, login: bool = False) -> None:
        super().__init__(code)
        self.code = code
        self.login = login


class _ReplyReader(asyncio.Protocol):
    """Parses replies as they arrive and queues them in order; follows write flow control."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._buffer = bytearray()
        self._lines: list[bytes] = []
        self.replies: deque[Reply] = deque()
        self.lost = False
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            if len(line) < 3 or not line[:3].isdigit():
                self._broken()
                return
            self._lines.append(line[4:].rstrip(b"\r"))
            if line[3:4] != b"-":
                text = b"\n".join(self._lines).decode("utf-8", "replace")
                self.replies.append(Reply(int(line[:3]), text))
                self._lines = []
        del buffer[:start]
        if len(buffer) + sum(map(len, self._lines)) > MAX_REPLY:
            self._broken()
            return
        if self.replies:
            self._wake()

    def _broken(self) -> None:
        # Not SMTP: nothing more on this connection can be trusted.
        self.lost = True
        self.transport.abort()
        self._wake()

    def eof_received(self) -> bool:
        self.lost = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def reply(self) -> Reply:
        while not self.replies:
            if self.lost:
                raise RelayGone
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self.replies.popleft()

    async def drain(self) -> None:
        while self._paused and not self.lost:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained


class SmtpConnection:
    """An open, greeted (and, as configured, encrypted and logged-in) SMTP session."""

    def __init__(self, reader: _ReplyReader, extensions: dict[str, str], timeout: float) -> None:
        self._reader = reader
        self.timeout = timeout
        self.pipelining = "pipelining" in extensions
        self.smtputf8 = "smtputf8" in extensions
        self.eightbit = "8bitmime" in extensions
        self.size = "size" in extensions
        # Transactions begun (MAIL sent) on this connection, for the per-connection cap.
        self.started = 0
        # A refused transaction is still open at the relay: RSET before the next MAIL.
        self.needs_reset = False

    @classmethod
    async def open(
        cls,
        *,
        host: str,
        port: int,
        timeout: float,
        start_tls: bool,
        username: str | None,
        password: str | None,
        tls_context: ssl.SSLContext | None = None,
    ) -> SmtpConnection:
        """Connect, greet, STARTTLS and AUTH through aiosmtplib, then take the transport over.
        Raises RelayBusy (421), RelayRefused (another refusal) or RelayGone (network)."""
        client = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            timeout=timeout,
            # false means plain SMTP: aiosmtplib would otherwise upgrade opportunistically.
            start_tls=start_tls,
            username=username,
            password=password,
            tls_context=tls_context,
        )
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError as exc:
                    if exc.code == 421:
                        raise
                    await client.helo()
        except aiosmtplib.SMTPResponseException as exc:
            client.close()
            if exc.code == 421:
                raise RelayBusy from None
            login = isinstance(exc, aiosmtplib.SMTPAuthenticationError)
            raise RelayRefused(exc.code, login=login) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            client.close()
            raise RelayGone(type(exc).__name__) from None
        transport = cast(asyncio.Transport, client.transport)
        reader = _ReplyReader(transport)
        # From here on every byte the relay sends comes to us; aiosmtplib's client is dropped.
        transport.set_protocol(reader)
        return cls(reader, dict(client.esmtp_extensions), timeout)

    @property
    def closed(self) -> bool:
        return self._reader.lost or self._reader.transport.is_closing()

    async def write(self, data: bytes) -> None:
        if self.closed:
            raise RelayGone
        self._reader.transport.write(data)
        await self._reader.drain()

    async def reply(self) -> Reply:
        """The next reply in order; RelayGone if the connection broke or stayed silent."""
        if self._reader.replies:  # the usual case in a pipelined group: already here
            return self._reader.replies.popleft()
        try:
            async with asyncio.timeout(self.timeout):
                return await self._reader.reply()
        except TimeoutError:
            self.abort()
            raise RelayGone("timeout") from None

    def abort(self) -> None:
        self._reader.lost = True
        self._reader.transport.abort()

    async def quit(self) -> None:
        """QUIT politely, then close whatever the relay says."""
        try:
            if not self.closed:
                await self.write(b"QUIT\r\n")
                await self.reply()
        except RelayGone:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if not self._reader.transport.is_closing():
            self._reader.transport.close()


def message_content(message: bytes) -> bytes:
    """The message as DATA carries it: CRLF line ends (a lone CR or LF becomes CRLF), leading
    dots doubled, the final dot. The common case (CRLF already, no line starting with a dot)
    costs a few scans in C."""
    crlf = message.count(b"\r\n")
    if message.count(b"\n") != crlf or message.count(b"\r") != crlf:
        message = _LONE_CR_OR_LF.sub(b"\r\n", message)
    if message.startswith(b"."):
        message = b"." + message
    message = message.replace(b"\n.", b"\n..")
    if not message.endswith(b"\r\n"):
        message += b"\r\n"
    return message + b".\r\n"
