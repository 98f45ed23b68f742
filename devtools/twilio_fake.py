"""A Twilio-compatible Messages API on loopback: the tests' Twilio and the development SMS outbox.

It answers what the real ``twilio`` package (v9) sends to
``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` the way Twilio does (HTTP basic auth,
form fields ``To``, ``From`` or ``MessagingServiceSid``, ``Body``, ``StatusCallback``; 201 with the
message JSON; Twilio's JSON errors), and it plays Twilio's side of the webhooks: signed status
callbacks and signed inbound SMS.

Pointing the real client at it (what ``UANET_TWILIO_API_BASE`` is for)::

    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.rest import Client

    fake = FakeTwilio(account_sid="AC" + "0" * 32, auth_token="secret")
    await fake.start()
    client = Client(fake.account_sid, "secret", http_client=AsyncTwilioHttpClient())
    client.api.base_url = fake.base_url      # the only change: Api domain -> loopback
    message = await client.messages.create_async(
        to="+447700900123", from_="+15005550006", body="Hi", status_callback=callback_url
    )
    fake.messages[-1].body == "Hi"
    fake.failures["+447700900123"] = [(429, 20429), (400, 21610)]  # next two attempts fail
    await fake.send_status_callback(message.sid, "delivered")  # signed POST to callback_url
    await fake.send_inbound_sms(inbound_url, from_="+447700900123", body="YES")
    await client.http_client.close(); await fake.stop()

A ``<Message>`` in the TwiML an inbound-SMS webhook answers with is recorded as an outgoing SMS, as
Twilio would send it. ``GET /`` is the outbox page (reply as a phone, mark delivered);
``GET /api/messages`` the messages as JSON, newest first.
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import re
import secrets
import socket
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import aiohttp
from aiohttp import web
from twilio.request_validator import RequestValidator

log = logging.getLogger(__name__)

API_VERSION = "2010-04-01"
DEFAULT_NUMBER = "+15005550006"  # Twilio's "valid" magic test number
MAX_BODY = 1600

_E164 = re.compile(r"^\+[1-9]\d{1,14}$")
_ALPHANUMERIC_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")
_SERVICE_SID = re.compile(r"^MG[0-9a-f]{32}$")

_GSM7_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡"
    "ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€\f")

_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    21211: "Invalid 'To' Phone Number",
    21212: "Invalid From Number (caller ID)",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21609: "Invalid StatusCallback url",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    21701: "The Messaging Service Sid is invalid.",
}


def segments(body: str) -> int:
    """How many SMS segments Twilio bills for ``body`` (GSM-7 160/153, else UCS-2 70/67)."""
    if all(c in _GSM7_BASIC or c in _GSM7_EXTENDED for c in body):
        units = sum(2 if c in _GSM7_EXTENDED else 1 for c in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def _sid(prefix: str = "SM") -> str:
    return prefix + secrets.token_hex(16)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class SentSms:
    """One message accepted by the fake (or sent by TwiML in answer to an inbound SMS)."""

    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    status: str
    created_at: datetime
    num_segments: int = 1
    error_code: int | None = None

    def as_twilio(self, account_sid: str) -> dict[str, Any]:
        """The message resource as Twilio's API returns it."""
        uri = f"/{API_VERSION}/Accounts/{account_sid}/Messages/{self.sid}.json"
        return {
            "account_sid": account_sid,
            "api_version": API_VERSION,
            "body": self.body,
            "date_created": format_datetime(self.created_at),
            "date_sent": None,
            "date_updated": format_datetime(self.created_at),
            "direction": "outbound-api",
            "error_code": self.error_code,
            "error_message": None,
            "from": self.from_,
            "messaging_service_sid": self.messaging_service_sid,
            "num_media": "0",
            "num_segments": str(self.num_segments),
            "price": None,
            "price_unit": "USD",
            "sid": self.sid,
            "status": self.status,
            "subresource_uris": {
                "media": uri.removesuffix(".json") + "/Media.json",
                "feedback": uri.removesuffix(".json") + "/Feedback.json",
            },
            "to": self.to,
            "uri": uri,
        }

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass
class InboundSms:
    """A message a "phone" sent to the project's inbound webhook, and how the webhook answered."""

    sid: str
    from_: str
    to: str
    body: str
    url: str
    created_at: datetime
    response_status: int | None = None

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


