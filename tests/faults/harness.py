"""Real processes under faults: an SMTP server that misbehaves on cue, fast seeding, and the
counts a fault test ends on (what the sink accepted, what the ledger says)."""

from __future__ import annotations

import asyncio
import re
import threading
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import func, insert, select

from devtools.latency_proxy import LatencyProxyProcess, start_latency_proxy
from devtools.twilio_fake import FakeTwilio
from services.dispatcher.models import Delivery
from services.subscriptions.models import Subscriber
from shared.db import make_engine, utcnow
from tests.e2e.stack import Stack, open_stack
from tests.support import SmtpRecorder, free_port

CONFIRMED = "confirmed"
_MESSAGE_ID = re.compile(rb"(?im)^Message-ID:[ \t]*(\S+)")

ACTION: dict[str, Any] = {
    "title": "Human rights defender at risk of execution",
    "country": "IR",
    "themes": ["death-penalty"],
    "urgency": "urgent",
    "channels": ["email", "sms"],
    "default_language": "en",
    "audience": {"countries": [], "themes": [], "languages": []},
    "targets": [{"name": "Head of the Judiciary"}],
    "content": {
        "en": {
            "subject": "Urgent Action: stop the execution",
            "summary": "A defender faces execution.",
            "body": "Full case text.",
            "sms": "A defender faces execution in Iran. Act now:",
            "model_letter": "I urge you to halt the execution.",
        }
    },
}


