"""One RabbitMQ user per service, and who may send what (contract §11).

With one broker user for all, a compromised dispatcher could publish ``token.issued`` and
subscriptions would believe it. So:

- Each service may connect as its own user (``UANET_<SERVICE>_AMQP_URL``, made by
  ``uanet broker users --apply``), allowed to configure, write and read only its own queues
  (``<service>.*``, their delay queues included), the two exchanges, and the dead-letter queue.
- Every message a service publishes carries the AMQP ``user_id`` property, its own user:
  RabbitMQ refuses a ``user_id`` that is not the connection's user, so the property names the
  real sender (an omitted one is no sender).
- An event that only one service may send (``ONLY_FROM``: an action's publication, change or
  close and a token issued or revoked by the publisher, an erasure by subscriptions) is acted
  on only when its ``user_id`` is that service's user; otherwise it is dead-lettered with the
  reason. A consumer's own retry (it republishes the message to its delay queue, as itself)
  carries the sender it checked in ``x-uanet-sent-by``, believed only on a message from the
  consumer's own user.
- A service needs the other services' user names, not their passwords: given its own user
  alone, it infers theirs (``SenderCheck.for_service``).

With one user for every service (development: ``guest``), every sender is that user and the
check holds trivially.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from shared import events

H_SENT_BY = "x-uanet-sent-by"

# Events only one service may send: routing key -> that service.
ONLY_FROM: Mapping[str, str] = {
    # An action's life: a forged one would put words on the public act pages, re-aim the
    # letters at other officials, or close an action early.
    events.ActionPublished.ROUTING_KEY: "publisher",
    events.ActionUpdated.ROUTING_KEY: "publisher",
    events.ActionClosed.ROUTING_KEY: "publisher",
    events.ActionTargetsChanged.ROUTING_KEY: "publisher",
    events.ApiTokenIssued.ROUTING_KEY: "publisher",
    events.ApiTokenRevoked.ROUTING_KEY: "publisher",
    events.SubscriberErased.ROUTING_KEY: "subscriptions",
    # What a CRM hears of people and their responses (webhooks, OSDI outreaches): a forged one
    # would put words in a subscriber's mouth.
    events.SubscriberChanged.ROUTING_KEY: "subscriptions",
    events.SubscriberUnsubscribed.ROUTING_KEY: "subscriptions",
    events.ResponseRecorded.ROUTING_KEY: "subscriptions",
    events.LetterWritten.ROUTING_KEY: "subscriptions",
}


def amqp_user(urls: str) -> str:
    """The user a broker URL (or the first of a cluster's, which share their users) logs in
    as; AMQP's default when it names none."""
    first = urls.split(",")[0].strip()
    username = urlsplit(first).username
    return unquote(username) if username else "guest"


@dataclass(frozen=True)
class SenderCheck:
    """What a consuming service believes about who sent a message."""

    users: Mapping[str, str]  # service -> its broker user
    own: str  # the consuming service's own broker user

    @classmethod
    def for_service(
        cls, shared_url: str, own_urls: Mapping[str, str | None], service: str
    ) -> SenderCheck:
        """``own_urls``: each service's ``UANET_<SERVICE>_AMQP_URL`` where set. A service given
        only its own user, named ``<prefix>-<service>`` as ``uanet broker users`` names them,
        takes the others to be ``<prefix>-<other>``: it needs their names, never their
        passwords (a compromised dispatcher must not hold the publisher's)."""
        shared_user = amqp_user(shared_url)
        own_url = own_urls.get(service)
        own_user = amqp_user(own_url) if own_url else shared_user
        prefix = own_user.removesuffix(f"-{service}") if own_url else None
        users: dict[str, str] = {}
        for name in own_urls:
            url = own_urls[name]
            if url:
                users[name] = amqp_user(url)
            elif prefix is not None and prefix != own_user:
                users[name] = f"{prefix}-{name}"
            else:
                users[name] = shared_user
        return cls(users=users, own=own_user)

    def sender(self, user_id: str | None, headers: Mapping[str, Any]) -> str | None:
        """Who sent it: the broker-checked ``user_id``, or for our own retry the sender we
        checked before (``x-uanet-sent-by``)."""
        carried = headers.get(H_SENT_BY)
        if user_id == self.own and isinstance(carried, str | bytes) and carried:
            return carried.decode() if isinstance(carried, bytes) else carried
        return user_id or None

    def refusal(self, routing_key: str, user_id: str | None, headers: Mapping[str, Any]) -> str:
        """Why this message may not be acted on; "" when it may."""
        service = ONLY_FROM.get(routing_key)
        if service is None:
            return ""
        sender = self.sender(user_id, headers)
        if sender != self.users[service]:
            return f"{routing_key} may only come from the {service}'s broker user, not {sender!r}"
        return ""


@dataclass(frozen=True)
class Permissions:
    """RabbitMQ's configure / write / read regular expressions for one user."""

    configure: str
    write: str
    read: str


def permissions(service: str) -> Permissions:
    """Only the service's own queues (and their delay queues), the events exchange it
    publishes to, and the dead-letter exchange and queue it dead-letters to."""
    own = rf"{service}\..+"
    shared = r"uanet\.events|uanet\.dead-letter|uanet\.dead-letters"
    return Permissions(
        configure=rf"^({own}|{shared})$",
        # amq.default: a retry goes to the service's delay queue through the default exchange.
        write=rf"^({own}|{shared}|amq\.default)$",
        read=rf"^({own}|uanet\.events|uanet\.dead-letter)$",
    )
