"""The subscriptions service: ``create_app(settings)``.

Consumes ``subscriptions.actions`` (ActionPublished, ActionUpdated, ActionClosed,
ActionTargetsChanged) and
``subscriptions.suppressions`` (RecipientSuppressed) and ``subscriptions.tokens`` (ApiTokenIssued,
ApiTokenRevoked: who may call the admin endpoints); serves the public pages, the sign-up API and
the inbound SMS webhook; everything it emits goes through its outbox.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from services.subscriptions import (
    api,
    consent_pages,
    letter_pages,
    osdi,
    pacing,
    pages,
    webhooks,
)
from services.subscriptions.handlers import SubscriptionHandlers
from services.subscriptions.links import Links
from services.subscriptions.models import Outbox
from services.subscriptions.tokens import ADMIN_GUARD, make_token_handler
from services.subscriptions.web import PAGE_HEADERS, STATIC_DIR, ServiceState, make_renderer
from shared import events
from shared.access import guard_unknown_api_paths
from shared.runtime import ServiceRuntime, Subscription, broker_node_of
from shared.settings import Settings
from shared.tokens import LinkSigner
from shared.web import install_common

SERVICE = "subscriptions"


def create_app(settings: Settings) -> FastAPI:
    # Fails at start (not at the first link) when UANET_SECRET_KEY is missing.
    links = Links(LinkSigner(settings.require_secret()), settings.public_url)
    # Catalogues compiled once, at start: a broken .po stops the service here, not at a page.
    renderer = make_renderer()
    runtime: ServiceRuntime | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal runtime
        runtime = ServiceRuntime(SERVICE, settings, Outbox)
        app.state.runtime = runtime
        app.state.subscriptions = ServiceState(
            settings=settings,
            sessionmaker=runtime.sessionmaker,
            links=links,
            renderer=renderer,
            notify=runtime.relay.notify,
        )
        handlers = SubscriptionHandlers(
            runtime.sessionmaker,
            links,
            runtime.relay.notify,
            pace=pacing.paced_by(runtime.broker.queue_depth),
        )
        try:
            await runtime.start(
                [
                    Subscription(
                        "subscriptions.actions",
                        handlers.on_action_event,
                        (
                            events.ActionPublished,
                            events.ActionUpdated,
                            events.ActionClosed,
                            events.ActionTargetsChanged,
                        ),
                        # Each ActionPublished streams through every subscriber: a few at a time.
                        prefetch=4,
                    ),
                    Subscription(
                        "subscriptions.suppressions",
                        handlers.on_recipient_suppressed,
                        (events.RecipientSuppressed,),
                    ),
                    Subscription(
                        "subscriptions.tokens",
                        make_token_handler(runtime.sessionmaker),
                        (events.ApiTokenIssued, events.ApiTokenRevoked),
                    ),
                ]
            )
            yield
        finally:
            await runtime.stop()

    async def ready() -> dict[str, bool]:
        if runtime is None:
            return {"database": False, "broker": False}
        return await runtime.ready()

    app = FastAPI(title="uanet subscriptions", lifespan=lifespan, docs_url=None, redoc_url=None)
    install_common(
        app,
        ready,
        PAGE_HEADERS,
        max_body_bytes=settings.max_body_bytes,
        public_url=settings.public_url,
        broker_node=lambda: broker_node_of(app),
    )
    app.include_router(api.router)
    app.include_router(consent_pages.router)
    app.include_router(pages.router)
    app.include_router(letter_pages.router)
    app.include_router(webhooks.router)
    app.include_router(osdi.router)
    # The rest of /api/v1 (all of it admin but the sign-up) answers 401 first too; so does OSDI's.
    guard_unknown_api_paths(app, ADMIN_GUARD)
    guard_unknown_api_paths(app, osdi.OSDI_ADMIN_GUARD, prefix=osdi.PEOPLE.removesuffix("people"))
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def home() -> RedirectResponse:
        return RedirectResponse("/signup", status_code=303)

    return app
