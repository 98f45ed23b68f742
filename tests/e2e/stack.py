"""The three services as real processes on a fresh vhost, with real SMTP and Twilio peers."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devtools.twilio_fake import FakeTwilio
from shared.settings import SERVICES
from tests.support import SmtpRecorder, free_port

ROOT = Path(__file__).resolve().parents[2]
UANET = [sys.executable, "-c", "from uanet_cli.main import main; main()"]
ACCOUNT_SID = "AC" + "e2e0" * 8
AUTH_TOKEN = "e2e-twilio-auth-token"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class Stack:
    env: dict[str, str]
    smtp: SmtpRecorder
    twilio: FakeTwilio
    log_dir: Path
    ports: dict[str, int]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    @property
    def sms_webhook(self) -> str:
        return f"{self.env['UANET_PUBLIC_URL']}/webhooks/twilio/sms"

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*UANET, *args],
            env=self.env,
            cwd=ROOT,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def token(self, role: str, name: str | None = None) -> str:
        """A new API token of ``role``, made by the real ``uanet token create``."""
        created = self.cli("token", "create", "--role", role, "--name", name or f"e2e-{role}")
        assert created.returncode == 0, created.stderr
        return created.stdout.strip().splitlines()[-1]

    def start(self, service: str) -> None:
        log = open(self.log_dir / f"{service}.log", "ab")  # noqa: SIM115 - lives with the process
        self.processes[service] = subprocess.Popen(
            [*UANET, "serve", service],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
            preexec_fn=_die_with_parent,
        )

    def kill(self, service: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes.pop(service)
        process.send_signal(sig)
        process.wait(timeout=30)

    async def wait_ready(self, service: str, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient() as client:
            while True:
                process = self.processes[service]
                if process.poll() is not None:
                    raise RuntimeError(f"{service} exited: {self.log(service)[-3000:]}")
                try:
                    response = await client.get(self.url(service) + "/readyz", timeout=2)
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"{service} not ready: {self.log(service)[-3000:]}")
                await asyncio.sleep(0.2)

    def log(self, service: str) -> str:
        path = self.log_dir / f"{service}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop_all(self) -> None:
        for process in self.processes.values():
            process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the test process goes (a worker killed by a
    timeout, a crash), so a service never outlives its test holding database connections and
    reconnecting to a vhost that is gone; one such orphan per failure made a CI run crawl."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stack_environment(
    *,
    amqp_url: str,
    database_urls: dict[str, str],
    smtp_port: int,
    twilio_base: str,
    ports: dict[str, int],
    secret: str,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UANET_")}
    env.update(
        {
            "UANET_AMQP_URL": amqp_url,
            "UANET_SECRET_KEY": secret,
            "UANET_PUBLIC_URL": f"http://127.0.0.1:{ports['subscriptions']}",
            "UANET_DISPATCHER_PUBLIC_URL": f"http://127.0.0.1:{ports['dispatcher']}",
            "UANET_SMTP_HOST": "127.0.0.1",
            "UANET_SMTP_PORT": str(smtp_port),
            "UANET_SMTP_STARTTLS": "false",
            "UANET_TWILIO_ACCOUNT_SID": ACCOUNT_SID,
            "UANET_TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "UANET_TWILIO_FROM": "+15005550006",
            "UANET_TWILIO_API_BASE": twilio_base,
            "UANET_EMAIL_RATE": "0",
            "UANET_SMS_RATE": "0",
            # Two test workers, up to five processes a stack on PostgreSQL: under its 100.
            "UANET_DATABASE_CONNECTIONS": "10",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for service in SERVICES:
        env[f"UANET_{service.upper()}_DATABASE_URL"] = database_urls[service]
        env[f"UANET_{service.upper()}_PORT"] = str(ports[service])
    return env


async def open_stack(
    *,
    amqp_url: str,
    database_urls: dict[str, str],
    log_dir: Path,
    secret: str,
    smtp: SmtpRecorder | None = None,
    env: dict[str, str] | None = None,
    ports: dict[str, int] | None = None,
    ready_timeout: float = 60.0,
) -> Stack:
    """Migrated databases and the three services as processes, on ``smtp`` (a plain recorder
    unless given) and the Twilio-compatible fake; ``env`` adds or overrides settings."""
    smtp = smtp or SmtpRecorder()
    smtp.start()
    twilio = FakeTwilio(account_sid=ACCOUNT_SID, auth_token=AUTH_TOKEN)
    await twilio.start()
    ports = ports or {service: free_port() for service in SERVICES}
    environment = stack_environment(
        amqp_url=amqp_url,
        database_urls=database_urls,
        smtp_port=smtp.port,
        twilio_base=twilio.base_url,
        ports=ports,
        secret=secret,
    )
    environment.update(env or {})
    stack = Stack(env=environment, smtp=smtp, twilio=twilio, log_dir=log_dir, ports=ports)
    try:
        migrated = await asyncio.to_thread(stack.cli, "migrate")
        if migrated.returncode != 0:
            raise RuntimeError(f"migrate failed: {migrated.stderr}")
        for service in SERVICES:
            stack.start(service)
        for service in SERVICES:
            await stack.wait_ready(service, timeout=ready_timeout)
    except BaseException:
        # A stack that never came up is still stopped: its processes must not outlive the test.
        await close_stack(stack)
        raise
    return stack


async def close_stack(stack: Stack) -> None:
    stack.stop_all()
    await stack.twilio.stop()
    stack.smtp.stop()
