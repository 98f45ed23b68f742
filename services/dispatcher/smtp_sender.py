"""The real ``EmailSender``: a pool of SMTP connections to the relay, pipelined (RFC 2920) when it
offers it (``smtp_client`` carries the transactions). It never raises for a delivery problem and
never logs an address.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections import deque
from dataclasses import dataclass

from aiosmtplib import SMTPStatus

from services.dispatcher.senders import SendResult
from services.dispatcher.smtp_client import (
    RelayBusy,
    RelayGone,
    RelayRefused,
    SmtpConnection,
    message_content,
)
from shared.settings import Settings

log = logging.getLogger(__name__)


# Envelope addresses: no controls, spaces or angle brackets (they would end or split a command).
_UNFIT_ADDRESS = re.compile(r"[\x00-\x20<>\x7f]")
# A lane with nothing to send for this long says QUIT (relays drop idle sessions anyway).
IDLE_SECONDS = 30.0
# A message put back because its connection broke before its content went out (or the relay
# said 421) goes on another connection, at most this many times; then it comes back temporary.
REQUEUE_LIMIT = 5
# A lane the relay turned away (421 at the greeting) waits this long, doubling, before trying.
BUSY_BACKOFF = (0.2, 5.0)


@dataclass(eq=False, slots=True)
class _Job:
    sender: str
    recipient: str
    message: bytes
    future: asyncio.Future[SendResult]
    requeued: int = 0

    def resolve(self, result: SendResult) -> None:
        if not self.future.done():  # the caller may have given up (cancelled) meanwhile
            self.future.set_result(result)


class SmtpEmailSender:
    """A pool of up to ``pool_size`` SMTP connections ("lanes"), each a task that sends the
    queued messages one after the other and pipelines them when the relay offers PIPELINING
    (RFC 2920): a message's MAIL, RCPT and DATA go in one write, behind the previous message's
    content, so a busy connection costs one round trip a message instead of four.

    ``send`` queues the message and returns its result as soon as the relay has answered that
    message. A lane carries on if its caller is cancelled, so a connection is never left in the
    middle of a transaction. Refusals of a sender, recipient or message leave the connection
    open (RSET); a 421 or a broken connection puts the messages whose content had not gone out
    back in the queue for another connection, never failing them for it.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        pool_size: int | None = None,
        timeout: float = 30.0,
        messages_per_connection: int | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.pool_size = pool_size or settings.smtp_concurrency
        self.timeout = timeout
        self.messages_per_connection = (
            settings.smtp_messages_per_connection
            if messages_per_connection is None
            else messages_per_connection
        )
        self.tls_context = tls_context
        # Connections opened so far (tests read it).
        self.connections_opened = 0
        self._jobs: deque[_Job] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._lanes: set[asyncio.Task[None]] = set()
        self._open_connections: set[SmtpConnection] = set()
        self._opening = 0
        self._closing = False

    async def send(self, sender: str, recipient: str, message: bytes) -> SendResult:
        if _UNFIT_ADDRESS.search(recipient) or _UNFIT_ADDRESS.search(sender):
            return SendResult.failed("invalid_address")
        if self._closing:
            return SendResult.temporary("smtp:unavailable")
        job = _Job(sender, recipient, message, asyncio.get_running_loop().create_future())
        self._jobs.append(job)
        self._wake()
        return await job.future

    async def close(self) -> None:
        """Finish what is on the wire, QUIT every connection; what is still queued comes back
        temporary (it was not sent)."""
        self._closing = True
        while self._jobs:
            self._jobs.popleft().resolve(SendResult.temporary("smtp:unavailable"))
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
        lanes = list(self._lanes)
        if lanes:
            _, late = await asyncio.wait(lanes, timeout=self.timeout)
            for lane in late:
                lane.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # ---- the queue ------------------------------------------------------------------------

    def _wake(self) -> None:
        """A job is waiting: hand it to an idle lane, or open another connection."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if len(self._lanes) < self.pool_size and not self._closing:
            lane = asyncio.get_running_loop().create_task(self._lane())
            self._lanes.add(lane)
            lane.add_done_callback(self._lane_done)

    def _lane_done(self, lane: asyncio.Task[None]) -> None:
        self._lanes.discard(lane)
        if self._jobs and not self._closing:
            self._wake()

    def _take(self) -> _Job | None:
        """The next job still wanted, without waiting."""
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                return job
        return None

    async def _work(self) -> bool:
        """Wait until a job is queued: False when idle too long, or closing."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + IDLE_SECONDS
        while True:
            while self._jobs and self._jobs[0].future.done():
                self._jobs.popleft()  # its caller gave up before it was sent
            if self._closing:
                return False
            if self._jobs:
                return True
            if loop.time() >= deadline:
                return False
            waiter = loop.create_future()
            self._idle.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                pass
            finally:
                if not waiter.done():
                    waiter.cancel()

    def _requeue(self, job: _Job, code: str) -> None:
        """Back to the front of the queue for another connection: it was not sent."""
        if job.future.done():
            return
        job.requeued += 1
        if job.requeued > REQUEUE_LIMIT or self._closing:
            job.resolve(SendResult.temporary(code))
            return
        self._jobs.appendleft(job)
        self._wake()

    def _anyone_connected(self) -> bool:
        """Another connection is open or opening (the relay takes some of us)."""
        self._open_connections = {c for c in self._open_connections if not c.closed}
        return bool(self._open_connections) or self._opening > 0

    # ---- a lane: one connection at a time -------------------------------------------------

    async def _lane(self) -> None:
        busy = 0
        connection: SmtpConnection | None = None
        try:
            while await self._work():
                if connection is None or connection.closed:
                    try:
                        connection = await self._open()
                    except RelayBusy:
                        # Too many connections: the others carry on, this lane waits. If no
                        # other connection is open or opening, the relay is refusing us: the
                        # first message comes back later rather than waiting here.
                        if not self._anyone_connected() and (job := self._take()) is not None:
                            job.resolve(SendResult.temporary("smtp:421"))
                        await asyncio.sleep(min(BUSY_BACKOFF[0] * 2**busy, BUSY_BACKOFF[1]))
                        busy += 1
                        continue
                    except (RelayRefused, RelayGone) as exc:
                        # The relay is down or refuses us: one message says so (and the
                        # ledger tries it later); the next job tries to connect again.
                        if (job := self._take()) is not None:
                            job.resolve(_session_result(exc))
                        continue
                    busy = 0
                job = self._take()
                if job is None:
                    continue  # another lane was quicker
                if connection.pipelining:
                    await self._pipelined(connection, job)
                else:
                    await self._lockstep(connection, job)
                if not connection.closed and self._exhausted(connection):
                    await connection.quit()
        except Exception:
            # A bug, not the relay: say so; the queued jobs go to another lane (_lane_done).
            log.exception("SMTP lane failed")
        finally:
            if connection is not None:
                if connection.closed:
                    connection.close()
                else:
                    try:
                        await connection.quit()
                    except BaseException:
                        connection.close()
                        raise

    async def _open(self) -> SmtpConnection:
        s = self.settings
        self._opening += 1
        try:
            connection = await SmtpConnection.open(
                host=s.smtp_host,
                port=s.smtp_port,
                timeout=self.timeout,
                start_tls=s.smtp_starttls,
                username=s.smtp_username or None,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                tls_context=self.tls_context,
            )
        finally:
            self._opening -= 1
        self.connections_opened += 1
        self._open_connections.add(connection)
        return connection

    def _exhausted(self, connection: SmtpConnection) -> bool:
        limit = self.messages_per_connection
        return bool(limit) and connection.started >= limit

    def _more(self, connection: SmtpConnection) -> _Job | None:
        """The next job for this connection, if one is waiting and the connection may take it."""
        if self._closing or connection.closed or self._exhausted(connection):
            return None
        return self._take()

    def _envelope(self, connection: SmtpConnection, job: _Job) -> tuple[bytes, bytes] | None:
        """MAIL and RCPT of one message, or None (the job resolved) if this relay cannot
        carry its addresses."""
        options = b" SIZE=%d" % len(job.message) if connection.size else b""
        if not (job.sender.isascii() and job.recipient.isascii()):
            if not connection.smtputf8:
                # RFC 6531: without SMTPUTF8 the address cannot be given; the connection stays.
                log.info("SMTP relay does not offer SMTPUTF8: a non-ASCII address failed")
                job.resolve(SendResult.failed("smtp:no_smtputf8"))
                return None
            options += b" SMTPUTF8" + (b" BODY=8BITMIME" if connection.eightbit else b"")
        connection.started += 1
        return (
            b"MAIL FROM:<%s>%s\r\n" % (job.sender.encode(), options),
            b"RCPT TO:<%s>\r\n" % job.recipient.encode(),
        )

    def _next_envelope(
        self, connection: SmtpConnection, job: _Job | None
    ) -> tuple[_Job | None, tuple[bytes, bytes] | None]:
        """``job`` or the first job after it this connection can carry, with its envelope."""
        while job is not None:
            envelope = self._envelope(connection, job)
            if envelope is not None:
                return job, envelope
            job = self._more(connection)
        return None, None

    async def _pipelined(self, connection: SmtpConnection, first: _Job) -> None:
        """Send ``first`` and whatever is queued behind it. Each write carries the content of
        the message whose DATA was accepted (RFC 2920 lets content open a group) and the next
        message's RSET if needed, MAIL, RCPT and DATA (last: its 354 must precede the content).
        Each reply is read as it comes, so a message's result is out before the next one's."""
        pending: _Job | None = None  # DATA accepted: its content goes out in the next write
        job, envelope = self._next_envelope(connection, first)
        while pending is not None or job is not None:
            on_wire: _Job | None = None  # content written, no reply yet
            try:
                parts: list[bytes] = []
                if pending is not None:
                    parts.append(message_content(pending.message))
                if job is not None and envelope is not None:
                    if connection.needs_reset:
                        parts.append(b"RSET\r\n")
                    parts += (*envelope, b"DATA\r\n")
                await connection.write(b"".join(parts))
                on_wire, pending = pending, None
                if on_wire is not None:
                    done = await connection.reply()
                    if done.code == 421:
                        raise _Closing
                    on_wire.resolve(_data_result(done.code))
                    on_wire = None
                if job is not None:
                    if connection.needs_reset:
                        if (await connection.reply()).code == 421:
                            raise _Closing
                        connection.needs_reset = False
                    accepted = await self._envelope_replies(connection, job)
                    if accepted:
                        pending = job
            except (_Closing, RelayGone) as exc:
                # Content on the wire and no answer: in doubt, the ledger decides (later).
                if on_wire is not None:
                    on_wire.resolve(SendResult.temporary("smtp:unavailable"))
                # Only an envelope went (or nothing): not delivered, another connection sends.
                code = "smtp:421" if isinstance(exc, _Closing) else "smtp:unavailable"
                for waiting in (pending, job):
                    if waiting is not None:
                        self._requeue(waiting, code)
                connection.abort()
                return
            except Exception:
                log.exception("SMTP transaction failed unexpectedly")
                for held in (on_wire, pending, job):
                    if held is not None:
                        held.resolve(SendResult.temporary("internal"))
                connection.abort()
                return
            if pending is not None and not self._jobs:
                # The callers just answered are about to queue their next message: one turn
                # of the loop lets it ride behind this content instead of a round trip later.
                await asyncio.sleep(0)
            job, envelope = self._next_envelope(connection, self._more(connection))

    async def _lockstep(self, connection: SmtpConnection, first: _Job) -> None:
        """Without PIPELINING: each command waits for its reply."""
        job, envelope = self._next_envelope(connection, first)
        while job is not None and envelope is not None:
            content_sent = False
            try:
                if connection.needs_reset:
                    await connection.write(b"RSET\r\n")
                    if (await connection.reply()).code == 421:
                        raise _Closing
                    connection.needs_reset = False
                accepted = await self._envelope_replies(connection, job, lockstep=envelope)
                if accepted:
                    await connection.write(message_content(job.message))
                    content_sent = True
                    done = await connection.reply()
                    if done.code == 421:
                        raise _Closing
                    job.resolve(_data_result(done.code))
            except (_Closing, RelayGone) as exc:
                if content_sent:
                    job.resolve(SendResult.temporary("smtp:unavailable"))
                else:
                    code = "smtp:421" if isinstance(exc, _Closing) else "smtp:unavailable"
                    self._requeue(job, code)
                connection.abort()
                return
            except Exception:
                log.exception("SMTP transaction failed unexpectedly")
                job.resolve(SendResult.temporary("internal"))
                connection.abort()
                return
            job, envelope = self._next_envelope(connection, self._more(connection))

    async def _envelope_replies(
        self,
        connection: SmtpConnection,
        job: _Job,
        *,
        lockstep: tuple[bytes, bytes] | None = None,
    ) -> bool:
        """The replies to MAIL, RCPT and DATA of ``job``, pipelined (already written) or in
        ``lockstep`` (each command written here once the previous one was accepted); resolves
        ``job`` if refused, noting a transaction left open. True if DATA was accepted. Raises
        _Closing on a 421."""
        if lockstep is not None:
            await connection.write(lockstep[0])
        mail = await connection.reply()
        if mail.code == 421:
            raise _Closing
        if lockstep is not None:
            if mail.code != SMTPStatus.completed:
                job.resolve(_sender_refused(mail.code))
                return False
            await connection.write(lockstep[1])
        recipient = await connection.reply()
        if recipient.code == 421:
            raise _Closing
        if lockstep is not None:
            if recipient.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
                job.resolve(_smtp_result(recipient.code, recipient_level=True))
                connection.needs_reset = True
                return False
            await connection.write(b"DATA\r\n")
        data = await connection.reply()
        if data.code == 421:
            raise _Closing
        if mail.code != SMTPStatus.completed:
            job.resolve(_sender_refused(mail.code))
        elif recipient.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
            # This message's own RCPT reply: the replies come back in the order of the commands.
            job.resolve(_smtp_result(recipient.code, recipient_level=True))
        elif data.code != SMTPStatus.start_input:
            job.resolve(_smtp_result(data.code, recipient_level=False))
        else:
            return True
        if data.code == SMTPStatus.start_input:
            # A relay that took DATA with no valid recipient: RFC 2920 3.1, end it with a lone
            # dot (an empty message, which it must then refuse).
            await connection.write(b".\r\n")
            if (await connection.reply()).code == 421:
                raise _Closing
        connection.needs_reset = mail.code == SMTPStatus.completed
        return False


