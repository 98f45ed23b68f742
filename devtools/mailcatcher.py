"""The development mail catcher of `uanet up`: an SMTP server keeping what it gets, and an inbox.

SMTP on 127.0.0.1:1025 (aiosmtpd, any or no credentials, no TLS), the last ``max_messages`` kept in
memory; the inbox over HTTP on 127.0.0.1:8025:

- ``GET /``: the messages, newest first (from, to, subject, time);
- ``GET /messages/{id}``: one message: headers, links, the HTML part in a sandboxed iframe (no
  scripts; links open in a new tab), the text part;
- ``GET /messages/{id}.eml``: the raw message;
- ``GET /api/messages`` (and ``/api/messages/{id}``): JSON with parsed headers, text, html, links;
  ``DELETE /api/messages`` empties the inbox.

It runs inside the caller's event loop::

    catcher = MailCatcher(smtp_port=0, http_port=0)
    await catcher.start()
    ...  # send to 127.0.0.1:catcher.smtp_port
    mail = await catcher.wait_for(lambda m: "ana@example.net" in m.envelope_to)
    mail.links, mail.text, mail.headers["List-Unsubscribe"]
    await catcher.stop()

Or alone: ``python -m devtools.mailcatcher``.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import html
import re
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from html.parser import HTMLParser
from itertools import count
from typing import Any

from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

DEFAULT_SMTP_PORT = 1025
DEFAULT_HTTP_PORT = 8025
MAX_MESSAGE_BYTES = 10 * 1024 * 1024

_URL_IN_TEXT = re.compile(r"https?://[^\s<>\"')\]]+")
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data: http: https:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


class _LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            for name, value in attrs:
                if name == "href" and value:
                    self.links.append(value.strip())


def _unique(values: list[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _part(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_type() != f"text/{subtype}":
        return None
    try:
        content: str = part.get_content()
    except (LookupError, ValueError):  # an unknown charset: show what we can
        payload = part.get_payload(decode=True)
        content = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    return content


@dataclass
class CaughtMail:
    """One message as received: the envelope, the raw bytes, and what a mail client would show."""

    id: str
    received_at: datetime
    envelope_from: str
    envelope_to: list[str]
    raw: bytes
    message: EmailMessage = field(init=False, repr=False)
    headers: dict[str, str] = field(init=False)
    header_list: list[tuple[str, str]] = field(init=False, repr=False)
    text: str | None = field(init=False, repr=False)
    html: str | None = field(init=False, repr=False)
    links: list[str] = field(init=False)
    attachments: list[str] = field(init=False)

    def __post_init__(self) -> None:
        parsed = email.message_from_bytes(self.raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.message = parsed
        self.header_list = [(name, str(value)) for name, value in parsed.items()]
        self.headers = {}
        for name, value in self.header_list:
            self.headers.setdefault(name, value)
        self.text = _part(parsed, "plain")
        self.html = _part(parsed, "html")
        found: list[str] = []
        if self.html:
            parser = _LinkParser()
            parser.feed(self.html)
            found.extend(parser.links)
        if self.text:
            found.extend(m.rstrip(".,;:!?") for m in _URL_IN_TEXT.findall(self.text))
        self.links = _unique(found)
        self.attachments = [part.get_filename() or "unnamed" for part in parsed.iter_attachments()]

    @property
    def subject(self) -> str:
        return self.headers.get("Subject", "")

    @property
    def from_(self) -> str:
        return self.headers.get("From", "")

    @property
    def to(self) -> str:
        return self.headers.get("To", "")

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat(),
            "envelope_from": self.envelope_from,
            "envelope_to": self.envelope_to,
            "from": self.from_,
            "to": self.to,
            "subject": self.subject,
        }

    def as_json(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "headers": self.headers,
            "header_list": [list(pair) for pair in self.header_list],
            "text": self.text,
            "html": self.html,
            "links": self.links,
            "attachments": self.attachments,
            "size": len(self.raw),
        }


class _Handler:
    def __init__(self, catcher: MailCatcher) -> None:
        self._catcher = catcher

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        if raw is None:
            return "554 Transaction failed: no data"
        await self._catcher.add(
            envelope_from=envelope.mail_from or "", envelope_to=list(envelope.rcpt_tos), raw=raw
        )
        return "250 Message accepted for delivery"


def _accept_any_login(*_args: Any) -> AuthResult:
    # A development catcher: whatever UANET_SMTP_USERNAME/PASSWORD say, the mail is caught.
    return AuthResult(success=True)


class MailCatcher:
    """SMTP server plus inbox, in the caller's event loop. Port 0 picks a free port."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        smtp_port: int = DEFAULT_SMTP_PORT,
        http_port: int | None = DEFAULT_HTTP_PORT,
        max_messages: int = 1000,
    ) -> None:
        self.host = host
        self.smtp_port = smtp_port
        self.http_port = http_port
        self._messages: deque[CaughtMail] = deque(maxlen=max_messages)
        self._ids = count(1)
        self._arrived = asyncio.Condition()
        self._csrf = secrets.token_urlsafe(24)
        self._smtp_server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None

    @property
    def messages(self) -> list[CaughtMail]:
        """Oldest first."""
        return list(self._messages)

    @property
    def inbox_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        handler = _Handler(self)

        def protocol() -> SMTP:
            return SMTP(
                handler,
                hostname="uanet-mailcatcher",
                data_size_limit=MAX_MESSAGE_BYTES,
                enable_SMTPUTF8=True,
                auth_require_tls=False,
                authenticator=_accept_any_login,
                loop=loop,
            )

        self._smtp_server = await loop.create_server(
            protocol, host=self.host, port=self.smtp_port, reuse_address=True
        )
        self.smtp_port = self._smtp_server.sockets[0].getsockname()[1]
        if self.http_port is not None:
            try:
                await self._start_http()
            except BaseException:
                await self.stop()
                raise

    async def _start_http(self) -> None:
        assert self.http_port is not None
        app = web.Application(middlewares=[_security_headers])
        app.router.add_get("/", self._inbox_page)
        app.router.add_get("/messages/{id}.eml", self._raw)
        app.router.add_get("/messages/{id}", self._message_page)
        app.router.add_post("/clear", self._clear_form)
        app.router.add_get("/api/messages", self._api_list)
        app.router.add_delete("/api/messages", self._api_clear)
        app.router.add_get("/api/messages/{id}", self._api_one)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.http_port, reuse_address=True)
        await site.start()
        if self.http_port == 0:
            server = site._server  # aiohttp keeps the bound server private
            assert isinstance(server, asyncio.Server)
            self.http_port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._smtp_server is not None:
            self._smtp_server.close()
            await self._smtp_server.wait_closed()
            self._smtp_server = None

    async def __aenter__(self) -> MailCatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- the store ------------------------------------------------------------------------------

    async def add(self, *, envelope_from: str, envelope_to: list[str], raw: bytes) -> CaughtMail:
        mail = CaughtMail(
            id=str(next(self._ids)),
            received_at=datetime.now(UTC),
            envelope_from=envelope_from,
            envelope_to=envelope_to,
            raw=raw,
        )
        async with self._arrived:
            self._messages.append(mail)
            self._arrived.notify_all()
        return mail

    def get(self, mail_id: str) -> CaughtMail | None:
        return next((m for m in self._messages if m.id == mail_id), None)

    def clear(self) -> None:
        self._messages.clear()

    async def wait_for(
        self, predicate: Callable[[CaughtMail], bool], timeout: float = 10.0
    ) -> CaughtMail:
        """The first message (already here or still to come) that ``predicate`` accepts."""

        def match() -> CaughtMail | None:
            return next((m for m in self._messages if predicate(m)), None)

        async with asyncio.timeout(timeout), self._arrived:
            while (found := match()) is None:
                await self._arrived.wait()
            return found

    # ---- HTTP -----------------------------------------------------------------------------------

    def _mail_or_404(self, request: web.Request) -> CaughtMail:
        mail = self.get(request.match_info["id"])
        if mail is None:
            raise web.HTTPNotFound(text="no such message (the inbox keeps the latest ones only)")
        return mail

    async def _api_list(self, request: web.Request) -> web.Response:
        return web.json_response([m.as_json() for m in reversed(self._messages)])

    async def _api_one(self, request: web.Request) -> web.Response:
        return web.json_response(self._mail_or_404(request).as_json())

    async def _api_clear(self, request: web.Request) -> web.Response:
        self.clear()
        return web.Response(status=204)

    async def _clear_form(self, request: web.Request) -> web.Response:
        form = await request.post()
        if not secrets.compare_digest(str(form.get("csrf", "")), self._csrf):
            raise web.HTTPForbidden(text="stale form: reload the inbox")
        self.clear()
        raise web.HTTPSeeOther("/")

    async def _raw(self, request: web.Request) -> web.Response:
        mail = self._mail_or_404(request)
        return web.Response(
            body=mail.raw,
            content_type="message/rfc822",
            headers={"Content-Disposition": f'attachment; filename="message-{mail.id}.eml"'},
        )

    async def _inbox_page(self, request: web.Request) -> web.Response:
        e = html.escape
        rows = "".join(
            "<tr>"
            f"<td>{e(m.received_at.strftime('%H:%M:%S'))}</td>"
            f"<td>{e(m.from_)}</td>"
            f"<td>{e(m.to or ', '.join(m.envelope_to))}</td>"
            f'<td><a href="/messages/{e(m.id)}">{e(m.subject or "(no subject)")}</a></td>'
            "</tr>"
            for m in reversed(self._messages)
        )
        table = (
            "<table><thead><tr><th>time (UTC)</th><th>from</th><th>to</th><th>subject</th>"
            f"</tr></thead><tbody>{rows}</tbody></table>"
            if rows
            else "<p>No mail yet. It refreshes by itself.</p>"
        )
        body = (
            f"<h1>Mail inbox ({len(self._messages)})</h1>"
            f"<p>SMTP on {e(self.host)}:{self.smtp_port}. "
            '<a href="/api/messages">JSON</a></p>'
            f'<form method="post" action="/clear"><input type="hidden" name="csrf" '
            f'value="{e(self._csrf)}"><button>Empty the inbox</button></form>'
            f"{table}"
        )
        return _html_page("Mail inbox", body, refresh=True)

    async def _message_page(self, request: web.Request) -> web.Response:
        e = html.escape
        m = self._mail_or_404(request)
        headers = "".join(
            f"<tr><th>{e(name)}</th><td>{e(value)}</td></tr>" for name, value in m.header_list
        )
        links = "".join(
            f'<li><a href="{e(link)}" target="_blank" rel="noopener noreferrer">{e(link)}</a></li>'
            for link in m.links
            if link.startswith(("http://", "https://"))
        )
        parts = []
        if m.html is not None:
            # No allow-scripts, no allow-same-origin: the mail's HTML cannot run or reach us.
            srcdoc = '<base target="_blank">' + m.html
            parts.append(
                "<h2>HTML</h2>"
                '<iframe sandbox="allow-popups allow-popups-to-escape-sandbox" '
                f'referrerpolicy="no-referrer" srcdoc="{e(srcdoc, quote=True)}"></iframe>'
            )
        if m.text is not None:
            parts.append(f"<h2>Text</h2><pre>{e(m.text)}</pre>")
        if m.attachments:
            parts.append(
                "<h2>Attachments</h2><ul>"
                + "".join(f"<li>{e(a)}</li>" for a in m.attachments)
                + "</ul>"
            )
        body = (
            f'<p><a href="/">&larr; inbox</a> &middot; <a href="/messages/{e(m.id)}.eml">raw</a>'
            f' &middot; <a href="/api/messages/{e(m.id)}">JSON</a></p>'
            f"<h1>{e(m.subject or '(no subject)')}</h1>"
            f"<p>Envelope: from {e(m.envelope_from)} to {e(', '.join(m.envelope_to))}</p>"
            + (f"<h2>Links</h2><ul>{links}</ul>" if links else "")
            + "".join(parts)
            + f'<details><summary>Headers</summary><table class="headers">{headers}</table>'
            "</details>"
        )
        return _html_page(m.subject or "Message", body)


@web.middleware
async def _security_headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.setdefault("Content-Security-Policy", _CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _html_page(title: str, body: str, *, refresh: bool = False) -> web.Response:
    meta = '<meta http-equiv="refresh" content="5">' if refresh else ""
    page = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>{meta}"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return web.Response(text=page, content_type="text/html")


_STYLE = """
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .35rem; text-align: left; vertical-align: top; }
table.headers th { white-space: nowrap; font-weight: 600; }
table.headers td { font: 12px monospace; word-break: break-all; }
iframe { width: 100%; height: 32rem; border: 1px solid #ccc; background: #fff; }
pre { white-space: pre-wrap; background: #f6f6f6; padding: .8rem; }
form { margin: .5rem 0; }
"""


async def _serve_forever() -> None:
    catcher = MailCatcher()
    await catcher.start()
    print(f"SMTP on {catcher.host}:{catcher.smtp_port}; inbox at {catcher.inbox_url}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await catcher.stop()


if __name__ == "__main__":
    try:
        asyncio.run(_serve_forever())
    except KeyboardInterrupt:
        pass
