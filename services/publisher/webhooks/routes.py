"""``/api/v1/webhooks`` (contract §8, admin): register, list, remove and replay endpoints, and
read what was delivered to each. Routes only translate."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response, status
from fastapi.responses import JSONResponse

from services.publisher.auth import Admin
from services.publisher.database import DatabaseDep
from services.publisher.webhooks import registry
from services.publisher.webhooks.delivery import WebhookDeliverer
from services.publisher.webhooks.registry import (
    EndpointNotFound,
    WebhookDeliveryPage,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointList,
    WebhookEndpointRead,
    WebhookReplay,
    WebhookReplayed,
)
from shared.access import CallerFirstRoute
from shared.web import error_responses

router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"], route_class=CallerFirstRoute)


def _deliverer(request: Request) -> WebhookDeliverer:
    deliverer: WebhookDeliverer = request.app.state.webhooks
    return deliverer


def _sealing_key(request: Request) -> str:
    key: str = request.app.state.sealing_key
    return key


def _endpoint_id(endpoint_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(endpoint_id)
    except ValueError:
        raise EndpointNotFound(endpoint_id) from None


DelivererDep = Annotated[WebhookDeliverer, Depends(_deliverer)]
SealingKey = Annotated[str, Depends(_sealing_key)]
EndpointId = Annotated[uuid.UUID, Depends(_endpoint_id)]


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookEndpointCreated)
async def add_endpoint(
    endpoint_in: WebhookEndpointCreate,
    principal: Admin,
    database: DatabaseDep,
    sealing_key: SealingKey,
    deliverer: DelivererDep,
) -> WebhookEndpointCreated:
    """Register an endpoint; the answer carries its signing secret, never shown again."""
    async with database.write() as session:
        endpoint, secret = await registry.add_endpoint(
            session,
            endpoint_in=endpoint_in,
            secret_key=sealing_key,
            actor=principal.actor,
        )
    deliverer.notify()
    read = WebhookEndpointRead.model_validate(endpoint)
    return WebhookEndpointCreated(**read.model_dump(), secret=secret)


@router.get("", response_model=WebhookEndpointList)
async def list_endpoints(_: Admin, database: DatabaseDep) -> WebhookEndpointList:
    async with database.read() as session:
        endpoints = await registry.list_endpoints(session)
    return WebhookEndpointList(items=[WebhookEndpointRead.model_validate(e) for e in endpoints])


@router.delete(
    "/{endpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404),
)
async def remove_endpoint(endpoint_id: EndpointId, principal: Admin, database: DatabaseDep) -> None:
    """Nothing more is sent to it."""
    async with database.write() as session:
        await registry.remove_endpoint(session, endpoint_id=endpoint_id, actor=principal.actor)


@router.get(
    "/{endpoint_id}/deliveries",
    response_model=WebhookDeliveryPage,
    responses=error_responses(404),
)
async def list_deliveries(
    endpoint_id: EndpointId,
    _: Admin,
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> WebhookDeliveryPage:
    """What was sent to the endpoint, newest first (ids and states only, no event data)."""
    async with database.read() as session:
        return await registry.list_deliveries(
            session, endpoint_id=endpoint_id, limit=limit, offset=offset
        )


@router.post(
    "/{endpoint_id}/replay", response_model=WebhookReplayed, responses=error_responses(404)
)
async def replay(
    endpoint_id: EndpointId,
    replay_in: WebhookReplay,
    principal: Admin,
    database: DatabaseDep,
    deliverer: DelivererDep,
) -> WebhookReplayed:
    """Send every event since ``since`` again, each with its first ``webhook-id``; a disabled
    endpoint is active again."""
    async with database.write() as session:
        replayed = await registry.replay(
            session, endpoint_id=endpoint_id, since=replay_in.since, actor=principal.actor
        )
    deliverer.notify()
    return replayed


def install_webhook_errors(app: FastAPI) -> None:
    @app.exception_handler(EndpointNotFound)
    async def not_found(request: Request, exc: EndpointNotFound) -> Response:
        return JSONResponse({"detail": "no such webhook endpoint"}, status_code=404)