class _Closing(Exception):
    """The relay said 421: it is closing this connection."""


def _sender_refused(code: int) -> SendResult:
    # A refused sender is our configuration, not the recipient: never suppress anyone for it,
    # try again later.
    log.error("SMTP server refused our sender (%s)", code)
    return SendResult.temporary(f"smtp:{code}")


def _data_result(code: int) -> SendResult:
    if code == SMTPStatus.completed:
        return SendResult.sent()
    return _smtp_result(code, recipient_level=False)


def _session_result(exc: RelayRefused | RelayGone) -> SendResult:
    """A session that could not be opened is the relay's or our configuration's problem, never
    the message's: it comes back later."""
    if isinstance(exc, RelayRefused):
        what = "our login" if exc.login else "the session"
        log.error("SMTP server refused %s (%s)", what, exc.code)
        return SendResult.temporary(f"smtp:{exc.code}")
    log.warning("SMTP unavailable: %s", exc)
    return SendResult.temporary("smtp:unavailable")


def _smtp_result(code: int, *, recipient_level: bool) -> SendResult:
    if 400 <= code < 500:
        return SendResult.temporary(f"smtp:{code}")
    if code >= 500:
        # Only a refused recipient is a hard bounce; a 5xx to the whole message (content,
        # size) fails this message without banning the address.
        return SendResult.failed(f"smtp:{code}", "hard_bounce" if recipient_level else None)
    return SendResult.temporary(f"smtp:{code}")
