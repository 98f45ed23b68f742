"""The pages of a subscriber's consent links, each authorized by the signed token in its URL:
confirm (a page with a button; the POST confirms) and unsubscribe (RFC 8058 one-click).

Showing either page changes nothing: mail scanners and link previews follow every link."""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from services.subscriptions import page_docs as docs
from services.subscriptions import store
from services.subscriptions.models import Subscriber
from services.subscriptions.subscribers import confirm_channel, unsubscribe
from services.subscriptions.web import ServiceState, StateDep
from shared.tokens import InvalidToken

router = APIRouter(tags=["pages"])


# ---- confirm ----------------------------------------------------------------------------------


@router.get("/confirm/{token}", response_class=HTMLResponse, responses=docs.INVALID_LINK)
async def confirm_page(token: str, request: Request, state: StateDep) -> HTMLResponse:
    """A page with one button: showing it confirms nothing (mail scanners and link previews
    follow every link; only the person pressing the button may confirm, contract §11)."""
    try:
        ref = state.links.read_confirm(token)
    except InvalidToken:
        return state.invalid_link(request)
    async with state.sessionmaker() as session:
        subscriber = await store.subscriber_by_public_id(session, ref.subscriber)
    if subscriber is None or subscriber.address(ref.channel) is None:
        return state.invalid_link(request)
    status = subscriber.channel_status(ref.channel)
    outcome = {"pending": "ask", "confirmed": "already_confirmed"}.get(status or "", "not_pending")
    return _confirm_page(state, request, token, outcome, subscriber)


@router.post("/confirm/{token}", response_class=HTMLResponse, responses=docs.INVALID_LINK)
async def confirm(token: str, request: Request, state: StateDep) -> HTMLResponse:
    """The person's own confirmation (the page's button), whatever the body: it also lifts an
    earlier complaint's or unsubscription's suppression of the address."""
    try:
        ref = state.links.read_confirm(token)
    except InvalidToken:
        return state.invalid_link(request)
    async with state.unit_of_work() as session:
        outcome = await confirm_channel(session=session, ref=ref, origin=state.origin(request))
    if outcome == "unknown":
        return state.invalid_link(request)
    async with state.sessionmaker() as session:
        subscriber = await store.subscriber_by_public_id(session, ref.subscriber)
    if subscriber is None:
        return state.invalid_link(request)
    return _confirm_page(state, request, token, outcome, subscriber)


def _confirm_page(
    state: ServiceState, request: Request, token: str, outcome: str, subscriber: Subscriber
) -> HTMLResponse:
    return state.page(
        request,
        "confirm.html",
        {
            "outcome": outcome,
            "action_url": f"/confirm/{token}",
            "preferences_url": state.links.preferences(subscriber.public_id),
        },
        language=subscriber.language,
    )


# ---- unsubscribe ------------------------------------------------------------------------------


@router.get("/unsubscribe/{token}", response_class=HTMLResponse, responses=docs.INVALID_LINK)
async def unsubscribe_page(token: str, request: Request, state: StateDep) -> HTMLResponse:
    # Showing the page changes nothing: mail scanners follow links.
    try:
        ref = state.links.read_unsubscribe(token)
    except InvalidToken:
        return state.invalid_link(request)
    async with state.sessionmaker() as session:
        subscriber = await store.subscriber_by_public_id(session, ref.subscriber)
    if subscriber is None:
        return state.invalid_link(request)
    return state.page(
        request,
        "unsubscribe.html",
        {
            "done": subscriber.channel_status(ref.channel) == "unsubscribed",
            "channel": ref.channel,
            "action_url": f"/unsubscribe/{token}",
            "preferences_url": state.links.preferences(subscriber.public_id),
        },
        language=subscriber.language,
    )


@router.post("/unsubscribe/{token}", response_class=HTMLResponse, responses=docs.INVALID_LINK)
async def unsubscribe_now(token: str, request: Request, state: StateDep) -> HTMLResponse:
    """RFC 8058 one-click: takes effect at once, whatever the body (``List-Unsubscribe=One-Click``
    from a mail client, or the page's button)."""
    try:
        ref = state.links.read_unsubscribe(token)
    except InvalidToken:
        return state.invalid_link(request)
    origin = state.origin(request)
    if b"List-Unsubscribe=One-Click" in await request.body():
        # A mail client's one-click button, not our page's: a CRM hears which.
        origin = replace(origin, reason="one_click")
    async with state.unit_of_work() as session:
        subscriber = await store.subscriber_by_public_id(session, ref.subscriber, for_update=True)
        if subscriber is not None:
            await unsubscribe(
                session=session, subscriber=subscriber, channel=ref.channel, origin=origin
            )
    if subscriber is None:
        return state.invalid_link(request)
    return state.page(
        request,
        "unsubscribe.html",
        {"done": True, "channel": ref.channel},
        language=subscriber.language,
    )
