"""The SMTP sender against relays on loopback that offer PIPELINING or not, SMTPUTF8 or not, and
close with 421: what arrived in which TCP read, and which result each message got.

aiosmtpd does not offer PIPELINING, so ``Relay`` is a small SMTP server written for these tests.
It answers everything it has read in one write (as Postfix does) and records the commands of
each TCP read, so a test can see which commands the sender wrote together.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from services.dispatcher.senders import SendResult
from services.dispatcher.smtp_sender import SmtpEmailSender
from shared.settings import Settings
from tests.support import SmtpRecorder, free_port

SENDER = "alerts@example.org"
CONTENT = "<content>"  # how a message's content (up to its final dot) shows in ``reads``


def message(n: int) -> bytes:
    return (
        f"From: {SENDER}\r\nTo: m{n}@example.net\r\nSubject: Alert {n}\r\n\r\n"
        f".a line that starts with a dot\r\nBody {n}\r\n"
    ).encode()


@dataclass
class Received:
    mail_from: str
    mail_options: list[str]
    rcpt_tos: list[str]
    content: bytes


@dataclass
class Relay:
    """An SMTP server in the test's own loop."""

    pipelining: bool = True
    smtputf8: bool = False
    # An address answered with this reply to its RCPT instead of 250.
    reply_for: dict[str, str] = field(default_factory=dict)
    # Answer 421 (and close) to the MAIL of the n-th transaction of the whole relay, 1-based.
    close_at_mail: set[int] = field(default_factory=set)
    # More sessions at once than this are turned away with 421 at the greeting.
    max_sessions: int | None = None
    active: int = 0
    turned_away: int = 0
    reads: list[list[str]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    connections: int = 0
    mails: int = 0
    port: int = 0
    _server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._session, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.max_sessions is not None and self.active >= self.max_sessions:
            self.turned_away += 1
            writer.write(b"421 4.7.0 relay.example.net Error: too many connections\r\n")
            writer.close()
            return
        self.connections += 1
        self.active += 1
        writer.write(b"220 relay.example.net ESMTP\r\n")
        buffer = b""
        state: dict[str, object] = {"data": None, "mail": None, "rcpts": [], "options": []}
        try:
            while chunk := await reader.read(65536):
                buffer += chunk
                commands: list[str] = []
                replies: list[bytes] = []
                closing = False
                while not closing:
                    if state["data"] is not None:
                        end = buffer.find(b"\r\n.\r\n")
                        if end < 0:
                            break
                        self._deliver(state, buffer[: end + 2])
                        buffer = buffer[end + 5 :]
                        commands.append(CONTENT)
                        replies.append(b"250 2.0.0 Ok: queued")
                        continue
                    line, sep, rest = buffer.partition(b"\r\n")
                    if not sep:
                        break
                    buffer = rest
                    verb = line.split(b" ", 1)[0].split(b":", 1)[0].upper().decode()
                    commands.append(verb)
                    reply = self._answer(verb, line.decode("utf-8"), state)
                    replies.append(reply)
                    closing = reply.startswith(b"421") or verb == "QUIT"
                if commands:
                    self.reads.append(commands)
                if replies:
                    writer.write(b"".join(r + b"\r\n" for r in replies))
                    await writer.drain()
                if closing:
                    break
        except ConnectionError:
            pass
        finally:
            self.active -= 1
            writer.close()

    def _answer(self, verb: str, line: str, state: dict[str, object]) -> bytes:
        if verb == "EHLO":
            extensions = ["relay.example.net", "SIZE 10240000", "8BITMIME"]
            extensions += ["PIPELINING"] if self.pipelining else []
            extensions += ["SMTPUTF8"] if self.smtputf8 else []
            lines = [f"250-{e}" for e in extensions[:-1]] + [f"250 {extensions[-1]}"]
            return "\r\n".join(lines).encode()
        if verb == "MAIL":
            self.mails += 1
            if self.mails in self.close_at_mail:
                return b"421 4.7.0 Too many messages on this connection, closing"
            if state["mail"] is not None:
                return b"503 5.5.1 Error: nested MAIL command"
            address, _, options = line[len("MAIL FROM:") :].partition(" ")
            if not address.isascii() and "SMTPUTF8" not in options.split():
                return b"553 5.6.7 Address needs SMTPUTF8"
            state.update(mail=address.strip("<>"), rcpts=[], options=options.split())
            return b"250 2.1.0 Ok"
        if verb == "RCPT":
            if state["mail"] is None:
                return b"503 5.5.1 Error: need MAIL command"
            address = line[len("RCPT TO:") :].strip("<>")
            if address in self.reply_for:
                return self.reply_for[address].encode()
            rcpts = state["rcpts"]
            assert isinstance(rcpts, list)
            rcpts.append(address)
            return b"250 2.1.5 Ok"
        if verb == "DATA":
            if not state["rcpts"]:
                return b"554 5.5.1 Error: no valid recipients"
            state["data"] = b""
            return b"354 End data with <CR><LF>.<CR><LF>"
        if verb == "RSET":
            state.update(mail=None, rcpts=[], data=None)
            return b"250 2.0.0 Ok"
        if verb == "QUIT":
            return b"221 2.0.0 Bye"
        return b"502 5.5.2 Error: command not recognized"

    def _deliver(self, state: dict[str, object], content: bytes) -> None:
        mail, rcpts, options = state["mail"], state["rcpts"], state["options"]
        assert isinstance(mail, str) and isinstance(rcpts, list) and isinstance(options, list)
        self.received.append(Received(mail, options, list(rcpts), content))
        state.update(mail=None, rcpts=[], data=None)


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    server = Relay()
    await server.start()
    yield server
    await server.stop()


def sender_for(port: int, **kwargs: object) -> SmtpEmailSender:
    settings = Settings(_env_file=None, smtp_host="127.0.0.1", smtp_port=port)  # type: ignore[call-arg]
    return SmtpEmailSender(settings, **kwargs)  # type: ignore[arg-type]


async def send_all(sender: SmtpEmailSender, recipients: list[str]) -> list[SendResult]:
    """Everything queued at once, as the dispatcher's workers do."""
    try:
        return list(
            await asyncio.gather(
                *(sender.send(SENDER, r, message(i)) for i, r in enumerate(recipients))
            )
        )
    finally:
        await sender.close()


async def test_pipelining_groups_the_envelope_and_puts_the_next_behind_the_content(
    relay: Relay,
) -> None:
    recipients = [f"m{i}@example.net" for i in range(4)]
    results = await send_all(sender_for(relay.port, pool_size=1), recipients)
    assert [r.outcome for r in results] == ["sent"] * 4
    # One write per message: the first envelope alone, then each content with the next
    # message's envelope behind it, then the last content (and QUIT, after it).
    assert relay.reads[1:] == [
        ["MAIL", "RCPT", "DATA"],
        [CONTENT, "MAIL", "RCPT", "DATA"],
        [CONTENT, "MAIL", "RCPT", "DATA"],
        [CONTENT, "MAIL", "RCPT", "DATA"],
        [CONTENT],
        ["QUIT"],
    ]
    assert relay.reads[0] == ["EHLO"]
    assert [m.rcpt_tos for m in relay.received] == [[r] for r in recipients]
    # A dot at the start of a line is doubled on the wire (RFC 5321 4.5.2; this relay keeps
    # what it read as it came).
    assert b"\r\n..a line that starts" in relay.received[0].content
    assert relay.received[0].mail_options == [f"SIZE={len(message(0))}"]
    assert relay.connections == 1


async def test_without_pipelining_each_command_waits_for_its_reply() -> None:
    relay = Relay(pipelining=False)
    await relay.start()
    try:
        recipients = [f"m{i}@example.net" for i in range(3)]
        results = await send_all(sender_for(relay.port, pool_size=1), recipients)
    finally:
        await relay.stop()
    assert [r.outcome for r in results] == ["sent"] * 3
    assert all(len(read) == 1 for read in relay.reads), relay.reads
    assert [verb for read in relay.reads for verb in read][:5] == [
        "EHLO",
        "MAIL",
        "RCPT",
        "DATA",
        CONTENT,
    ]
    assert [m.rcpt_tos for m in relay.received] == [[r] for r in recipients]


async def test_refusals_inside_a_pipelined_group_go_to_their_own_recipients(
    relay: Relay,
) -> None:
    relay.reply_for = {
        "gone@example.net": "550 5.1.1 <gone@example.net>: Recipient address rejected",
        "full@example.net": "452 4.2.2 Mailbox full",
    }
    recipients = ["a@example.net", "gone@example.net", "full@example.net", "b@example.net"]
    results = await send_all(sender_for(relay.port, pool_size=1), recipients)
    assert [(r.outcome, r.error_code, r.suppress) for r in results] == [
        ("sent", None, None),
        ("failed", "smtp:550", "hard_bounce"),
        ("temporary", "smtp:452", None),
        ("sent", None, None),
    ]
    # The refused recipients sat in groups behind accepted content; the connection stayed
    # up, a RSET opened each transaction after a refused one.
    assert [CONTENT, "MAIL", "RCPT", "DATA"] in relay.reads
    assert ["RSET", "MAIL", "RCPT", "DATA"] in relay.reads
    assert [m.rcpt_tos for m in relay.received] == [["a@example.net"], ["b@example.net"]]
    assert relay.connections == 1


async def test_a_421_reconnects_and_no_message_fails_for_it(relay: Relay) -> None:
    relay.close_at_mail = {3}
    recipients = [f"m{i}@example.net" for i in range(5)]
    sender = sender_for(relay.port, pool_size=1)
    results = await send_all(sender, recipients)
    assert [r.outcome for r in results] == ["sent"] * 5
    # Each once: what was accepted before the 421 is not sent again on the new connection.
    assert sorted(m.rcpt_tos[0] for m in relay.received) == sorted(recipients)
    assert relay.connections == 2 and sender.connections_opened == 2


async def test_connections_the_relay_turns_away_wait_and_no_message_fails(relay: Relay) -> None:
    relay.max_sessions = 2
    recipients = [f"m{i}@example.net" for i in range(30)]
    sender = sender_for(relay.port, pool_size=5)
    results = await send_all(sender, recipients)
    assert [r.outcome for r in results] == ["sent"] * 30
    assert relay.turned_away >= 1
    assert sorted(m.rcpt_tos[0] for m in relay.received) == sorted(recipients)


async def test_a_connection_is_renewed_after_its_message_limit(relay: Relay) -> None:
    recipients = [f"m{i}@example.net" for i in range(5)]
    sender = sender_for(relay.port, pool_size=1, messages_per_connection=2)
    results = await send_all(sender, recipients)
    assert [r.outcome for r in results] == ["sent"] * 5
    assert relay.connections == 3
    assert sum(read.count("QUIT") for read in relay.reads) == 3
    assert sorted(m.rcpt_tos[0] for m in relay.received) == sorted(recipients)


async def test_connections_open_in_parallel_up_to_the_pool_size(relay: Relay) -> None:
    recipients = [f"m{i}@example.net" for i in range(40)]
    sender = sender_for(relay.port, pool_size=4)
    results = await send_all(sender, recipients)
    assert [r.outcome for r in results] == ["sent"] * 40
    assert relay.connections == 4
    assert sorted(m.rcpt_tos[0] for m in relay.received) == sorted(recipients)


async def test_a_non_ascii_address_uses_smtputf8_when_offered() -> None:
    relay = Relay(smtputf8=True)
    await relay.start()
    try:
        results = await send_all(
            sender_for(relay.port, pool_size=1), ["ñandú@example.net", "m1@example.net"]
        )
    finally:
        await relay.stop()
    assert [r.outcome for r in results] == ["sent", "sent"]
    assert relay.received[0].rcpt_tos == ["ñandú@example.net"]
    assert "SMTPUTF8" in relay.received[0].mail_options
    assert "SMTPUTF8" not in relay.received[1].mail_options


@pytest.mark.parametrize("pipelining", [True, False])
async def test_a_non_ascii_address_fails_alone_without_smtputf8(pipelining: bool) -> None:
    relay = Relay(pipelining=pipelining)
    await relay.start()
    try:
        sender = sender_for(relay.port, pool_size=1)
        results = await send_all(sender, ["a@example.net", "ñandú@example.net", "b@example.net"])
    finally:
        await relay.stop()
    assert [(r.outcome, r.error_code, r.suppress) for r in results] == [
        ("sent", None, None),
        ("failed", "smtp:no_smtputf8", None),
        ("sent", None, None),
    ]
    # Never put on the wire; the connection carried on.
    assert [m.rcpt_tos for m in relay.received] == [["a@example.net"], ["b@example.net"]]
    assert relay.connections == 1 and sender.connections_opened == 1


async def test_a_non_ascii_address_reaches_aiosmtpd_and_the_pool_keeps_working() -> None:
    # The case of issue 11: this address used to break its connection and leak it from the
    # pool. aiosmtpd's controller offers SMTPUTF8; the address goes as UTF-8.
    smtp = SmtpRecorder()
    smtp.start()
    try:
        sender = sender_for(smtp.port, pool_size=1)
        try:
            first = await sender.send(SENDER, "josé@example.net", message(0))
            after = [await sender.send(SENDER, "ana@example.net", message(i)) for i in range(3)]
        finally:
            await sender.close()
    finally:
        smtp.stop()
    assert first.outcome == "sent"
    assert [r.outcome for r in after] == ["sent"] * 3
    assert len(smtp.to("josé@example.net")) == 1
    assert len(smtp.to("ana@example.net")) == 3
    assert sender.connections_opened == 1


async def test_a_cancelled_caller_leaves_the_connection_whole(relay: Relay) -> None:
    sender = sender_for(relay.port, pool_size=1)
    try:
        waiting = [
            asyncio.create_task(sender.send(SENDER, f"m{i}@example.net", message(i)))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        waiting[2].cancel()  # given up before it was sent: never sent
        results = await asyncio.gather(*waiting[:2])
        assert [r.outcome for r in results] == ["sent", "sent"]
        assert (await sender.send(SENDER, "m3@example.net", message(3))).outcome == "sent"
    finally:
        await sender.close()
    assert [m.rcpt_tos[0] for m in relay.received] == [
        "m0@example.net",
        "m1@example.net",
        "m3@example.net",
    ]
    assert relay.connections == 1


class _Authenticator:
    def __call__(
        self, server: object, session: object, envelope: object, mechanism: str, auth_data: object
    ) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"right"
        return AuthResult(success=ok, handled=False)  # aiosmtpd then answers 235 or 535


@pytest.mark.parametrize(("password", "outcome"), [("right", "sent"), ("wrong", "temporary")])
async def test_auth_still_works(password: str, outcome: str) -> None:
    smtp = SmtpRecorder()
    port = free_port()
    controller = Controller(
        smtp,
        hostname="127.0.0.1",
        port=port,
        authenticator=_Authenticator(),
        auth_require_tls=False,
        # One mechanism: aiosmtplib would otherwise go on to LOGIN after PLAIN was refused.
        auth_exclude_mechanism=["LOGIN"],
    )
    controller.start()
    try:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None,
            smtp_host="127.0.0.1",
            smtp_port=port,
            smtp_username="uanet",
            smtp_password=password,
        )
        sender = SmtpEmailSender(settings, pool_size=1, timeout=10)
        try:
            result = await sender.send(SENDER, "ana@example.net", message(0))
        finally:
            await sender.close()
    finally:
        controller.stop()
    assert result.outcome == outcome
    if outcome == "temporary":
        assert result.error_code == "smtp:535" and result.suppress is None
    assert len(smtp.to("ana@example.net")) == (1 if outcome == "sent" else 0)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl, as installed on the machine)."""
    cert, key = tmp_path / "relay.pem", tmp_path / "relay.key"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_starttls_still_works_and_the_session_goes_on_encrypted(
    certificate: tuple[Path, Path],
) -> None:
    # The transport aiosmtplib hands over is then its TLS transport: the transactions after it
    # must go on encrypted, and the relay (requiring STARTTLS) accepts nothing in the clear.
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    smtp = SmtpRecorder()
    port = free_port()
    controller = Controller(
        smtp, hostname="127.0.0.1", port=port, tls_context=server_context, require_starttls=True
    )
    controller.start()
    try:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, smtp_host="127.0.0.1", smtp_port=port, smtp_starttls=True
        )
        sender = SmtpEmailSender(settings, pool_size=1, tls_context=client_context)
        try:
            results = [await sender.send(SENDER, "ana@example.net", message(i)) for i in range(3)]
        finally:
            await sender.close()
    finally:
        controller.stop()
    assert [r.outcome for r in results] == ["sent"] * 3
    assert len(smtp.to("ana@example.net")) == 3
    assert sender.connections_opened == 1
