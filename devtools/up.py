"""``uanet up [--demo]``: the whole stack on one machine, in the foreground (contract §1).

What it does, in order:

1. decides the children's environment (:func:`child_environment`): a development
   ``UANET_SECRET_KEY`` kept in ``var/secret_key`` unless one is set; the built-in mail catcher
   unless ``UANET_SMTP_HOST`` is set; the SMS outbox (a fake Twilio that the dispatcher reaches
   through the real ``twilio`` client) unless the Twilio credentials are set. Explicit settings win.
2. migrates every service's database;
3. starts the mail catcher and the SMS outbox in this process, then the three services as child
   processes, waits for each ``/readyz`` and prints every URL;
4. with ``--demo``, seeds subscribers (confirmed the real way: the link in the confirmation email, a
   ``YES`` reply by SMS), publishes a sample urgent action and plays a few responses back;
5. on Ctrl-C or SIGTERM stops the children (SIGTERM, then SIGKILL after a grace period) and exits 0;
   if a child dies, says which and stops everything with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from devtools.demo import run_demo
from devtools.mailcatcher import MailCatcher
from devtools.twilio_fake import FakeTwilio
from devtools.webhook_inbox import WebhookInbox
from shared.settings import SERVICES, Settings, SettingsError, load_settings

VAR_DIR = Path("var")
SECRET_FILE = "secret_key"
CATCHER_HOST = "127.0.0.1"
CATCHER_SMTP_PORT = 1025
CATCHER_HTTP_PORT = 8025
OUTBOX_HOST = "127.0.0.1"
OUTBOX_PORT = 8026
OUTBOX_NUMBER = "+15005550006"
WEBHOOK_INBOX_PORT = 8027
DEMO_ENDPOINT = "demo"
READY_TIMEOUT = 60.0
STOP_GRACE = 35.0  # a dispatcher finishes and records its sends within 30 s (SIGTERM)

_DESCRIPTIONS = {
    "publisher": "publisher (staff console and API)",
    "subscriptions": "subscriptions (public pages)",
    "dispatcher": "dispatcher (webhooks, metrics)",
}


class UpError(Exception):
    """Something that stops ``uanet up``; ``str()`` is one line for the terminal."""


# ---- the children's environment -----------------------------------------------------------------


@dataclass(frozen=True)
class DevCredentials:
    """What the in-process SMS outbox and the children share when no Twilio account is given."""

    account_sid: str
    auth_token: str

    @classmethod
    def generate(cls) -> DevCredentials:
        return cls(account_sid="AC" + secrets.token_hex(16), auth_token=secrets.token_hex(16))


@dataclass(frozen=True)
class DevPlan:
    """The decision of what runs in-process, and the environment the services get."""

    env: dict[str, str]
    mail_catcher: bool
    sms_outbox: bool
    catcher_smtp_port: int = CATCHER_SMTP_PORT
    outbox_credentials: DevCredentials | None = None
    notes: list[str] = field(default_factory=list)


def _given(environ: Mapping[str, str], name: str) -> bool:
    return bool(environ.get(name, "").strip())


def child_environment(
    environ: Mapping[str, str],
    *,
    secret_key: Callable[[], str],
    credentials: Callable[[], DevCredentials] = DevCredentials.generate,
) -> DevPlan:
    """The services' environment: ``environ`` plus what development needs and was not given.

    Reads the raw environment on purpose: ``Settings`` cannot tell a default from an explicit
    value, and an explicit ``UANET_SMTP_HOST`` or Twilio account must always win.
    """
    env = dict(environ)
    notes: list[str] = []
    if not _given(environ, "UANET_SECRET_KEY"):
        env["UANET_SECRET_KEY"] = secret_key()
        notes.append(f"development UANET_SECRET_KEY from {VAR_DIR / SECRET_FILE}")

    mail_catcher = not _given(environ, "UANET_SMTP_HOST")
    smtp_port = CATCHER_SMTP_PORT
    if mail_catcher:
        # A port given alone moves the catcher (1025 taken by something else).
        if _given(environ, "UANET_SMTP_PORT"):
            try:
                smtp_port = int(environ["UANET_SMTP_PORT"])
            except ValueError:
                raise UpError("UANET_SMTP_PORT: must be an integer") from None
        env.update(
            UANET_SMTP_HOST=CATCHER_HOST,
            UANET_SMTP_PORT=str(smtp_port),
            UANET_SMTP_STARTTLS="false",
        )

    sid_given = _given(environ, "UANET_TWILIO_ACCOUNT_SID")
    token_given = _given(environ, "UANET_TWILIO_AUTH_TOKEN")
    if sid_given != token_given:
        missing = "UANET_TWILIO_AUTH_TOKEN" if sid_given else "UANET_TWILIO_ACCOUNT_SID"
        raise UpError(f"{missing}: must be set too (or neither, for the SMS outbox)")
    sms_outbox = not sid_given
    outbox: DevCredentials | None = None
    if sms_outbox:
        outbox = credentials()
        env.update(
            UANET_TWILIO_ACCOUNT_SID=outbox.account_sid,
            UANET_TWILIO_AUTH_TOKEN=outbox.auth_token,
            UANET_TWILIO_API_BASE=f"http://{OUTBOX_HOST}:{OUTBOX_PORT}",
        )
        if not _given(environ, "UANET_TWILIO_FROM"):
            env["UANET_TWILIO_FROM"] = OUTBOX_NUMBER
    return DevPlan(
        env=env,
        mail_catcher=mail_catcher,
        sms_outbox=sms_outbox,
        catcher_smtp_port=smtp_port,
        outbox_credentials=outbox,
        notes=notes,
    )


def dev_secret_key(var_dir: Path = VAR_DIR) -> str:
    """The development secret, made once and kept (links in old emails keep working)."""
    path = var_dir / SECRET_FILE
    if path.exists():
        key = path.read_text().strip()
        if key:
            return key
    var_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key + "\n")
    return key


def settings_for(env: Mapping[str, str]) -> Settings:
    """Validate the children's environment here, so a bad value stops us before anything runs."""
    prefix = "UANET_"
    given = {k[len(prefix) :].lower(): v for k, v in env.items() if k.upper().startswith(prefix)}
    return load_settings(**given)


