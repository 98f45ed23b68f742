"""What the routes share: the service's state, the unit of work, body parsing and page rendering."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import jinja2
from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.subscriptions.links import Links
from services.subscriptions.models import ConsentSource
from services.subscriptions.schemas import FieldError
from services.subscriptions.subscribers import Origin
from shared.settings import Settings
from shared.web import client_address

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# Fields that forms send as repeated values (check boxes).
LIST_FIELDS = ("channels", "themes")
JSON_TYPES = ("application/json", "application/merge-patch+json")

M = TypeVar("M", bound=BaseModel)


def make_templates() -> tuple[Jinja2Templates, jinja2.Environment]:
    """HTML pages (autoescaped) and SMS texts (plain; TwiML escapes them when it builds XML)."""
    loader = jinja2.FileSystemLoader(TEMPLATES_DIR)
    pages = jinja2.Environment(loader=loader, autoescape=jinja2.select_autoescape(["html"]))
    texts = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR / "sms"),
        autoescape=False,
        keep_trailing_newline=False,
    )
    return Jinja2Templates(env=pages), texts


@dataclass
class ServiceState:
    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    links: Links
    templates: Jinja2Templates
    sms_texts: jinja2.Environment
    notify: Callable[[], None]  # wakes the outbox relay

    @asynccontextmanager
    async def unit_of_work(self) -> AsyncIterator[AsyncSession]:
        """One transaction; after it commits, the outbox relay publishes what it wrote."""
        async with self.sessionmaker() as session, session.begin():
            yield session
        self.notify()

    def origin(self, request: Request, source: ConsentSource = "page") -> Origin:
        address = client_address(request, self.settings.trusted_proxy_set) or None
        return Origin(source, address)

    def page(
        self, request: Request, name: str, context: dict[str, Any] | None = None, status: int = 200
    ) -> HTMLResponse:
        values = {"public_url": self.settings.public_url, **(context or {})}
        response = self.templates.TemplateResponse(request, name, values, status_code=status)
        # Pages carry personal links and data: never cached by a shared cache.
        response.headers["Cache-Control"] = "no-store"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    def error_page(self, request: Request, status: int, title: str, message: str) -> HTMLResponse:
        return self.page(request, "error.html", {"title": title, "message": message}, status)

    def invalid_link(self, request: Request) -> HTMLResponse:
        return self.error_page(
            request,
            404,
            "This link does not work",
            "The link may be incomplete, too old, or no longer valid. "
            "Please use the most recent message we sent you.",
        )


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
        except (ValueError, UnicodeDecodeError):
            raise BadBody("body is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadBody("body must be a JSON object")
        return data
    try:
        form = await request.form()
    except Exception as exc:  # noqa: BLE001 - any malformed form is the client's mistake
        raise BadBody("body must be JSON or a form") from exc
    data = {}
    for key in form:
        values = [v for v in form.getlist(key) if isinstance(v, str)]
        if not values:
            continue
        data[key] = values if key in LIST_FIELDS else values[-1]
    return data


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate, raising FastAPI's RequestValidationError (422 naming each field)."""
    try:
        return model.model_validate(data)
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
