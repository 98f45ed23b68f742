"""The parts of OSDI 1.1 (https://opensupporter.github.io/osdi-docs/) both sides serve: HAL+JSON
answers, a collection's paging (``page``, ``per_page``, ``total_pages``, ``total_records``,
``_links.next``/``prev``, the items under ``_embedded``), the ``filter`` on ``modified_date`` a CRM
syncs with, and the ``OSDI-API-Token`` header.

The names are the specification's own. The resources themselves are each service's: people in
``services/subscriptions/osdi.py``, advocacy campaigns and outreaches in
``services/publisher/osdi/``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field

SPECIFICATION = "https://opensupporter.github.io/osdi-docs/"
HAL_JSON = "application/hal+json"
ORIGIN_SYSTEM = "uanet"
# A page holds 25 items unless asked; more than 100 is answered with 100 (as OSDI's
# ``max_pagesize`` allows): a client asking for 1,000 gets full pages, and ``per_page`` says so.
DEFAULT_PER_PAGE = 25
MAX_PER_PAGE = 100
# The link relations' documentation, as HAL's "curies" name it.
CURIES = [{"name": "osdi", "href": SPECIFICATION + "{rel}", "templated": True}]

TOKEN_HEADER = "OSDI-API-Token"
# auto_error=False: a missing header must be the service's own 401, not FastAPI's 403.
token_header = APIKeyHeader(name=TOKEN_HEADER, auto_error=False, scheme_name="OsdiApiToken")

PER_PAGE_DOC = (
    f"Items per page, {DEFAULT_PER_PAGE} by default; more than {MAX_PER_PAGE} is answered with "
    f"{MAX_PER_PAGE} (the answer's per_page says how many)"
)
FILTER_DOC = (
    "Only what changed in a window: modified_date gt 'ISO 8601 time', modified_date lt '…', "
    "or both joined by ' and '. Anything else is refused (422, field filter)"
)


class HalJSONResponse(JSONResponse):
    media_type = HAL_JSON


def identifier(value: object) -> str:
    """The resource's id in uanet, as OSDI writes foreign ids: ``uanet:<id>``."""
    return f"{ORIGIN_SYSTEM}:{value}"


def when(value: datetime) -> str:
    """An OSDI date: ISO 8601 in UTC, with a ``Z``."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---- shapes ------------------------------------------------------------------------------------


class Link(BaseModel):
    model_config = ConfigDict(frozen=True)
    href: str
    title: str | None = None


class Resource(BaseModel):
    """What every OSDI resource carries."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    identifiers: list[str]
    origin_system: str = ORIGIN_SYSTEM
    created_date: str
    modified_date: str
    links: dict[str, Link] = Field(alias="_links")


class CollectionLinks(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    self_: Link = Field(alias="self")
    next: Link | None = None
    prev: Link | None = None


class Collection(BaseModel):
    """A page of a collection; subclasses name what ``_embedded`` holds."""

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    total_pages: int
    total_records: int
    page: int
    per_page: int
    links: CollectionLinks = Field(alias="_links")


# ---- paging ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Paging:
    page: int
    per_page: int

    @property
    def offset(self) -> int:
        return (self.page - 1) * self.per_page


def paging(
    page: Annotated[int, Query(ge=1, le=1_000_000_000, description="1 is the first")] = 1,
    per_page: Annotated[int, Query(ge=1, description=PER_PAGE_DOC)] = DEFAULT_PER_PAGE,
) -> Paging:
    return Paging(page=page, per_page=min(per_page, MAX_PER_PAGE))


def page_fields(base_url: str, request: Request, paging: Paging, total: int) -> dict[str, Any]:
    """A collection's own fields: the counts and the links (under ``base_url``, the service's
    public base) to this page and its neighbours, keeping the filter.

    A page past the end is still a page (empty): a client walking forward simply stops there.
    """
    pages = math.ceil(total / paging.per_page)

    def url(page: int) -> str:
        query = request.url.include_query_params(page=page, per_page=paging.per_page).query
        return f"{base_url}{request.url.path}?{query}"

    links: dict[str, Link] = {"self": Link(href=url(paging.page))}
    if paging.page < pages:
        links["next"] = Link(href=url(paging.page + 1))
    if paging.page > 1:
        # From past the end, "prev" is the last page that has items.
        links["prev"] = Link(href=url(min(paging.page - 1, max(pages, 1))))
    return {
        "total_pages": pages,
        "total_records": total,
        "page": paging.page,
        "per_page": paging.per_page,
        "_links": CollectionLinks.model_validate(links),
    }


# ---- filter ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModifiedWindow:
    """``modified_date gt after`` and/or ``modified_date lt before`` (both exclusive)."""

    after: datetime | None = None
    before: datetime | None = None


_CLAUSE = re.compile(r"\s*modified_date\s+(gt|lt)\s+'([^']{1,40})'\s*", re.IGNORECASE)


def _invalid_filter(message: str) -> RequestValidationError:
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", "filter"), "msg": message, "input": None}]
    )


def _time(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise _invalid_filter(f"not an ISO 8601 time: {text[:40]!r}") from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def parse_filter(text: str | None) -> ModifiedWindow:
    """Read OSDI's OData-style filter; only ``modified_date`` with ``gt`` and ``lt`` is served."""
    if text is None or not text.strip():
        return ModifiedWindow()
    found: dict[str, datetime] = {}
    for clause in re.split(r"\s+and\s+", text.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.fullmatch(clause)
        if match is None:
            raise _invalid_filter("expected modified_date gt 'TIME' and/or modified_date lt 'TIME'")
        operator = match.group(1).lower()
        if operator in found:
            raise _invalid_filter(f"modified_date {operator} given twice")
        found[operator] = _time(match.group(2))
    return ModifiedWindow(after=found.get("gt"), before=found.get("lt"))


def modified_window(
    filter: Annotated[str | None, Query(max_length=200, description=FILTER_DOC)] = None,
) -> ModifiedWindow:
    return parse_filter(filter)
