"""OSDI 1.1 people (https://opensupporter.github.io/osdi-docs/people.html), read-only, for admin
tokens: ``GET /osdi/v1/people`` and ``GET /osdi/v1/people/{id}``, what a CRM syncs nightly.

Who is listed: every subscriber who has confirmed a channel at some point (or left one), never an
erased person. Someone who signed up and never confirmed is not listed: they have not consented
yet, and appear (with a new ``modified_date``) once they confirm.

An address's ``status``: ``subscribed`` while that channel is confirmed; ``bouncing`` when the
address is suppressed after a hard bounce; ``unsubscribed`` otherwise (they left, complained, said
STOP, or have not confirmed that channel yet: nothing is sent to it either way).

``modified_date`` is the subscriber row's ``updated_at``: it moves with every change of what is
shown here (preferences, confirmation, unsubscribe, and a bounce, which touches the row).
Collections are ordered by the subscriber's key, so a walk through the pages meets each person
once, whatever changes meanwhile; the database pages (LIMIT/OFFSET), nothing is loaded whole.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions.models import CONFIRMED, UNSUBSCRIBED, Subscriber, Suppression
from services.subscriptions.tokens import AdminGuard, Caller, bearer
from services.subscriptions.web import StateDep
from shared.access import CallerFirstRoute
from shared.osdi import (
    Collection,
    HalJSONResponse,
    Link,
    ModifiedWindow,
    Paging,
    Resource,
    identifier,
    modified_window,
    page_fields,
    paging,
    token_header,
    when,
)
from shared.web import error_responses

PEOPLE = "/osdi/v1/people"
AddressStatus = Literal["subscribed", "unsubscribed", "bouncing"]


class OsdiAdminGuard(AdminGuard):
    """An admin token, given as ``OSDI-API-Token`` or as a bearer token."""

    async def presented(self, request: Request) -> str | None:
        return request.headers.get("osdi-api-token") or await super().presented(request)

    async def __call__(
        self,
        request: Request,
        # Declared for the OpenAPI document (either one); check() reads the headers itself.
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        osdi_token: Annotated[str | None, Depends(token_header)] = None,
    ) -> Caller:
        caller: Caller = await self.caller(request)
        return caller


OSDI_ADMIN_GUARD = OsdiAdminGuard()
OsdiAdmin = Annotated[Caller, Depends(OSDI_ADMIN_GUARD)]
router = APIRouter(tags=["OSDI"], route_class=CallerFirstRoute)


# ---- the person, as OSDI shapes it -----------------------------------------------------------


class EmailAddress(BaseModel):
    address: str
    primary: bool
    status: AddressStatus


class PhoneNumber(BaseModel):
    number: str
    primary: bool
    sms_capable: bool
    status: AddressStatus


class PostalAddress(BaseModel):
    country: str  # ISO 3166-1 alpha-2, of residence


class PersonFields(BaseModel):
    """uanet's own fields (OSDI custom fields): themes as in the CSV export, ``;``-separated."""

    uanet_themes: str
    uanet_frequency: Literal["immediate", "daily_digest"]


class Person(Resource):
    given_name: str | None = None
    email_addresses: list[EmailAddress]
    phone_numbers: list[PhoneNumber]
    postal_addresses: list[PostalAddress]
    languages_spoken: list[str]
    custom_fields: PersonFields


class PeopleEmbedded(BaseModel):
    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)
    people: list[Person] = Field(alias="osdi:people")


class PeoplePage(Collection):
    embedded: PeopleEmbedded = Field(alias="_embedded")


def address_status(channel_status: str | None, suppression: str | None) -> AddressStatus:
    if suppression == "hard_bounce":
        return "bouncing"
    if channel_status != CONFIRMED or suppression is not None:
        return "unsubscribed"
    return "subscribed"


def person_url(base_url: str, public_id: uuid.UUID) -> str:
    return f"{base_url}{PEOPLE}/{public_id}"