class FaultySmtp(SmtpRecorder):
    """An SMTP server on loopback that only counts (no parsing: thousands a second), and can:
    answer 451 to the first attempt for some addresses, 550 for others for ever, and hold every
    message once it has accepted ``hold_after`` (the DATA reply never comes until released, and
    then it is a 421: the message was never accepted)."""

    def __init__(self) -> None:
        super().__init__()
        self.accepted: Counter[str] = Counter()
        self.attempts: Counter[str] = Counter()
        self.greylist: set[str] = set()  # 451 on the first attempt only
        self.bounce: set[str] = set()  # 550 always
        self.hold_after: int | None = None
        self.held = 0
        self._release = threading.Event()
        # Transactions begun (MAIL) and not yet answered after DATA: sends in flight.
        self.in_flight = 0
        # Each accepted message's Message-ID, per address, in the order accepted.
        self.message_ids: dict[str, list[str]] = defaultdict(list)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.accepted.values())

    def release(self) -> None:
        """Held messages get their 421; from now on everything is accepted again."""
        with self._lock:
            self.hold_after = None
        self._release.set()

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Offer PIPELINING as real relays do (aiosmtpd reads commands in order from its stream
        buffer, so a pipelined group is answered in order): the dispatcher's fastest path, and
        the one with the most sends in flight when a fault strikes."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        with self._lock:
            self.in_flight += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RSET(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        if envelope.mail_from is not None:
            with self._lock:
                self.in_flight = max(self.in_flight - 1, 0)
        return "250 OK"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        address = address.lower()
        with self._lock:
            self.attempts[address] += 1
            first = self.attempts[address] == 1
        if address in self.bounce:
            return "550 5.1.1 No such user"
        if address in self.greylist and first:
            return "451 4.7.1 Greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    def _ended(self) -> None:
        with self._lock:
            self.in_flight = max(self.in_flight - 1, 0)

    async def handle_DATA(  # noqa: N802
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        try:
            return await self._data(envelope)
        finally:
            self._ended()

    async def _data(self, envelope: Envelope) -> str:
        with self._lock:
            holding = self.hold_after is not None and sum(self.accepted.values()) >= (
                self.hold_after
            )
            if holding:
                self.held += 1
        if holding:
            while not self._release.is_set():
                await asyncio.sleep(0.05)
            return "421 4.3.0 Shutting down, message not accepted"
        raw = envelope.original_content or envelope.content or b""
        found = _MESSAGE_ID.search(raw if isinstance(raw, bytes) else raw.encode(), 0, 8192)
        message_id = found.group(1).decode("ascii", "replace") if found else ""
        with self._lock:
            for address in envelope.rcpt_tos:
                self.accepted[address] += 1
                self.message_ids[address].append(message_id)
        return "250 Message accepted"

    def sent_twice(self) -> dict[str, int]:
        """Address -> copies beyond the first."""
        with self._lock:
            return {a: n - 1 for a, n in self.accepted.items() if n > 1}


@dataclass
class FaultStack:
    stack: Stack
    smtp: FaultySmtp
    twilio: FakeTwilio
    database_urls: dict[str, str]
    vhost: str
    extra: list[str] = field(default_factory=list)
    # The relay's distance, when the test put one in front of it.
    proxy: LatencyProxyProcess | None = None

    async def token(self) -> str:
        created = await asyncio.to_thread(
            self.stack.cli, "token", "create", "--role", "admin", "--name", "faults"
        )
        assert created.returncode == 0, created.stderr
        return created.stdout.strip().splitlines()[-1]

    async def publish(self, token: str, **changes: Any) -> str:
        body = {**ACTION, **changes}
        headers = {"Authorization": f"Bearer {token}"}
        base = self.stack.url("publisher") + "/api/v1/actions"
        async with httpx.AsyncClient(timeout=30) as client:
            created = await client.post(base, json=body, headers=headers)
            assert created.status_code == 201, created.text
            action_id: str = created.json()["id"]
            published = await client.post(f"{base}/{action_id}/publish", headers=headers)
            assert published.status_code == 200, published.text
        return action_id

    async def stats(self, token: str, action_id: str) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.get(
                f"{self.stack.url('publisher')}/api/v1/actions/{action_id}/stats",
                headers={"Authorization": f"Bearer {token}"},
            )
        assert response.status_code == 200, response.text
        stats: dict[str, Any] = response.json()
        return stats

    async def ledger(self, action_id: str | None = None) -> Counter[str]:
        """The dispatcher ledger's rows by status."""
        engine = make_engine(self.database_urls["dispatcher"])
        try:
            query = select(Delivery.status, func.count()).group_by(Delivery.status)
            if action_id is not None:
                query = query.where(Delivery.action_id == action_id)
            async with engine.connect() as conn:
                rows = (await conn.execute(query)).all()
                return Counter({str(status): int(n) for status, n in rows})
        finally:
            await engine.dispose()

    def start_dispatcher(self, name: str = "dispatcher") -> None:
        """Start a dispatcher process; a second one (``name`` other than "dispatcher") gets its
        own HTTP port and shares the queues and the database."""
        self.start_replica("dispatcher", name)

    def start_replica(self, service: str, name: str) -> None:
        """Start a process of ``service``; one named other than the service gets its own HTTP
        port and shares the queues and the database with the first."""
        if name == service:
            self.stack.start(service)
            return
        port = free_port()
        self.stack.ports[name] = port
        env = self.stack.env
        first = self.stack.processes.pop(service, None)
        self.stack.env = {**env, f"UANET_{service.upper()}_PORT": str(port)}
        try:
            self.stack.start(service)
        finally:
            self.stack.env = env
            self.stack.processes[name] = self.stack.processes.pop(service)
            if first is not None:
                self.stack.processes[service] = first
        self.extra.append(name)

    async def ready(self, name: str) -> None:
        await self.stack.wait_ready(name)

    async def metric(self, name: str, sample: str) -> float:
        """One sample of a service's /metrics (0 when absent)."""
        async with httpx.AsyncClient(timeout=10) as client:
            text = (await client.get(self.stack.url(name) + "/metrics")).text
        total = 0.0
        for line in text.splitlines():
            if line.startswith(sample):
                total += float(line.rsplit(" ", 1)[1])
        return total


async def seed_subscribers(
    database_url: str, *, emails: int = 0, phones: int = 0, prefix: str = "fan"
) -> tuple[list[str], list[str]]:
    """Confirmed subscribers straight into subscriptions' tables (a test's set-up, not a path
    under test); returns their addresses and numbers."""
    addresses = [f"{prefix}{i:06d}@example.net" for i in range(emails)]
    numbers = [f"+4477009{i:05d}" for i in range(phones)]
    now = utcnow()
    rows: list[dict[str, Any]] = [
        {
            "public_id": uuid.uuid4(),
            "email": address,
            "phone": None,
            "name": f"Member {i}",
            "country": "GB",
            "language": "en",
            "timezone": "Europe/London",
            "themes": [],
            "frequency": "immediate",
            "email_status": CONFIRMED,
            "sms_status": None,
            "confirmations_in_window": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i, address in enumerate(addresses)
    ] + [
        {
            "public_id": uuid.uuid4(),
            "email": None,
            "phone": number,
            "name": f"Texter {i}",
            "country": "GB",
            "language": "en",
            "timezone": "Europe/London",
            "themes": [],
            "frequency": "immediate",
            "email_status": None,
            "sms_status": CONFIRMED,
            "confirmations_in_window": 0,
            "created_at": now,
            "updated_at": now,
        }
        for i, number in enumerate(numbers)
    ]
    engine = make_engine(database_url)
    try:
        async with engine.begin() as conn:
            for start in range(0, len(rows), 2000):
                await conn.execute(insert(Subscriber), rows[start : start + 2000])
    finally:
        await engine.dispose()
    return addresses, numbers


async def open_fault_stack(
    *,
    amqp_url: str,
    database_urls: dict[str, str],
    log_dir: Path,
    secret: str,
    env: dict[str, str] | None = None,
    rtt_ms: float = 0,
) -> FaultStack:
    """Migrated databases and the three services as processes, on a misbehaving SMTP server;
    ``rtt_ms`` puts that server behind a delaying proxy, as far away as a real relay."""
    smtp = FaultySmtp()
    proxy = None
    settings = dict(env or {})
    if rtt_ms:
        smtp.start()  # bound before the proxy picks a free port of its own
        proxy = await asyncio.to_thread(start_latency_proxy, f"127.0.0.1:{smtp.port}", rtt_ms)
        settings["UANET_SMTP_PORT"] = str(proxy.port)
    try:
        stack = await open_stack(
            amqp_url=amqp_url,
            database_urls=database_urls,
            log_dir=log_dir,
            secret=secret,
            smtp=smtp,
            env=settings,
        )
    except BaseException:
        if proxy is not None:
            proxy.stop()
        raise
    return FaultStack(
        stack, smtp, stack.twilio, database_urls, amqp_url.rsplit("/", 1)[1], proxy=proxy
    )


async def close_fault_stack(faults: FaultStack) -> None:
    faults.smtp.release()
    faults.stack.stop_all()
    if faults.proxy is not None:
        faults.proxy.stop()
    await faults.twilio.stop()
    faults.smtp.stop()