def service_command(service: str) -> list[str]:
    return [sys.executable, "-c", "from uanet_cli.main import main; main()", "serve", service]


# ---- the children ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if ``uanet up`` itself is killed (no orphaned servers)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    process: asyncio.subprocess.Process
    output: asyncio.Task[None]

    @classmethod
    async def spawn(cls, name: str, env: Mapping[str, str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            *service_command(name),
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own session: Ctrl-C reaches only us, and we stop the children in order.
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        assert process.stdout is not None
        return cls(name, process, asyncio.create_task(_relay(name, process.stdout)))

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def stop(self, grace: float = STOP_GRACE) -> None:
        if self.running:
            with contextlib.suppress(ProcessLookupError):
                self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), grace)
            except TimeoutError:
                typer.echo(f"uanet up: {self.name} did not stop in {grace:.0f}s; killing it")
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.output, 2)


async def _relay(name: str, stream: asyncio.StreamReader) -> None:
    """The child's logs on our stdout, each line prefixed with the service's name."""
    prefix = f"{name:>13} | ".encode()
    while line := await stream.readline():
        sys.stdout.buffer.write(prefix + line if line.endswith(b"\n") else prefix + line + b"\n")
        sys.stdout.flush()


async def wait_ready(
    client: httpx.AsyncClient, name: str, url: str, child: Child, timeout: float
) -> None:
    last = "no answer"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not child.running:
            raise UpError(f"{name} exited with status {child.process.returncode} while starting")
        try:
            response = await client.get(url, timeout=2)
            if response.status_code == 200:
                return
            checks = response.json().get("checks", {})
            down = [check for check, ok in checks.items() if not ok]
            last = "not ready: " + (", ".join(down) or str(response.status_code))
        except (httpx.HTTPError, ValueError):
            last = "no answer"
        await asyncio.sleep(0.25)
    hint = " (is RabbitMQ running at UANET_AMQP_URL?)" if "broker" in last else ""
    raise UpError(f"{name} not ready after {timeout:.0f}s: {last}{hint}")


# ---- the stack --------------------------------------------------------------------------------


