"""OSDI 1.1 on the publisher, for coordinators (and admins): ``GET /osdi/v1/`` (the entry point),
``/osdi/v1/advocacy_campaigns`` and ``…/{id}`` (each published or closed urgent action) and
``…/{id}/outreaches`` (the letters written from its page).

A token is given as ``OSDI-API-Token`` or as a bearer token. Collections page in the database
(LIMIT/OFFSET) in an order nothing changes (campaigns as published, outreaches as they arrived).
A campaign's ``modified_date`` is the later of the action's last change and its last outreach.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, case, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from services.publisher.auth import READ_ROLES, Principal, TokenGuard, bearer
from services.publisher.database import Database
from services.publisher.models import Outreach, OutreachTotal, UrgentAction
from services.publisher.osdi import resources
from shared.access import CallerFirstRoute
from shared.osdi import (
    HalJSONResponse,
    ModifiedWindow,
    Paging,
    modified_window,
    page_fields,
    paging,
    token_header,
)
from shared.settings import Settings
from shared.web import error_responses

LISTED = ("published", "closed")


class OsdiReaderGuard(TokenGuard):
    """A coordinator's or an admin's token, given as ``OSDI-API-Token`` or as a bearer token."""

    def __init__(self) -> None:
        super().__init__(READ_ROLES)

    async def presented(self, request: Request) -> str | None:
        return request.headers.get("osdi-api-token") or await super().presented(request)

    async def __call__(
        self,
        request: Request,
        # Declared for the OpenAPI document (either one); check() reads the headers itself.
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        osdi_token: Annotated[str | None, Depends(token_header)] = None,
    ) -> Principal:
        principal: Principal = await self.caller(request)
        return principal


OSDI_READER = OsdiReaderGuard()
OsdiReader = Annotated[Principal, Depends(OSDI_READER)]
router = APIRouter(prefix=resources.ROOT, tags=["OSDI"], route_class=CallerFirstRoute)


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


DatabaseDep = Annotated[Database, Depends(_database)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def _hal(model: BaseModel) -> HalJSONResponse:
    return HalJSONResponse(model.model_dump(mode="json", exclude_none=True))


def _not_found() -> HalJSONResponse:
    # HAL+JSON like the rest of the answers here (the OpenAPI document says this type).
    return HalJSONResponse({"detail": "no such advocacy campaign"}, status_code=404)


def _action_id(raw: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(raw)
    except ValueError:
        return None


# ---- queries ---------------------------------------------------------------------------------

# The later of the action's own change and its last outreach.
CAMPAIGN_MODIFIED = case(
    (
        and_(OutreachTotal.last_at.is_not(None), OutreachTotal.last_at > UrgentAction.updated_at),
        OutreachTotal.last_at,
    ),
    else_=UrgentAction.updated_at,
)


def _window(
    column: ColumnElement[datetime] | InstrumentedAttribute[datetime], window: ModifiedWindow
) -> list[ColumnElement[bool]]:
    conditions = []
    if window.after is not None:
        conditions.append(column > window.after)
    if window.before is not None:
        conditions.append(column < window.before)
    return conditions


async def _campaign(session: AsyncSession, action_id: uuid.UUID) -> UrgentAction | None:
    return await session.scalar(
        select(UrgentAction).where(UrgentAction.id == action_id, UrgentAction.status.in_(LISTED))
    )


async def _totals(session: AsyncSession, action_id: uuid.UUID) -> OutreachTotal | None:
    return await session.get(OutreachTotal, action_id)


# ---- routes ----------------------------------------------------------------------------------


@router.get("/", response_model=resources.EntryPoint, response_class=HalJSONResponse)
async def entry_point(_reader: OsdiReader, settings: SettingsDep) -> HalJSONResponse:
    """Where an OSDI client starts: links to the advocacy campaigns (here) and to the people
    (on subscriptions, under ``UANET_PUBLIC_URL``)."""
    return _hal(resources.entry_point(settings.console_url, settings.public_url))


@router.get(
    "/advocacy_campaigns",
    response_model=resources.CampaignsPage,
    response_class=HalJSONResponse,
    responses=error_responses(422),
)
async def list_campaigns(
    request: Request,
    _reader: OsdiReader,
    database: DatabaseDep,
    settings: SettingsDep,
    page: Annotated[Paging, Depends(paging)],
    window: Annotated[ModifiedWindow, Depends(modified_window)],
) -> HalJSONResponse:
    """Each published (or closed) urgent action, in the order they were published."""
    joined = (UrgentAction.__table__.outerjoin(OutreachTotal.__table__),)
    conditions = [UrgentAction.status.in_(LISTED), *_window(CAMPAIGN_MODIFIED, window)]
    async with database.read() as session:
        total = await session.scalar(select(func.count()).select_from(*joined).where(*conditions))
        rows = await session.execute(
            select(UrgentAction, OutreachTotal.outreaches, OutreachTotal.last_at)
            .select_from(*joined)
            .where(*conditions)
            .order_by(UrgentAction.published_at, UrgentAction.id)
            .limit(page.per_page)
            .offset(page.offset)
        )
        base = settings.console_url
        campaigns = [
            resources.advocacy_campaign(base, action, outreaches or 0, last_at)
            for action, outreaches, last_at in rows.tuples()
        ]
    answer = resources.CampaignsPage.model_validate(
        {
            **page_fields(base, request, page, int(total or 0)),
            "_embedded": {"osdi:advocacy_campaigns": campaigns},
        }
    )
    return _hal(answer)


@router.get(
    "/advocacy_campaigns/{action_id}",
    response_model=resources.AdvocacyCampaign,
    response_class=HalJSONResponse,
    responses=error_responses(404),
)
async def read_campaign(
    action_id: str, _reader: OsdiReader, database: DatabaseDep, settings: SettingsDep
) -> Response:
    """One advocacy campaign (404 for an unknown action or a draft)."""
    wanted = _action_id(action_id)
    if wanted is None:
        return _not_found()
    async with database.read() as session:
        action = await _campaign(session, wanted)
        if action is None:
            return _not_found()
        totals = await _totals(session, wanted)
    outreaches, last_at = (totals.outreaches, totals.last_at) if totals else (0, None)
    return _hal(resources.advocacy_campaign(settings.console_url, action, outreaches, last_at))


@router.get(
    "/advocacy_campaigns/{action_id}/outreaches",
    response_model=resources.OutreachesPage,
    response_class=HalJSONResponse,
    responses=error_responses(404, 422),
)
async def list_outreaches(
    action_id: str,
    request: Request,
    _reader: OsdiReader,
    database: DatabaseDep,
    settings: SettingsDep,
    page: Annotated[Paging, Depends(paging)],
    window: Annotated[ModifiedWindow, Depends(modified_window)],
) -> Response:
    """Each letter written from the action's page, as it arrived; ``osdi:person`` links to its
    writer on subscriptions (absent once they are erased)."""
    wanted = _action_id(action_id)
    if wanted is None:
        return _not_found()
    conditions = [Outreach.action_id == wanted, *_window(Outreach.updated_at, window)]
    async with database.read() as session:
        action = await _campaign(session, wanted)
        if action is None:
            return _not_found()
        total = await session.scalar(select(func.count()).select_from(Outreach).where(*conditions))
        rows = await session.execute(
            select(Outreach)
            .where(*conditions)
            .order_by(Outreach.seq)
            .limit(page.per_page)
            .offset(page.offset)
        )
        base, people = settings.console_url, settings.public_url
        outreaches = [resources.outreach(base, people, action, row) for row in rows.scalars()]
    answer = resources.OutreachesPage.model_validate(
        {
            **page_fields(base, request, page, int(total or 0)),
            "_embedded": {"osdi:outreaches": outreaches},
        }
    )
    return _hal(answer)
