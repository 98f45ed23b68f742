"""What the routes share: the service's state, the unit of work, body parsing and page rendering."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import jinja2
import phonenumbers
from babel import Locale
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.limits import SignupLimiter
from services.subscriptions.links import Links
from services.subscriptions.models import ConsentSource
from services.subscriptions.schemas import TEXT_INPUT, FieldError
from services.subscriptions.signup_origin import SignupOrigins
from services.subscriptions.subscribers import Origin
from shared.i18n import Translations, text_direction
from shared.settings import Settings
from shared.web import SecurityHeaders, client_address

SERVICE_DIR = Path(__file__).resolve().parent
TEMPLATES_DIR = SERVICE_DIR / "templates"
LOCALE_DIR = SERVICE_DIR / "locale"
STATIC_DIR = SERVICE_DIR / "static"
# Fields that forms send as repeated values (check boxes).
LIST_FIELDS = ("channels", "themes")
JSON_TYPES = ("application/json", "application/merge-patch+json")

M = TypeVar("M", bound=BaseModel)

# Every response of the service (set once by shared.web.install_common). The pages need no
# script at all; their URLs hold a subscriber's signed token, so no Referer ever carries one
# to another site.
PAGE_HEADERS = SecurityHeaders(
    "default-src 'self'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; base-uri 'none'; object-src 'none'",
    referrer_policy="no-referrer",
)


def N_(message: str) -> str:  # noqa: N802 - gettext's own name for "mark for translation"
    """Marks a text for the catalogue; it is translated where it is shown."""
    return message


INVALID_LINK_TITLE = N_("This link does not work")
INVALID_LINK_MESSAGE = N_(
    "The link may be incomplete, too old, or no longer valid. "
    "Please use the most recent message we sent you."
)


class Renderer:
    """Pages (autoescaped HTML) and SMS answers (plain text) in every language we speak.

    One Jinja environment per language, each with its catalogue installed once, so renders in
    different languages never share state.
    """

    def __init__(self, translations: Translations) -> None:
        self.translations = translations
        loader = jinja2.FileSystemLoader(TEMPLATES_DIR)
        texts_loader = jinja2.FileSystemLoader(TEMPLATES_DIR / "sms")
        self._pages: dict[str, jinja2.Environment] = {}
        self._texts: dict[str, jinja2.Environment] = {}
        languages = translations.languages_named
        for code in translations.languages:
            catalogue = translations.for_language(code)
            pages = jinja2.Environment(
                loader=loader,
                autoescape=jinja2.select_autoescape(["html"]),
                extensions=["jinja2.ext.i18n"],
            )
            pages.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
            pages.globals.update(
                lang=code,
                dir=text_direction(code),
                languages=languages,
                countries=country_choices(code),
            )
            self._pages[code] = pages
            # Plain: TwiML escapes the text when it builds XML.
            texts = jinja2.Environment(
                loader=texts_loader, autoescape=False, extensions=["jinja2.ext.i18n"]
            )
            texts.install_gettext_translations(catalogue, newstyle=True)  # type: ignore[attr-defined]
            self._texts[code] = texts

    def page(self, language: str, name: str, context: dict[str, Any]) -> str:
        return self._pages[self.translations.choose(language)].get_template(name).render(context)

    def sms(self, language: str | None, name: str, context: dict[str, Any]) -> str:
        template = self._texts[self.translations.choose(language)].get_template(name)
        return " ".join(template.render(context).split())

    def gettext(self, language: str, message: str) -> str:
        return self.translations.gettext(language, message)


@functools.lru_cache(maxsize=8)
def country_choices(language: str) -> tuple[tuple[str, str], ...]:
    """Every country we can take a phone number for, named and sorted in ``language``."""
    names = Locale.parse(language).territories
    choices = [(code, names.get(code, code)) for code in phonenumbers.SUPPORTED_REGIONS]
    return tuple(sorted(choices, key=lambda choice: choice[1].casefold()))


def make_renderer() -> Renderer:
    return Renderer(Translations.load(LOCALE_DIR))


@dataclass
class ServiceState:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    links: Links
    renderer: Renderer
    notify: Callable[[], None]  # wakes the outbox relay
    signups: SignupLimiter = field(default_factory=SignupLimiter)
    signup_origins: SignupOrigins = field(init=False)

    def __post_init__(self) -> None:
        self.signup_origins = SignupOrigins.from_settings(self.settings)

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction; after it commits, the outbox relay publishes what it wrote."""
        async with self.sessionmaker() as session, session.begin():
            yield session
        self.notify()

    def client(self, request: Request) -> str:
        return client_address(request, self.settings.trusted_proxy_set)

    def origin(self, request: Request, source: ConsentSource = "page") -> Origin:
        return Origin(source, self.client(request) or None)

    def visitor_language(self, request: Request) -> str:
        """For someone we do not know: ``?lang=``, else what their browser asks for."""
        return self.renderer.translations.negotiate(
            request.query_params.get("lang"), request.headers.get("accept-language")
        )

    def page(
        self,
        request: Request,
        name: str,
        context: dict[str, Any] | None = None,
        status: int = 200,
        *,
        language: str | None = None,
    ) -> HTMLResponse:
        chosen = self.renderer.translations.choose(language) if language else None
        lang = chosen or self.visitor_language(request)
        values = {"public_url": self.settings.public_url, **(context or {})}
        response = HTMLResponse(self.renderer.page(lang, name, values), status_code=status)
        response.headers["Content-Language"] = lang
        # Pages carry personal links and data: never cached by a shared cache.
        response.headers["Cache-Control"] = "no-store"
        return response

    def error_page(
        self,
        request: Request,
        status: int,
        title: str,
        message: str,
        *,
        language: str | None = None,
    ) -> HTMLResponse:
        lang = language or self.visitor_language(request)
        context = {
            "title": self.renderer.gettext(lang, title),
            "message": self.renderer.gettext(lang, message),
        }
        return self.page(request, "error.html", context, status, language=lang)

    def invalid_link(self, request: Request) -> HTMLResponse:
        return self.error_page(request, 404, INVALID_LINK_TITLE, INVALID_LINK_MESSAGE)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.subscriptions
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def is_json(request: Request) -> bool:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return content_type in JSON_TYPES