@dataclass
class Stack:
    plan: DevPlan
    settings: Settings
    demo: bool
    catcher: MailCatcher | None = None
    outbox: FakeTwilio | None = None
    # The webhook inbox's port (None: no inbox, as in tests of the supervision alone).
    inbox_port: int | None = WEBHOOK_INBOX_PORT
    inbox: WebhookInbox | None = None
    children: list[Child] = field(default_factory=list)

    def local_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.settings.port(service)}"

    async def start_helpers(self) -> None:
        if self.plan.mail_catcher:
            self.catcher = MailCatcher(
                host=CATCHER_HOST,
                smtp_port=self.plan.catcher_smtp_port,
                http_port=CATCHER_HTTP_PORT,
            )
            try:
                await self.catcher.start()
            except OSError as exc:
                self.catcher = None
                raise UpError(
                    f"mail catcher: cannot listen on {CATCHER_HOST}:"
                    f"{self.plan.catcher_smtp_port} or :{CATCHER_HTTP_PORT} ({exc.strerror}); "
                    "is another `uanet up` running? Set UANET_SMTP_HOST to use another server"
                ) from None
        if self.plan.sms_outbox:
            creds = self.plan.outbox_credentials
            assert creds is not None
            self.outbox = FakeTwilio(
                account_sid=creds.account_sid,
                auth_token=creds.auth_token,
                host=OUTBOX_HOST,
                port=OUTBOX_PORT,
                inbound_url=f"{self.settings.public_url}/webhooks/twilio/sms",
                phone_number=self.plan.env.get("UANET_TWILIO_FROM", OUTBOX_NUMBER),
                max_messages=1000,
            )
            try:
                await self.outbox.start()
            except OSError as exc:
                self.outbox = None
                raise UpError(
                    f"SMS outbox: cannot listen on {OUTBOX_HOST}:{OUTBOX_PORT} ({exc.strerror}); "
                    "is another `uanet up` running?"
                ) from None

        if self.inbox_port is not None:
            inbox = WebhookInbox(host=CATCHER_HOST, port=self.inbox_port)
            try:
                await inbox.start()
                self.inbox = inbox
            except OSError as exc:
                # Only a demo page: the stack runs without it.
                typer.echo(
                    f"webhook inbox: cannot listen on {CATCHER_HOST}:{self.inbox_port} "
                    f"({exc.strerror}); going on without it",
                    err=True,
                )

    async def register_demo_endpoint(self) -> None:
        """A webhook endpoint for every event, pointing at the inbox, whose secret the inbox
        holds (one made at each start: a secret is never shown twice)."""
        from services.publisher.audit import Actor
        from services.publisher.database import Database
        from services.publisher.webhooks import registry
        from services.publisher.webhooks.standard import EVENT_TYPES
        from shared.db import make_engine, make_sessionmaker

        assert self.inbox is not None
        url = self.inbox.url(DEMO_ENDPOINT)
        engine = make_engine(self.settings.publisher_database_url)
        try:
            database = Database(engine, make_sessionmaker(engine))
            async with database.write() as session:
                for old in await registry.list_endpoints(session):
                    if old.url == url:
                        await registry.remove_endpoint(
                            session, endpoint_id=old.id, actor=Actor.command_line()
                        )
                _, secret = await registry.add_endpoint(
                    session,
                    endpoint_in=registry.WebhookEndpointCreate(
                        url=url, events=list(EVENT_TYPES), description="uanet up: webhook inbox"
                    ),
                    secret_key=self.settings.require_secret(),
                    actor=Actor.command_line(),
                )
        finally:
            await engine.dispose()
        self.inbox.secrets[DEMO_ENDPOINT] = secret

    async def start_services(self) -> None:
        for name in SERVICES:
            self.children.append(await Child.spawn(name, self.plan.env))

    async def until_ready(self) -> None:
        async with httpx.AsyncClient() as client:
            await asyncio.gather(
                *(
                    wait_ready(client, c.name, f"{self.local_url(c.name)}/readyz", c, READY_TIMEOUT)
                    for c in self.children
                )
            )
        if self.inbox is not None:
            try:
                await self.register_demo_endpoint()
            except Exception as exc:  # noqa: BLE001 - the page stays empty; the stack is fine
                typer.echo(f"webhook inbox: no demo endpoint ({type(exc).__name__})", err=True)
        self.print_urls()
        if self.demo:
            try:
                await run_demo(self)
            except Exception as exc:  # noqa: BLE001 - the stack is fine; only the seeding failed
                typer.echo(f"demo: stopped early ({type(exc).__name__}: {exc})", err=True)

    def print_urls(self) -> None:
        s = self.settings
        rows = [
            (_DESCRIPTIONS["publisher"], f"http://localhost:{s.publisher_port}/"),
            (_DESCRIPTIONS["subscriptions"], f"{s.public_url}/signup"),
            (_DESCRIPTIONS["dispatcher"], f"http://localhost:{s.dispatcher_port}/metrics"),
        ]
        if self.catcher is not None:
            rows.append(
                (
                    f"mail inbox (SMTP {CATCHER_HOST}:{self.catcher.smtp_port})",
                    f"http://localhost:{self.catcher.http_port}/",
                )
            )
        else:
            rows.append(("mail", f"sent through {s.smtp_host}:{s.smtp_port}"))
        if self.outbox is not None:
            rows.append(("SMS outbox (fake Twilio)", f"http://localhost:{self.outbox.port}/"))
        else:
            rows.append(("SMS", f"sent through Twilio at {s.twilio_api_base}"))
        if self.inbox is not None:
            rows.append(("webhook inbox (signed events)", f"http://localhost:{self.inbox.port}/"))
        width = max(len(label) for label, _ in rows)
        typer.echo("")
        typer.echo("uanet is up:")
        for label, url in rows:
            typer.echo(f"  {label:<{width}}  {url}")
        typer.echo("Ctrl-C stops everything.")
        typer.echo("")

    async def shutdown(self) -> None:
        await asyncio.gather(*(child.stop() for child in self.children))
        if self.outbox is not None:
            await self.outbox.stop()
        if self.catcher is not None:
            await self.catcher.stop()
        if self.inbox is not None:
            await self.inbox.stop()