def person(base_url: str, subscriber: Subscriber, suppressions: dict[str, str]) -> Person:
    emails = []
    if subscriber.email is not None:
        status = address_status(subscriber.email_status, suppressions.get(subscriber.email))
        emails.append(EmailAddress(address=subscriber.email, primary=True, status=status))
    phones = []
    if subscriber.phone is not None:
        status = address_status(subscriber.sms_status, suppressions.get(subscriber.phone))
        phones.append(
            PhoneNumber(number=subscriber.phone, primary=True, sms_capable=True, status=status)
        )
    return Person(
        identifiers=[identifier(subscriber.public_id)],
        created_date=when(subscriber.created_at),
        modified_date=when(subscriber.updated_at),
        given_name=subscriber.name or None,
        email_addresses=emails,
        phone_numbers=phones,
        postal_addresses=[PostalAddress(country=subscriber.country)],
        languages_spoken=[subscriber.language],
        custom_fields=PersonFields(
            uanet_themes=";".join(str(t) for t in subscriber.themes or []),
            uanet_frequency="daily_digest"
            if subscriber.frequency == "daily_digest"
            else "immediate",
        ),
        links={"self": Link(href=person_url(base_url, subscriber.public_id))},
    )


# ---- queries ---------------------------------------------------------------------------------


def listed() -> ColumnElement[bool]:
    """Not erased, and confirmed (or left) at least one channel."""
    shown = (CONFIRMED, UNSUBSCRIBED)
    return and_(
        Subscriber.erased_at.is_(None),
        or_(Subscriber.email_status.in_(shown), Subscriber.sms_status.in_(shown)),
    )


def in_window(window: ModifiedWindow) -> list[ColumnElement[bool]]:
    conditions = []
    if window.after is not None:
        conditions.append(Subscriber.updated_at > window.after)
    if window.before is not None:
        conditions.append(Subscriber.updated_at < window.before)
    return conditions


async def suppressions_of(session: AsyncSession, people: Sequence[Subscriber]) -> dict[str, str]:
    """Why each of these people's addresses is suppressed, for those that are (one query)."""
    addresses = sorted({a for p in people for a in (p.email, p.phone) if a is not None})
    if not addresses:
        return {}
    rows = await session.execute(
        select(Suppression.address, Suppression.reason).where(Suppression.address.in_(addresses))
    )
    return dict(rows.tuples().all())


async def people_page(
    session: AsyncSession, window: ModifiedWindow, paging: Paging
) -> tuple[list[Subscriber], dict[str, str], int]:
    conditions = [listed(), *in_window(window)]
    total = await session.scalar(select(func.count()).select_from(Subscriber).where(*conditions))
    rows = await session.execute(
        select(Subscriber)
        .where(*conditions)
        .order_by(Subscriber.id)
        .limit(paging.per_page)
        .offset(paging.offset)
    )
    people = list(rows.scalars())
    return people, await suppressions_of(session, people), int(total or 0)


# ---- routes ----------------------------------------------------------------------------------


def _hal(model: BaseModel, status_code: int = 200) -> HalJSONResponse:
    return HalJSONResponse(model.model_dump(mode="json", exclude_none=True), status_code)


@router.get(
    PEOPLE,
    response_model=PeoplePage,
    response_class=HalJSONResponse,
    responses=error_responses(422),
)
async def list_people(
    request: Request,
    state: StateDep,
    _admin: OsdiAdmin,
    page: Annotated[Paging, Depends(paging)],
    window: Annotated[ModifiedWindow, Depends(modified_window)],
) -> HalJSONResponse:
    """Every person, a page at a time, by uanet's own order; ``filter`` on ``modified_date``
    for what changed in a window (a CRM's nightly sync)."""
    async with state.sessionmaker() as session:
        people, suppressions, total = await people_page(session, window, page)
    base = state.settings.public_url
    answer = PeoplePage.model_validate(
        {
            **page_fields(base, request, page, total),
            "_embedded": {"osdi:people": [person(base, p, suppressions) for p in people]},
        }
    )
    return _hal(answer)


@router.get(
    PEOPLE + "/{subscriber_id}",
    response_model=Person,
    response_class=HalJSONResponse,
    responses=error_responses(404),
)
async def read_person(subscriber_id: str, state: StateDep, _admin: OsdiAdmin) -> Response:
    """One person (404 for an unknown, unconfirmed or erased one)."""
    try:
        public_id = uuid.UUID(subscriber_id)
    except ValueError:
        public_id = None
    found: Subscriber | None = None
    if public_id is not None:
        async with state.sessionmaker() as session:
            found = await session.scalar(
                select(Subscriber).where(Subscriber.public_id == public_id, listed())
            )
            suppressions = await suppressions_of(session, [found] if found else [])
    if found is None:
        # HAL+JSON like the rest of the answers here (the OpenAPI document says this type).
        return HalJSONResponse({"detail": "no such person"}, status_code=404)
    return _hal(person(state.settings.public_url, found, suppressions))
