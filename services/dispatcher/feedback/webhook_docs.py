"""What the OpenAPI document says of the email feedback webhooks (webhooks.py's routes): the
bodies each ESP sends, the signature each is checked with, and the plain-text answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends
from fastapi.responses import PlainTextResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict, Field, RootModel

from shared.web import JSON, OpenApiResponses, request_body

PLAIN_TEXT = {"text/plain": {"schema": {"type": "string"}}}

# Read by the route itself (with its timestamp header); declared for the document.
_sendgrid_signature = APIKeyHeader(
    name="X-Twilio-Email-Event-Webhook-Signature",
    auto_error=False,
    scheme_name="SendGridSignature",
    description="ECDSA P-256 signature of X-Twilio-Email-Event-Webhook-Timestamp followed by "
    "the raw body, checked with UANET_SENDGRID_WEBHOOK_PUBLIC_KEY",
)
SendGridSignature = Annotated[str | None, Depends(_sendgrid_signature)]


class SendGridEvents(RootModel[list[dict[str, Any]]]):
    """SendGrid's Event Webhook: a JSON array of events (bounce, dropped, spamreport,
    delivered are acted on, matched by smtp-id or email)."""


class MailgunSignature(BaseModel):
    timestamp: str
    token: str
    signature: str


class MailgunWebhook(BaseModel):
    """A Mailgun webhook: HMAC-SHA256 of timestamp and token with
    UANET_MAILGUN_WEBHOOK_SIGNING_KEY, at most 5 minutes old, each token once."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    signature: MailgunSignature
    event_data: dict[str, Any] = Field(alias="event-data")


class SnsMessage(BaseModel):
    """An Amazon SNS message (SES notifications, the subscription confirmation), signed with
    the topic's certificate; only topics in UANET_SES_TOPIC_ARNS are taken."""

    model_config = ConfigDict(extra="allow")

    Type: str
    MessageId: str
    TopicArn: str
    Message: str = ""
    Signature: str
    SignatureVersion: str
    SigningCertURL: str


def _answers(*, unavailable: bool = False) -> OpenApiResponses:
    answers: OpenApiResponses = {
        200: {
            "description": "Taken (an event already taken changes nothing)",
            "content": PLAIN_TEXT,
        },
        400: {"description": "The body is not what this ESP sends", "content": PLAIN_TEXT},
        403: {
            "description": "Unsigned, forged, stale or replayed, or the webhook is off (no key)",
            "content": PLAIN_TEXT,
        },
    }
    if unavailable:
        answers[503] = {
            "description": "The SNS subscription could not be confirmed yet; SNS asks again",
            "content": PLAIN_TEXT,
        }
    return answers


def _unvalidated(model: type[BaseModel], *media_types: str) -> dict[str, Any]:
    # The route checks the signature over the raw body, then reads it: never a 422.
    extra = request_body(model, media_types=media_types, validated=False)
    extra["requestBody"]["required"] = True
    return extra


SENDGRID = {
    "openapi_extra": _unvalidated(SendGridEvents, JSON),
    "responses": _answers(),
    "response_class": PlainTextResponse,
}
MAILGUN = {
    "openapi_extra": _unvalidated(MailgunWebhook, JSON),
    "responses": _answers(),
    "response_class": PlainTextResponse,
}
# SNS posts its JSON as text/plain.
SES = {
    "openapi_extra": _unvalidated(SnsMessage, JSON, "text/plain"),
    "responses": _answers(unavailable=True),
    "response_class": PlainTextResponse,
}
