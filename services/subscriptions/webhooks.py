"""``POST /webhooks/twilio/sms``: inbound SMS from Twilio, answered with TwiML."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict
from twilio.twiml.messaging_response import MessagingResponse

from services.subscriptions.inbound_sms import handle_inbound_sms
from services.subscriptions.web import StateDep
from shared.twilio_signature import FORBIDDEN_RESPONSE, TwilioSignature, twilio_signature_valid
from shared.web import FORM, request_body

log = logging.getLogger(__name__)

router = APIRouter()

TWIML = "application/xml"


def twiml(text: str | None) -> Response:
    answer = MessagingResponse()
    if text:
        answer.message(text)
    return Response(str(answer.to_xml()), media_type=TWIML)


class InboundSms(BaseModel):
    """The form fields we read of Twilio's inbound message webhook (it sends more). Twilio always
    sends them; a signed call without them is answered with an empty TwiML all the same."""

    model_config = ConfigDict(extra="allow")

    From: str = ""
    Body: str = ""
    MessageSid: str = ""


@router.post(
    "/webhooks/twilio/sms",
    response_class=Response,
    tags=["webhooks"],
    openapi_extra=request_body(InboundSms, media_types=(FORM,), validated=False),
    responses={
        200: {
            "description": "TwiML: the answer to send back (HELP, YES, STOP...), or none",
            "content": {TWIML: {"schema": {"type": "string"}}},
        },
        **FORBIDDEN_RESPONSE,
    },
)
async def inbound_sms(request: Request, state: StateDep, signature: TwilioSignature) -> Response:
    settings = state.settings
    token = settings.twilio_auth_token.get_secret_value() if settings.twilio_auth_token else ""
    # Nothing unsigned is parsed (within the body limit, and no files ever spooled).
    if not token or not request.headers.get("x-twilio-signature"):
        log.warning("inbound sms with a bad or missing signature")
        return Response("forbidden", status_code=403, media_type="text/plain")
    try:
        form = await request.form(max_files=0)
    except Exception:  # noqa: BLE001 - not a form: cannot be Twilio
        return Response("forbidden", status_code=403, media_type="text/plain")
    valid = bool(token) and twilio_signature_valid(
        auth_token=token,
        url=f"{settings.public_url}/webhooks/twilio/sms",
        form=form,
        signature=signature,
    )
    if not valid:
        log.warning("inbound sms with a bad or missing signature")
        return Response("forbidden", status_code=403, media_type="text/plain")
    sender = str(form.get("From") or "")
    body = str(form.get("Body") or "")
    message_sid = str(form.get("MessageSid") or "") or None
    if not sender:
        return twiml(None)
    async with state.unit_of_work() as session:
        reply = await handle_inbound_sms(
            session=session, sender=sender, body=body, message_sid=message_sid
        )
    if reply is None:
        return twiml(None)
    text = state.renderer.sms(
        reply.language, reply.template, {"public_url": settings.public_url, **reply.context}
    )
    return twiml(text)
