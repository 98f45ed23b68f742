"""Every setting of contract §2, read once from the environment (prefix ``UANET_``).

Nothing else in the project reads ``os.environ`` for configuration.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Annotated, Literal
from urllib.parse import urlsplit

import phonenumbers
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("publisher", "subscriptions", "dispatcher")


class SettingsError(Exception):
    """A missing or malformed setting; ``str()`` is one line naming the variable."""


def _check_url(value: str, schemes: tuple[str, ...], name: str) -> str:
    if not value.startswith(schemes):
        raise ValueError(f"must start with one of {', '.join(schemes)}")
    return value.rstrip("/") if name.endswith("public_url") or name.endswith("api_base") else value


# A delay as the Standard Webhooks schedule writes it: 5s, 5m, 30m, 2h, 1d (decimals, ms: tests).
_DELAY = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)\s*$")
_DELAY_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_delays(raw: str) -> tuple[timedelta, ...]:
    """``"5s,5m,30m"`` as timedeltas; ValueError naming the part that is not one."""
    delays = []
    for part in raw.split(","):
        match = _DELAY.match(part)
        if match is None:
            raise ValueError(f"{part.strip()!r} is not a delay such as 5s, 5m, 2h or 1d")
        delays.append(timedelta(seconds=float(match.group(1)) * _DELAY_UNIT[match.group(2)]))
    return tuple(delays)


Rate = Annotated[Decimal, Field(ge=0)]
# The largest request body any service reads: a letter, a sign-up or an urgent action with all
# its translations fits many times over; more is refused (413) before it is read.
DEFAULT_MAX_BODY_BYTES = 1_000_000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="UANET_", extra="ignore", frozen=True)

    # One broker, or the nodes of one RabbitMQ cluster comma-separated (broker_nodes.py).
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    # One service's own broker user (`uanet broker users`); unset: amqp_url (contract §11).
    publisher_amqp_url: str | None = None
    subscriptions_amqp_url: str | None = None
    dispatcher_amqp_url: str | None = None
    publisher_database_url: str = "sqlite+aiosqlite:///var/publisher.db"
    subscriptions_database_url: str = "sqlite+aiosqlite:///var/subscriptions.db"
    dispatcher_database_url: str = "sqlite+aiosqlite:///var/dispatcher.db"
    # PostgreSQL connections one process opens at most: every process of every service counts
    # against the server's max_connections (100 by default), so replicas need smaller pools.
    database_connections: int = Field(20, ge=2, le=500)
    publisher_port: int = Field(8001, ge=1, le=65535)
    subscriptions_port: int = Field(8002, ge=1, le=65535)
    dispatcher_port: int = Field(8003, ge=1, le=65535)
    public_url: str = "http://localhost:8002"
    secret_key: SecretStr | None = None
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(1025, ge=1, le=65535)
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_starttls: bool = False
    mail_from: str = "Urgent Action Network <alerts@localhost>"
    # Envelope sender base for VERP (bounces+<tag>@domain); unset: the address of mail_from.
    bounce_address: str | None = None
    # Bounce mail over SMTP (an MTA's transport for the bounce address hands it on); unset: off.
    bounce_smtp_port: int | None = Field(None, ge=1, le=65535)
    bounce_smtp_host: str = "127.0.0.1"
    # ESP event webhooks, each on only when its key is set (nothing else can prove the sender).
    sendgrid_webhook_public_key: str | None = None  # base64 DER, ECDSA P-256
    mailgun_webhook_signing_key: SecretStr | None = None
    ses_topic_arns: str | None = None  # comma-separated SNS topic ARNs
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_from: str | None = None
    twilio_api_base: str = "https://api.twilio.com"
    dispatcher_public_url: str = "http://localhost:8003"
    # The staff console as staff reach it (behind a TLS proxy: https://…): https makes its
    # session cookie Secure and its pages send HSTS.
    console_url: str = "http://localhost:8001"
    # Messages a second per channel, all dispatchers together (on PostgreSQL: deployment_rate.py);
    # 0 means no limit. SMS counts segments.
    email_rate: Rate = Decimal("200")
    sms_rate: Rate = Decimal("1")
    # SMTP connections each dispatcher process keeps open and sends on at once (contract §6).
    # Pipelined, a connection carries about one message per round trip: 32 give about 1,400
    # a second with the relay 20 ms away (README, Performance). Relays cap connections per
    # client (Postfix: 50); past the cap a 421 only makes the extra connections wait.
    smtp_concurrency: int = Field(32, ge=1, le=200)
    # A connection is closed and another opened after this many messages; 0 means no limit.
    smtp_messages_per_connection: int = Field(1000, ge=0)
    # Letters to officials (mail-to-target): most a minute to one target address, all
    # dispatcher processes together; the rest wait in a delay queue. 0 means no limit.
    letters_per_target_per_minute: int = Field(10, ge=0, le=10_000)
    trusted_proxies: str = "127.0.0.1"
    # Outbound webhooks (contract §8): the waits between tries of one event (the Standard
    # Webhooks schedule), and how long an endpoint may fail without a success before it is
    # disabled.
    webhook_retry_schedule: str = "5s,5m,30m,2h,5h,10h,10h"
    webhook_disable_after: str = "5d"
    # Countries (ISO codes, comma-separated) whose numbers may sign up for SMS; empty: all.
    sms_countries: str = ""
    # Confirmation SMS a clock hour, all dispatchers together (contract §11): a flood of sign-ups
    # to expensive numbers costs at most this much; the rest wait for the next hour. 0: no limit.
    confirmation_sms_per_hour: int = Field(100, ge=0)
    # Other sites (origins, comma-separated) whose pages may post the sign-up form and call
    # the sign-up API from a browser (CORS); the service's own origin always may.
    signup_origins: str = ""
    # Federation (contract §9): set on a section, the hub it belongs to, its code and the key
    # the hub printed for it; which hub actions go out as they arrive (none, urgent, all).
    hub_url: str | None = None
    section_code: str | None = None
    hub_key: SecretStr | None = None
    syndication_auto_publish: Literal["none", "urgent", "all"] = "none"
    # Bytes of one request body, on every service (at most a few MB, contract §7).
    max_body_bytes: int = Field(DEFAULT_MAX_BODY_BYTES, ge=16_384, le=8_000_000)

    @field_validator("publisher_amqp_url", "subscriptions_amqp_url", "dispatcher_amqp_url")
    @classmethod
    def _service_amqp(cls, v: str | None) -> str | None:
        return cls._amqp(v) if v else None

    @field_validator("amqp_url")
    @classmethod
    def _amqp(cls, v: str) -> str:
        # One broker, or the nodes of one cluster comma-separated (contract §10).
        nodes = [part.strip() for part in v.split(",")]
        if not all(nodes):
            raise ValueError("an empty broker URL in the list")
        return ",".join(_check_url(node, ("amqp://", "amqps://"), "amqp_url") for node in nodes)

    @field_validator(
        "publisher_database_url", "subscriptions_database_url", "dispatcher_database_url"
    )
    @classmethod
    def _database(cls, v: str) -> str:
        return _check_url(v, ("sqlite+aiosqlite://", "postgresql+asyncpg://"), "database_url")

    @field_validator("public_url", "dispatcher_public_url", "twilio_api_base", "console_url")
    @classmethod
    def _http(cls, v: str) -> str:
        return _check_url(v, ("http://", "https://"), "public_url")

    @field_validator("hub_url", "section_code", "hub_key", mode="before")
    @classmethod
    def _blank_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("hub_url")
    @classmethod
    def _hub_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v, ("http://", "https://"), "hub_url").rstrip("/")

    @field_validator("section_code")
    @classmethod
    def _section_code(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9]{1,16}", v):
            raise ValueError("letters and digits only, at most 16 (e.g. UK)")
        return None if v is None else v.upper()

    @field_validator("hub_key")
    @classmethod
    def _hub_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith("whsec_"):
            raise ValueError("must be the whsec_… key `uanet sections add` printed on the hub")
        return v

    @property
    def is_section(self) -> bool:
        return self.hub_url is not None

    def require_section(self) -> tuple[str, str, str]:
        """(hub URL, section code, hub key) of a section; SettingsError naming what is missing."""
        if self.hub_url is None:
            raise SettingsError("UANET_HUB_URL: not set, so this uanet is no section")
        if self.section_code is None:
            raise SettingsError("UANET_SECTION_CODE: must be set with UANET_HUB_URL")
        if self.hub_key is None:
            raise SettingsError("UANET_HUB_KEY: must be set with UANET_HUB_URL")
        return self.hub_url, self.section_code, self.hub_key.get_secret_value()

    @field_validator("webhook_retry_schedule", "webhook_disable_after")
    @classmethod
    def _delays(cls, v: str) -> str:
        parse_delays(v)
        return v

    @property
    def webhook_retry_delays(self) -> tuple[timedelta, ...]:
        return parse_delays(self.webhook_retry_schedule)

    @property
    def webhook_disable_delay(self) -> timedelta:
        return parse_delays(self.webhook_disable_after)[0]

    @field_validator("twilio_from")
    @classmethod
    def _twilio_from(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        if v.startswith("MG") or (v.startswith("+") and v[1:].isdigit()):
            return v
        raise ValueError("must be an E.164 number (+…) or a Messaging Service SID (MG…)")

    @field_validator("bounce_address")
    @classmethod
    def _bounce_address(cls, v: str | None) -> str | None:
        if v is None or v == "":
            return None
        local, at, domain = v.partition("@")
        # Plain local@domain only: the tag goes after a "+" in the local part.
        if not at or not local or "." not in domain or "+" in local:
            raise ValueError("must be a plain address such as bounces@example.org")
        if any(c.isspace() or c in '<>,;:"()[]\\' for c in v) or not v.isascii():
            raise ValueError("must be a plain address such as bounces@example.org")
        return v.lower()

    @field_validator(
        "bounce_smtp_port",
        "sendgrid_webhook_public_key",
        "mailgun_webhook_signing_key",
        "ses_topic_arns",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("sms_countries")
    @classmethod
    def _sms_countries(cls, v: str) -> str:
        codes = [c.strip().upper() for c in v.split(",") if c.strip()]
        unknown = [c for c in codes if c not in phonenumbers.SUPPORTED_REGIONS]
        if unknown:
            raise ValueError(f"unknown country code {unknown[0][:8]!r} (ISO codes such as GB,FR)")
        return ",".join(codes)

    @field_validator("signup_origins")
    @classmethod
    def _signup_origins(cls, v: str) -> str:
        origins = [o.strip() for o in v.split(",") if o.strip()]
        for origin in origins:
            if web_origin(origin) != origin.rstrip("/").lower():
                raise ValueError("each must be an origin such as https://campaign.example.org")
        return ",".join(web_origin(o) for o in origins)

    @property
    def sms_country_set(self) -> frozenset[str]:
        """Empty: every country."""
        return frozenset(c for c in self.sms_countries.split(",") if c)

    @property
    def signup_origin_set(self) -> frozenset[str]:
        return frozenset(o for o in self.signup_origins.split(",") if o)

    @property
    def ses_topic_arn_set(self) -> frozenset[str]:
        return frozenset(a.strip() for a in (self.ses_topic_arns or "").split(",") if a.strip())

    @property
    def twilio_enabled(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token)

    @property
    def trusted_proxy_set(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.trusted_proxies.split(",") if p.strip())

    def database_url(self, service: str) -> str:
        url: str = getattr(self, f"{service}_database_url")
        return url

    def service_amqp_url(self, service: str) -> str:
        """The broker as ``service`` reaches it: its own user when one is set."""
        own: str | None = getattr(self, f"{service}_amqp_url", None)
        return own or self.amqp_url

    def port(self, service: str) -> int:
        port: int = getattr(self, f"{service}_port")
        return port

    def require_secret(self) -> str:
        if self.secret_key is None or not self.secret_key.get_secret_value():
            raise SettingsError("UANET_SECRET_KEY: must be set (signs subscriber links)")
        return self.secret_key.get_secret_value()


def web_origin(url: str) -> str:
    """The origin of a URL as browsers send it (``scheme://host[:port]``, lower case, no default
    port); empty when it is not an http(s) URL."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    try:
        port = parts.port
    except ValueError:
        return ""
    default = 443 if parts.scheme == "https" else 80
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    suffix = f":{port}" if port is not None and port != default else ""
    return f"{parts.scheme}://{host}{suffix}"


def load_settings(**overrides: object) -> Settings:
    """Read and validate; a bad value becomes one line naming the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        err = exc.errors()[0]
        name = "UANET_" + str(err["loc"][0]).upper() if err["loc"] else "UANET_?"
        raise SettingsError(f"{name}: {err['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
