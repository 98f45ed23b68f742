"""The publisher service: ``create_app(settings)`` for uvicorn (``uanet serve publisher``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.publisher.api import audit_router, install_error_responses, router
from services.publisher.audit import AUDIT_QUEUE, AuditConsumer
from services.publisher.bounces import BOUNCE_QUEUE, BounceConsumer
from services.publisher.console import CONSOLE_HEADERS, install_console
from services.publisher.database import Database
from services.publisher.federation.routes import actions_router as federation_actions_router
from services.publisher.federation.routes import router as federation_router
from services.publisher.federation.section import CountsReporter, ensure_hub_endpoint
from services.publisher.live_streams import StreamSlots
from services.publisher.models import Outbox
from services.publisher.osdi.outreaches import OUTREACH_EVENTS, OUTREACH_QUEUE, OutreachConsumer
from services.publisher.osdi.routes import OSDI_READER
from services.publisher.osdi.routes import router as osdi_router
from services.publisher.tally import TALLY_EVENTS, StatsNotifier, TallyConsumer
from services.publisher.webhooks.consumer import (
    WEBHOOK_EVENTS,
    WEBHOOKS_QUEUE,
    WebhookEventsConsumer,
)
from services.publisher.webhooks.delivery import WebhookDeliverer
from services.publisher.webhooks.routes import install_webhook_errors
from services.publisher.webhooks.routes import router as webhooks_router
from shared import events
from shared.access import guard_unknown_api_paths
from shared.runtime import ServiceRuntime, Subscription, broker_node_of
from shared.settings import Settings
from shared.web import install_common

TALLY_QUEUE = "publisher.tally"


def create_app(settings: Settings) -> FastAPI:
    # Built here but connected only in the lifespan: nothing touches the network at import or
    # construction time.
    runtime = ServiceRuntime("publisher", settings, Outbox)
    database = Database(runtime.engine, runtime.sessionmaker)
    notifier = StatsNotifier()
    tally = TallyConsumer(database, notifier)
    # `uanet serve` refuses to start without UANET_SECRET_KEY; an app built for a test may not
    # sign links, and then seals webhook secrets under the empty key.
    sealing_key = settings.secret_key.get_secret_value() if settings.secret_key else ""
    webhooks = WebhookDeliverer(
        database,
        secret_key=sealing_key,
        retry_delays=settings.webhook_retry_delays,
        disable_after=settings.webhook_disable_delay,
    )

    reporter = CountsReporter(database, webhooks.notify) if settings.is_section else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if reporter is not None:
            # A section reports to its hub through the deliverer, signed with its key.
            await ensure_hub_endpoint(database, settings, sealing_key)
        await runtime.start(
            [
                Subscription(TALLY_QUEUE, tally, TALLY_EVENTS),
                Subscription(BOUNCE_QUEUE, BounceConsumer(database), (events.TargetBounced,)),
                Subscription(OUTREACH_QUEUE, OutreachConsumer(database), OUTREACH_EVENTS),
                Subscription(
                    AUDIT_QUEUE,
                    AuditConsumer(database),
                    (events.SubscriberErased, events.ApiTokenUsed),
                ),
                Subscription(
                    WEBHOOKS_QUEUE,
                    WebhookEventsConsumer(database, webhooks.notify),
                    WEBHOOK_EVENTS,
                ),
            ]
        )
        webhooks.start()
        if reporter is not None:
            reporter.start()
        try:
            yield
        finally:
            if reporter is not None:
                await reporter.stop()
            await webhooks.stop()
            await runtime.stop()

    # No /docs page: Swagger UI runs inline script, which the console's policy refuses.
    app = FastAPI(
        title="uanet publisher",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.database = database
    app.state.stats_notifier = notifier
    app.state.stream_slots = StreamSlots()
    app.state.tally = tally
    app.state.webhooks = webhooks
    app.state.sealing_key = sealing_key
    app.include_router(router)
    app.include_router(audit_router)
    app.include_router(osdi_router)
    app.include_router(webhooks_router)
    app.include_router(federation_router)
    app.include_router(federation_actions_router)
    install_error_responses(app)
    install_webhook_errors(app)
    # Unknown paths under /osdi/v1/ ask for a token first too.
    guard_unknown_api_paths(app, OSDI_READER, prefix="/osdi/v1/")
    install_console(app)
    install_common(
        app,
        runtime.ready,
        CONSOLE_HEADERS,
        max_body_bytes=settings.max_body_bytes,
        public_url=settings.console_url,
        broker_node=lambda: broker_node_of(app),
    )
    return app