class BadBody(Exception):
    """A body that is neither a JSON object nor a form."""


async def read_body(request: Request) -> dict[str, Any]:
    """The request body as a dict, from JSON or from a form (list fields kept as lists)."""
    if is_json(request):
        try:
            data = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError, RecursionError):
            # RecursionError: nesting deeper than the parser goes ([[[[…), bad input too.
            raise BadBody("body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadBody("body must be a JSON object")
        return data
    try:
        form = await request.form(max_files=0)
    except Exception as exc:  # noqa: BLE001 - any malformed form is the client's mistake
        raise BadBody("body must be JSON or a form") from exc
    data = {}
    for key in form:
        values = [v for v in form.getlist(key) if isinstance(v, str)]
        if not values:
            continue
        data[key] = values if key in LIST_FIELDS else values[-1]
    return data


def parse(model: type[M], data: dict[str, Any], *, from_form: bool = False) -> M:
    """Validate, raising FastAPI's RequestValidationError (422 naming each field). A form's
    lists may come as text ("torture, death-penalty"); JSON lists must be lists."""
    try:
        return model.model_validate(data, context=TEXT_INPUT if from_form else None)
    except ValidationError as exc:
        errors = [
            {"loc": ("body", *err["loc"]), "msg": err["msg"], "type": err["type"]}
            for err in exc.errors(include_input=False, include_url=False)
        ]
        raise RequestValidationError(errors) from None


def field_error(exc: FieldError) -> RequestValidationError:
    return RequestValidationError(
        [{"loc": ("body", exc.field), "msg": exc.message, "type": "value_error"}]
    )


def errors_by_field(exc: RequestValidationError) -> dict[str, str]:
    """For re-rendering a form: the first message for each field."""
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        field = loc[0] if loc else "form"
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        out.setdefault(field, message)
    return out