def twilio_error(status: int, code: int | None, detail: str | None = None) -> web.Response:
    """Twilio's JSON error body (what ``TwilioRestException`` parses into ``.status``/``.code``)."""
    code = code if code is not None else (20500 if status >= 500 else status)
    message = _MESSAGES.get(code, "Error")
    if detail:
        message = f"{message}: {detail}"
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    headers = {"Retry-After": "1"} if status == 429 else None
    return web.json_response(body, status=status, headers=headers)


@dataclass
class _Note:
    text: str
    at: datetime = field(default_factory=_utcnow)


class FakeTwilio:
    """A loopback Twilio: run it inside the caller's event loop with ``start()``/``stop()``."""

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        host: str = "127.0.0.1",
        port: int = 0,
        inbound_url: str | None = None,
        phone_number: str = DEFAULT_NUMBER,
        max_messages: int | None = None,
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port
        # Where the outbox page's "reply" form delivers inbound SMS (the subscriptions webhook).
        self.inbound_url = inbound_url
        # The number messages come from when sent through a Messaging Service.
        self.phone_number = phone_number
        self.max_messages = max_messages
        self.messages: list[SentSms] = []
        self.inbound: list[InboundSms] = []
        self.failures: dict[str, list[tuple[int, int | None]]] = {}
        # Every authenticated create attempt's form, failed ones included (to count retries).
        self.requests: list[dict[str, str]] = []
        self._csrf = secrets.token_urlsafe(24)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._notes: list[_Note] = []
        self._arrival = asyncio.Event()

    # ---- lifecycle ----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._runner is None:
            raise RuntimeError("FakeTwilio is not started")
        return f"http://{self.host}:{self.port}"

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        prefix = f"/{API_VERSION}/Accounts/{{account_sid}}"
        app.router.add_post(f"{prefix}/Messages.json", self._create_message)
        app.router.add_get(f"{prefix}/Messages/{{message_sid}}.json", self._fetch_message)
        app.router.add_route("*", f"/{API_VERSION}/{{tail:.*}}", self._not_found)
        app.router.add_get("/", self._outbox_page)
        app.router.add_get("/api/messages", self._api_messages)
        app.router.add_get("/api/inbound", self._api_inbound)
        app.router.add_post("/outbox/reply", self._outbox_reply)
        app.router.add_post("/outbox/status", self._outbox_status)
        return app

    async def start(self) -> None:
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.port = sock.getsockname()[1]
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeTwilio:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- Twilio's side of the webhooks --------------------------------------------------------

    async def wait_for(
        self, predicate: Callable[[SentSms], bool], timeout: float = 10.0
    ) -> SentSms:
        """The first message (already here or still to come) that ``predicate`` accepts."""
        async with asyncio.timeout(timeout):
            while True:
                found = next((m for m in self.messages if predicate(m)), None)
                if found is not None:
                    return found
                self._arrival.clear()
                await self._arrival.wait()

    def find(self, sid: str) -> SentSms:
        for message in self.messages:
            if message.sid == sid:
                return message
        raise KeyError(sid)

    async def send_status_callback(
        self, sid: str, status: str = "delivered", error_code: int | None = None
    ) -> int:
        """POST a signed status callback for message ``sid`` to its ``StatusCallback``."""
        message = self.find(sid)
        if not message.status_callback:
            raise ValueError(f"message {sid} was sent without a StatusCallback")
        message.status = status
        message.error_code = error_code
        params = {
            "MessageSid": sid,
            "SmsSid": sid,
            "MessageStatus": status,
            "SmsStatus": status,
            "AccountSid": self.account_sid,
            "To": message.to,
            "From": message.from_ or self.phone_number,
            "ApiVersion": API_VERSION,
        }
        if message.messaging_service_sid:
            params["MessagingServiceSid"] = message.messaging_service_sid
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        status_code, _, _ = await self._post_signed(message.status_callback, params)
        log.info("status callback sent", extra={"sid": sid, "http_status": status_code})
        return status_code

    async def send_inbound_sms(
        self, url: str, *, from_: str, body: str, to: str = DEFAULT_NUMBER
    ) -> int:
        """POST a signed inbound-SMS webhook to ``url``, as Twilio does when a phone texts ``to``.

        A ``<Message>`` in a TwiML answer is recorded in ``messages`` (Twilio would send it).
        """
        sid = _sid()
        inbound = InboundSms(sid=sid, from_=from_, to=to, body=body, url=url, created_at=_utcnow())
        self.inbound.append(inbound)
        params = {
            "MessageSid": sid,
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "AccountSid": self.account_sid,
            "From": from_,
            "To": to,
            "Body": body,
            "NumMedia": "0",
            "NumSegments": str(segments(body)),
            "ApiVersion": API_VERSION,
        }
        status, text, content_type = await self._post_signed(url, params)
        inbound.response_status = status
        if 200 <= status < 300 and ("xml" in content_type or text.lstrip().startswith("<")):
            for reply in _twiml_messages(text):
                self._record(
                    SentSms(
                        sid=_sid(),
                        to=from_,
                        from_=to,
                        messaging_service_sid=None,
                        body=reply,
                        status_callback=None,
                        status="sent",
                        created_at=_utcnow(),
                        num_segments=segments(reply),
                    )
                )
        log.info("inbound sms posted", extra={"sid": sid, "http_status": status})
        return status

    async def _post_signed(self, url: str, params: dict[str, str]) -> tuple[int, str, str]:
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        async with self._session.post(
            url,
            data=params,
            headers={"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"},
            allow_redirects=False,
        ) as response:
            return response.status, await response.text(), response.content_type

    # ---- the REST API ---------------------------------------------------------------------------

    def _authenticate(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        try:
            auth = aiohttp.BasicAuth.decode(header) if header else None
        except ValueError:
            auth = None
        if (
            auth is None
            or not secrets.compare_digest(auth.login, self.account_sid)
            or not secrets.compare_digest(auth.password, self.auth_token)
            or request.match_info.get("account_sid") != self.account_sid
        ):
            response = twilio_error(401, 20003)
            response.headers["WWW-Authenticate"] = 'Basic realm="Twilio API"'
            return response
        return None

    async def _create_message(self, request: web.Request) -> web.Response:
        if (denied := self._authenticate(request)) is not None:
            return denied
        form = await request.post()
        params = {key: str(value) for key, value in form.items()}
        self.requests.append(params)
        to = params.get("To", "").strip()
        queued = self.failures.get(to)
        if queued:
            status, code = queued.pop(0)
            if not queued:
                del self.failures[to]
            return twilio_error(status, code)

        from_ = params.get("From", "").strip() or None
        service_sid = params.get("MessagingServiceSid", "").strip() or None
        body = params.get("Body", "")
        callback = params.get("StatusCallback", "").strip() or None
        if not to:
            return twilio_error(400, 21604)
        if not _E164.match(to):
            return twilio_error(400, 21211, to)
        if from_ is None and service_sid is None:
            return twilio_error(400, 21603)
        if from_ is not None and not (_E164.match(from_) or _ALPHANUMERIC_SENDER.match(from_)):
            return twilio_error(400, 21212, from_)
        if service_sid is not None and not _SERVICE_SID.match(service_sid):
            return twilio_error(400, 21701, service_sid)
        if not body.strip() and "MediaUrl" not in params and "ContentSid" not in params:
            return twilio_error(400, 21602)
        if len(body) > MAX_BODY:
            return twilio_error(400, 21617)
        if callback is not None and not callback.startswith(("http://", "https://")):
            return twilio_error(400, 21609)

        message = SentSms(
            sid=_sid(),
            to=to,
            from_=from_,
            messaging_service_sid=service_sid,
            body=body,
            status_callback=callback,
            # A Messaging Service first accepts, then picks a sender and queues.
            status="queued" if from_ is not None else "accepted",
            created_at=_utcnow(),
            num_segments=segments(body),
        )
        self._record(message)
        log.info("sms accepted", extra={"sid": message.sid, "segments": message.num_segments})
        return web.json_response(message.as_twilio(self.account_sid), status=201)

    async def _fetch_message(self, request: web.Request) -> web.Response:
        if (denied := self._authenticate(request)) is not None:
            return denied
        try:
            message = self.find(request.match_info["message_sid"])
        except KeyError:
            return twilio_error(404, 20404)
        return web.json_response(message.as_twilio(self.account_sid))

    async def _not_found(self, request: web.Request) -> web.Response:
        return twilio_error(404, 20404)

    def _record(self, message: SentSms) -> None:
        self.messages.append(message)
        self._arrival.set()
        if self.max_messages is not None and len(self.messages) > self.max_messages:
            del self.messages[: len(self.messages) - self.max_messages]

    # ---- the outbox page ------------------------------------------------------------------------

    async def _api_messages(self, request: web.Request) -> web.Response:
        return web.json_response([m.as_json() for m in reversed(self.messages)])

    async def _api_inbound(self, request: web.Request) -> web.Response:
        return web.json_response([m.as_json() for m in reversed(self.inbound)])

    async def _checked_form(self, request: web.Request) -> dict[str, str]:
        form = await request.post()
        if not secrets.compare_digest(str(form.get("csrf", "")), self._csrf):
            raise web.HTTPForbidden(text="stale form: reload the outbox page")
        return {key: str(value) for key, value in form.items()}

    def _back(self, note: str) -> web.HTTPSeeOther:
        self._notes.append(_Note(note))
        del self._notes[:-5]
        return web.HTTPSeeOther("/")

    async def _outbox_reply(self, request: web.Request) -> web.Response:
        form = await self._checked_form(request)
        if not self.inbound_url:
            raise self._back("No inbound webhook is configured: the reply was not sent.")
        phone, body = form.get("phone", "").strip(), form.get("body", "")
        if not _E164.match(phone) or not body.strip():
            raise self._back("A reply needs a phone number in E.164 and a text.")
        to = form.get("to", "").strip() or self.phone_number
        try:
            status = await self.send_inbound_sms(self.inbound_url, from_=phone, body=body, to=to)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._back(
                f"The inbound webhook could not be reached ({type(exc).__name__})."
            ) from None
        raise self._back(f"Reply {body!r} from {phone} posted; the webhook answered {status}.")

    async def _outbox_status(self, request: web.Request) -> web.Response:
        form = await self._checked_form(request)
        sid, status = form.get("sid", ""), form.get("status", "delivered")
        if status not in ("sent", "delivered", "undelivered", "failed"):
            raise self._back(f"Unknown status {status!r}.")
        error_code = 30003 if status in ("undelivered", "failed") else None
        try:
            code = await self.send_status_callback(sid, status, error_code)
        except (KeyError, ValueError):
            raise self._back(f"No message {sid} with a status callback.") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise self._back(
                f"The status callback could not be reached ({type(exc).__name__})."
            ) from None
        raise self._back(f"{sid} marked {status}; the callback answered {code}.")

    async def _outbox_page(self, request: web.Request) -> web.Response:
        return web.Response(text=self.render_outbox(), content_type="text/html")

    def render_outbox(self) -> str:
        e = html.escape
        csrf = f'<input type="hidden" name="csrf" value="{e(self._csrf)}">'
        notes = "".join(f'<p class="note">{e(n.text)}</p>' for n in reversed(self._notes))
        rows = []
        for m in reversed(self.messages):
            actions = ""
            if m.status_callback:
                actions = "".join(
                    f'<form method="post" action="/outbox/status">{csrf}'
                    f'<input type="hidden" name="sid" value="{e(m.sid)}">'
                    f'<button name="status" value="{s}">{label}</button></form>'
                    for s, label in _STATUS_BUTTONS
                )
            rows.append(
                "<tr>"
                f"<td>{e(m.created_at.strftime('%H:%M:%S'))}</td>"
                f"<td>{e(m.to)}</td>"
                f"<td>{e(m.from_ or m.messaging_service_sid or '')}</td>"
                f'<td class="body">{e(m.body)}</td>'
                f"<td>{m.num_segments}</td>"
                f'<td><span class="status">{e(m.status)}</span>{actions}</td>'
                f'<td class="sid">{e(m.sid)}</td>'
                "</tr>"
            )
        # One reply form per number we texted: "be" that phone.
        seen: dict[str, str] = {}
        for m in reversed(self.messages):
            seen.setdefault(m.to, m.from_ or self.phone_number)
        if self.inbound_url:
            phones = "".join(
                f'<form method="post" action="/outbox/reply" class="reply">{csrf}'
                f'<input type="hidden" name="phone" value="{e(phone)}">'
                f'<input type="hidden" name="to" value="{e(ours)}">'
                f"<label>{e(phone)} replies "
                f'<input name="body" placeholder="YES, STOP, HELP, SENT 2" required></label>'
                "<button>send</button></form>"
                for phone, ours in seen.items()
            )
            phones += (
                f'<form method="post" action="/outbox/reply" class="reply">{csrf}'
                '<label>another phone <input name="phone" placeholder="+447700900123" required>'
                '</label> <input name="body" placeholder="text" required>'
                "<button>send</button></form>"
            )
            inbound_note = f"Replies go to <code>{e(self.inbound_url)}</code>, signed."
        else:
            phones, inbound_note = "", "No inbound webhook configured: replies are off."
        table = (
            "<table><thead><tr><th>time (UTC)</th><th>to</th><th>from</th><th>text</th>"
            "<th>seg.</th><th>status</th><th>sid</th></tr></thead><tbody>"
            + "".join(rows)
            + "</tbody></table>"
            if rows
            else "<p>No SMS yet.</p>"
        )
        return _PAGE.format(
            count=len(self.messages),
            notes=notes,
            inbound_note=inbound_note,
            phones=phones,
            table=table,
        )


_STATUS_BUTTONS = (("delivered", "mark delivered"), ("undelivered", "undelivered"))


def _twiml_messages(text: str) -> list[str]:
    """The texts of ``<Message>`` verbs in a TwiML ``<Response>`` (plain body or ``<Body>``)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return []
    out = []
    for element in root.iter("Message"):
        body = element.find("Body")
        value = (body.text if body is not None else element.text) or ""
        if value.strip():
            out.append(value.strip())
    return out


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>SMS outbox ({count})</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
 body {{ font: 15px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }}
 table {{ border-collapse: collapse; width: 100%; }}
 th, td {{ border-bottom: 1px solid #ddd; padding: .4rem; text-align: left; vertical-align: top; }}
 td.body {{ white-space: pre-wrap; max-width: 36rem; }}
 td.sid {{ font: 11px monospace; color: #777; }}
 .status {{ font-weight: 600; margin-right: .4rem; }}
 td form {{ display: inline; }}
 form.reply {{ margin: .3rem 0; }}
 .note {{ background: #fff6d5; padding: .4rem .6rem; }}
</style></head>
<body>
<h1>SMS outbox</h1>
<p>Every SMS the dispatcher sent through the Twilio API, newest first.
<a href="/">Refresh</a> &middot; <a href="/api/messages">JSON</a></p>
{notes}
<h2>Reply as a phone</h2>
<p>{inbound_note}</p>
{phones}
<h2>Sent ({count})</h2>
{table}
</body></html>
"""
