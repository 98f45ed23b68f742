"""The dispatcher's entrypoints: its consumers and its one webhook. They only translate."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict

from rendering.renderer import Renderer
from services.dispatcher.deployment_rate import DeploymentRateLimiter
from services.dispatcher.feedback.port import BouncePort
from services.dispatcher.feedback.record import FeedbackRecorder
from services.dispatcher.feedback.sns import HttpsSnsGateway, SnsGateway
from services.dispatcher.feedback.webhooks import install_feedback_webhooks
from services.dispatcher.handlers import Dispatcher
from services.dispatcher.identity import MessageTags
from services.dispatcher.letters import LetterDispatcher
from services.dispatcher.models import Outbox
from services.dispatcher.reporting import REPORT_INTERVAL, DeliveryReportCompactor
from services.dispatcher.schedule import Clock, system_clock
from services.dispatcher.scheduler import Scheduler
from services.dispatcher.senders import EmailSender, SmsSender, TwilioSmsSender
from services.dispatcher.sms_lane import SharedAlertMark
from services.dispatcher.smtp_sender import SmtpEmailSender
from services.dispatcher.throttle import RateLimiter, SendRate
from shared.events import (
    ActionClosed,
    ActionPublished,
    ActionTargetsChanged,
    ActionUpdated,
    DeliveryBatch,
    LetterRequested,
    SubscriberErased,
    TransactionalMessage,
)
from shared.runtime import ServiceRuntime, Subscription, broker_node_of
from shared.settings import Settings
from shared.twilio_signature import FORBIDDEN_RESPONSE, TwilioSignature, twilio_signature_valid
from shared.web import FORM, install_common, request_body

log = logging.getLogger(__name__)

STATUS_WEBHOOK_PATH = "/webhooks/twilio/status"


def get_dispatcher(request: Request) -> Dispatcher:
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]
PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}


class TwilioStatusCallback(BaseModel):
    """The form fields we read of Twilio's status callback (it sends more). Twilio always sends
    the first two; a signed callback without them is acknowledged and changes nothing."""

    model_config = ConfigDict(extra="allow")

    MessageSid: str = ""
    MessageStatus: str = ""
    ErrorCode: str = ""


def subscriptions(
    dispatcher: Dispatcher, letters: LetterDispatcher | None = None
) -> list[Subscription]:
    found = [
        Subscription(
            "dispatcher.actions",
            dispatcher.handle_action_event,
            (ActionPublished, ActionUpdated, ActionClosed, ActionTargetsChanged, SubscriberErased),
        ),
        # A batch keeps the senders busy for a while: a few at a time is enough.
        Subscription("dispatcher.batches", dispatcher.handle_batch, (DeliveryBatch,), prefetch=4),
        Subscription(
            "dispatcher.messages", dispatcher.handle_transactional, (TransactionalMessage,)
        ),
    ]
    if letters is not None:
        found.append(
            Subscription(
                "dispatcher.letters", letters.handle_letter, (LetterRequested,), prefetch=4
            )
        )
    return found


def send_rate(rate: Decimal, channel: str, runtime: ServiceRuntime) -> SendRate:
    """The deployment's rate on PostgreSQL (any number of dispatchers share it); SQLite is one
    process, which holds it alone."""
    if runtime.engine.dialect.name == "postgresql":
        return DeploymentRateLimiter(rate, channel, runtime.sessionmaker)
    return RateLimiter(rate)


def create_app(
    settings: Settings,
    *,
    email_sender: EmailSender | None = None,
    sms_sender: SmsSender | None = None,
    clock: Clock = system_clock,
    sns: SnsGateway | None = None,
) -> FastAPI:
    """The dispatcher service; tests may hand in fake senders, a clock and an SNS gateway of
    their own, production uses SMTP, Twilio, the system clock and SNS over HTTPS."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = ServiceRuntime("dispatcher", settings, Outbox)
        # Delivery counts go out folded, a few times a second (see reporting.py).
        runtime.relay.compactor = DeliveryReportCompactor()
        runtime.relay.min_interval = REPORT_INTERVAL
        email = email_sender or SmtpEmailSender(settings, pool_size=settings.smtp_concurrency)
        sms = sms_sender or TwilioSmsSender(settings)
        renderer = Renderer(mail_from=settings.mail_from)
        secret = settings.secret_key.get_secret_value() if settings.secret_key else None
        tags = MessageTags(
            secret, domain=renderer.message_id_domain, bounce_address=settings.bounce_address
        )
        dispatcher = Dispatcher(
            sessionmaker=runtime.sessionmaker,
            email=email,
            sms=sms,
            renderer=renderer,
            email_rate=send_rate(settings.email_rate, "email", runtime),
            sms_rate=send_rate(settings.sms_rate, "sms", runtime),
            notify=runtime.relay.notify,
            # Two sends in flight per SMTP connection: one being answered, the next one's
            # envelope pipelined behind its content (smtp_sender.SmtpEmailSender).
            concurrency=2 * settings.smtp_concurrency,
            clock=clock,
            tags=tags,
            confirmation_sms_per_hour=settings.confirmation_sms_per_hour,
            shared_alert_mark=(
                SharedAlertMark(runtime.sessionmaker)
                if runtime.engine.dialect.name == "postgresql"
                else None
            ),
        )
        # Releases held SMS and daily digests when due (quiet hours, 09:00 local).
        scheduler = Scheduler(dispatcher)
        letters = LetterDispatcher(
            sessionmaker=runtime.sessionmaker,
            email=email,
            mail_from=settings.mail_from,
            email_rate=dispatcher.email_rate,
            per_target_per_minute=settings.letters_per_target_per_minute,
            notify=runtime.relay.notify,
            tags=tags,
        )
        # Late bounces and complaints: the ESP webhooks and, when configured, the bounce port.
        feedback = FeedbackRecorder(runtime.sessionmaker, tags, runtime.relay.notify)
        gateway = sns or HttpsSnsGateway()
        bounce_port = (
            BouncePort(feedback, host=settings.bounce_smtp_host, port=settings.bounce_smtp_port)
            if settings.bounce_smtp_port
            else None
        )
        app.state.runtime = runtime
        app.state.dispatcher = dispatcher
        app.state.scheduler = scheduler
        app.state.letters = letters
        app.state.feedback = feedback
        app.state.sns = gateway
        app.state.bounce_port = bounce_port
        try:
            await runtime.start(subscriptions(dispatcher, letters))
            scheduler.start()
            if bounce_port is not None:
                await bounce_port.start()
            yield
        finally:
            # SIGTERM (a deploy): stop starting sends first, so what is in flight is all
            # that the drain below waits for; then consumers, handlers and outbox wind down.
            dispatcher.stop_taking_work()
            letters.stop_taking_work()
            # No new reports either: the MTA offers them again to the next process.
            if bounce_port is not None:
                await bounce_port.stop()
            if isinstance(gateway, HttpsSnsGateway):
                await gateway.close()
            await scheduler.stop()
            await runtime.stop()
            await email.close()
            await sms.close()

    app = FastAPI(title="uanet dispatcher", lifespan=lifespan, docs_url=None, redoc_url=None)

    async def ready() -> dict[str, bool]:
        runtime: ServiceRuntime = app.state.runtime
        return await runtime.ready()

    install_common(
        app,
        ready,
        max_body_bytes=settings.max_body_bytes,
        public_url=settings.dispatcher_public_url,
        broker_node=lambda: broker_node_of(app),
    )
    install_feedback_webhooks(
        app, settings, recorder=lambda: app.state.feedback, sns=lambda: app.state.sns
    )

    @app.post(
        STATUS_WEBHOOK_PATH,
        tags=["webhooks"],
        response_class=PlainTextResponse,
        openapi_extra=request_body(TwilioStatusCallback, media_types=(FORM,), validated=False),
        responses={
            200: {
                "description": "Recorded (unknown message sids and intermediate statuses too)",
                "content": PLAIN_TEXT,
            },
            400: {"description": "The body is not a form", "content": PLAIN_TEXT},
            **FORBIDDEN_RESPONSE,
        },
    )
    async def twilio_status(
        request: Request, dispatcher: DispatcherDep, signature: TwilioSignature
    ) -> Response:
        """Twilio's delivery receipts for the SMS we sent (``StatusCallback``)."""
        token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
        # Nothing unsigned is parsed (within the body limit, and no files ever spooled).
        if not token or not request.headers.get("x-twilio-signature"):
            return PlainTextResponse("forbidden", status_code=403)
        try:
            form = await request.form(max_files=0)
        except Exception:  # noqa: BLE001 - an unreadable body is a bad request, not a 500
            return PlainTextResponse("bad request", status_code=400)
        # Without a token nothing can prove the callback came from Twilio: refuse it.
        if not token or not twilio_signature_valid(
            auth_token=token,
            url=f"{settings.dispatcher_public_url}{STATUS_WEBHOOK_PATH}",
            form=form,
            signature=signature,
        ):
            return PlainTextResponse("forbidden", status_code=403)
        sid = str(form.get("MessageSid") or "")
        status = str(form.get("MessageStatus") or "")
        error_code = str(form.get("ErrorCode") or "") or None
        await dispatcher.record_receipt(sid, status, error_code)
        # Unknown sids and intermediate statuses are acknowledged too: Twilio need not resend.
        return PlainTextResponse("", status_code=200)

    return app