async def supervise(stack: Stack) -> int:
    """Run until Ctrl-C/SIGTERM (0) or until a child dies or startup fails (1)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    stopper = asyncio.create_task(stop.wait())
    startup: asyncio.Task[None] | None = None
    exit_code = 0
    try:
        await stack.start_helpers()
        await stack.start_services()
        deaths = {asyncio.create_task(c.process.wait()): c for c in stack.children}
        startup = asyncio.create_task(stack.until_ready())
        pending: set[asyncio.Task[Any]] = {stopper, startup, *deaths}
        while True:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                typer.echo("uanet up: stopping…")
                break
            dead = [deaths[t] for t in done if t in deaths]
            if dead:
                for child in dead:
                    typer.echo(
                        f"uanet up: {child.name} exited with status "
                        f"{child.process.returncode}; stopping everything",
                        err=True,
                    )
                exit_code = 1
                break
            if startup in done and (exc := startup.exception()) is not None:
                raise exc
        for task in pending:
            task.cancel()
    except UpError as exc:
        typer.echo(f"uanet up: {exc}", err=True)
        exit_code = 1
    finally:
        stopper.cancel()
        if startup is not None and not startup.done():
            startup.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await startup
        await stack.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    if exit_code == 0:
        typer.echo("uanet up: stopped")
    return exit_code


def prepare(environ: Mapping[str, str], var_dir: Path = VAR_DIR) -> tuple[DevPlan, Settings]:
    var_dir.mkdir(parents=True, exist_ok=True)
    plan = child_environment(environ, secret_key=lambda: dev_secret_key(var_dir))
    try:
        settings = settings_for(plan.env)
    except SettingsError as exc:
        raise UpError(str(exc)) from None
    return plan, settings


def register(app: typer.Typer) -> None:
    @app.command()
    def up(
        demo: Annotated[
            bool,
            typer.Option(
                "--demo", help="seed subscribers, publish a sample urgent action, play responses"
            ),
        ] = False,
    ) -> None:
        """Run everything in the foreground: services, mail catcher, SMS outbox; Ctrl-C stops."""
        from uanet_cli.common import fail, migrate_all

        try:
            plan, settings = prepare(os.environ)
        except UpError as exc:
            fail(str(exc))
        for note in plan.notes:
            typer.echo(f"uanet up: {note}")
        typer.echo("uanet up: migrating…")
        try:
            migrate_all(settings)
        except Exception as exc:  # noqa: BLE001 - one line, not a traceback
            typer.echo(f"uanet up: migration failed: {type(exc).__name__}: {exc}", err=True)
            raise typer.Exit(1) from None
        code = asyncio.run(supervise(Stack(plan=plan, settings=settings, demo=demo)))
        raise typer.Exit(code)
