"""The workers that deliver webhooks: one lane per active endpoint, so a slow or dead endpoint
holds back only itself, never another endpoint and never the alerts (they are other processes'
work, and this is a few tasks of the publisher's event loop).

A lane claims up to ``PER_ENDPOINT`` due deliveries by moving their ``next_attempt_at`` a lease
ahead (a process killed mid-send leaves them due again once the lease ends), sends them at
once, and records each outcome: 2xx delivered; ``410 Gone`` disables the endpoint; anything
else (a status, a timeout, a refused connection) is tried again after the next wait of
``UANET_WEBHOOK_RETRY_SCHEDULE``, and after the last one the delivery is ``failed``. An endpoint
failing without a success for ``UANET_WEBHOOK_DISABLE_AFTER`` (5 days) is disabled too.

Memory stays flat whatever waits: a lane holds at most ``PER_ENDPOINT`` events
(``bench/webhook_backlog.py`` measures it with 100,000 waiting).

Tries in flight are bounded per lane and in all (``slots``): each lane is owed its share of
``IN_ALL`` and takes its slots before it claims, so a hanging endpoint never makes another's tries
wait, and no try waits for a slot (or a connection) inside its timeout.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import aiohttp
from sqlalchemy import and_, delete, exists, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.publisher.database import Database
from services.publisher.webhooks.models import (
    ACTIVE,
    DELIVERED,
    DISABLED,
    FAILED,
    PENDING,
    WEBHOOK,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from services.publisher.webhooks.slots import FairSlots
from services.publisher.webhooks.standard import signed_headers
from shared.db import utcnow
from shared.sealing import InvalidToken, unseal

log = logging.getLogger(__name__)

# A 2xx within this long delivers an event (contract §8).
TIMEOUT = 15.0
# A claim's lease: longer than a try can take, so only a dead process's claims come back.
LEASE = timedelta(seconds=TIMEOUT + 10)
# Tries in flight to one endpoint, and in all.
PER_ENDPOINT = 16
IN_ALL = 64
POLL_SECONDS = 1.0
# Woken by new events, a lane lets a few more come first: one pass (a claim, the tries, one
# record) for several events instead of one each, which is most of a delivery's cost.
GATHER_SECONDS = 0.2
ENDPOINTS_EVERY = 2.0
# Delivered events stay this long for `uanet webhooks replay`; then they are deleted.
KEEP_DELIVERED = timedelta(days=30)
PURGE_EVERY = 3600.0
STOP_GRACE = 5.0
USER_AGENT = "uanet-webhooks/1"


@dataclass(frozen=True)
class Claimed:
    delivery_id: int
    event_id: str
    body: str
    attempts: int


@dataclass(frozen=True)
class Outcome:
    claimed: Claimed
    status: int | None
    error: str | None

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass(frozen=True)
class Endpoint:
    id: uuid.UUID
    url: str
    secret: str
    kind: str = WEBHOOK
    section_code: str | None = None

    @property
    def federation(self) -> bool:
        """A hub's or a section's call: tried until the other side answers, never given up."""
        return self.kind != WEBHOOK


class WebhookDeliverer:
    def __init__(
        self,
        database: Database,
        *,
        secret_key: str,
        retry_delays: Sequence[timedelta],
        disable_after: timedelta,
        client: aiohttp.ClientSession | None = None,
    ) -> None:
        self.database = database
        self.secret_key = secret_key
        self.retry_delays = tuple(retry_delays)
        self.disable_after = disable_after
        self._client = client
        self._lanes: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._wakes: dict[uuid.UUID, asyncio.Event] = {}
        self._slots = FairSlots(IN_ALL, PER_ENDPOINT)
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_purge: float | None = None

    # ---- life ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._supervisor is not None:
            return
        if self._client is None:
            # aiohttp (already here for twilio's client): a sixth of httpx's CPU a request,
            # which was most of a delivery's cost. No connection limits: aiohttp counts them per
            # host:port, not per endpoint (two Zapier hooks would share one pool), and waiting for
            # a pooled connection counts against the timeout. The lanes' slots bound the tries.
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
                headers={"user-agent": USER_AGENT},
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
            )
        self._supervisor = asyncio.create_task(self._supervise(), name="webhook-supervisor")

    def notify(self) -> None:
        """New deliveries were committed: lanes look at once instead of at their next poll."""
        for wake in self._wakes.values():
            wake.set()

    async def stop(self) -> None:
        """A deploy's SIGTERM: tries under way get a few seconds to finish and be recorded;
        what is cut short is due again at once for the next process (same ``webhook-id``)."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        self.notify()
        lanes = list(self._lanes.values())
        if lanes:
            _, pending = await asyncio.wait(lanes, timeout=STOP_GRACE)
            for lane in pending:
                lane.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)
        self._lanes.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    # ---- the supervisor: a lane per active endpoint ---------------------------------------------

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._reconcile_lanes()
                if self._last_purge is None or loop.time() - self._last_purge >= PURGE_EVERY:
                    await self.purge()
                    self._last_purge = loop.time()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database away: try again shortly
                log.warning("webhook supervisor pass failed; retrying", exc_info=True)
            await asyncio.sleep(ENDPOINTS_EVERY)

    async def _reconcile_lanes(self) -> None:
        async with self.database.read() as session:
            rows = (
                await session.execute(
                    select(
                        WebhookEndpoint.id,
                        WebhookEndpoint.url,
                        WebhookEndpoint.secret_sealed,
                        WebhookEndpoint.kind,
                        WebhookEndpoint.section_code,
                    ).where(WebhookEndpoint.state == ACTIVE)
                )
            ).all()
        active: dict[uuid.UUID, Endpoint] = {}
        for endpoint_id, url, sealed, kind, section_code in rows:
            try:
                secret = unseal(self.secret_key, sealed)
                active[endpoint_id] = Endpoint(endpoint_id, url, secret, kind, section_code)
            except InvalidToken:
                log.error(
                    "webhook endpoint %s: its secret was sealed under another UANET_SECRET_KEY",
                    endpoint_id,
                )
        for endpoint_id, lane in list(self._lanes.items()):
            if endpoint_id not in active or lane.done():
                if not lane.done():
                    lane.cancel()  # removed or disabled: its claims come back with the lease
                self._lanes.pop(endpoint_id, None)
                self._wakes.pop(endpoint_id, None)
                self._slots.leave(endpoint_id)
        for endpoint_id, endpoint in active.items():
            if endpoint_id not in self._lanes:
                self._wakes[endpoint_id] = asyncio.Event()
                self._slots.join(endpoint_id)
                self._lanes[endpoint_id] = asyncio.create_task(
                    self._lane(endpoint), name=f"webhook-lane-{endpoint_id}"
                )

    # ---- a lane ------------------------------------------------------------------------------

    async def _lane(self, endpoint: Endpoint) -> None:
        wake = self._wakes[endpoint.id]
        while not self._stopping:
            wake.clear()
            try:
                claimed, filled = await self._claim_in_slots(endpoint.id)
                if claimed:
                    outcomes = await asyncio.gather(*(self._send(endpoint, one) for one in claimed))
                    if await self._record(endpoint, outcomes):
                        return  # disabled: the supervisor starts no lane for it
                    if filled:
                        continue  # a backlog: the next at once
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the database away: the lease brings them back
                log.warning("webhook lane %s failed; retrying", endpoint.id, exc_info=True)
            try:
                await asyncio.wait_for(wake.wait(), timeout=POLL_SECONDS)
                await asyncio.sleep(GATHER_SECONDS)
            except TimeoutError:
                pass

    async def _claim_in_slots(self, endpoint_id: uuid.UUID) -> tuple[list[Claimed], bool]:
        """As many due deliveries as the lane got slots for (each try gives its slot back), and
        whether that filled them (more may be due)."""
        granted = self._slots.take(endpoint_id, PER_ENDPOINT)
        claimed: list[Claimed] = []
        try:
            claimed = await self._claim(endpoint_id, granted)
        finally:
            self._slots.release(endpoint_id, granted - len(claimed))
        return claimed, len(claimed) >= granted

    async def _claim(self, endpoint_id: uuid.UUID, most: int) -> list[Claimed]:
        now = utcnow()
        due = (
            select(WebhookDelivery.id)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.state == PENDING,
                WebhookDelivery.next_attempt_at <= now,
            )
            .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
            .limit(most)
        )
        # A read first: an idle lane costs no write (SQLite has one writer for everything).
        async with self.database.read() as session:
            if not (await session.execute(due)).first():
                return []
        async with self.database.write() as session:
            if not self.database.is_sqlite:
                due = due.with_for_update(skip_locked=True)
            ids = list((await session.execute(due)).scalars())
            if not ids:
                return []
            await session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(next_attempt_at=now + LEASE, lease_until=now + LEASE)
                .execution_options(synchronize_session=False)
            )
            rows = (
                await session.execute(
                    select(
                        WebhookDelivery.id,
                        WebhookDelivery.event_id,
                        WebhookEvent.body,
                        WebhookDelivery.attempts,
                    )
                    .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
                    .where(WebhookDelivery.id.in_(ids))
                    .order_by(WebhookDelivery.id)
                )
            ).all()
        return [
            Claimed(delivery_id, event_id, body, attempts)
            for delivery_id, event_id, body, attempts in rows
            if body is not None
        ]

    async def _send(self, endpoint: Endpoint, claimed: Claimed) -> Outcome:
        assert self._client is not None
        body = claimed.body.encode()
        try:
            headers = signed_headers(endpoint.secret, claimed.event_id, body, utcnow())
            headers["content-type"] = "application/json"
            if endpoint.section_code is not None:
                headers["uanet-section"] = endpoint.section_code
            try:
                async with asyncio.timeout(TIMEOUT):
                    # No redirects: an endpoint answers for itself (a 3xx is a failed try).
                    async with self._client.post(
                        endpoint.url, data=body, headers=headers, allow_redirects=False
                    ) as response:
                        await response.read()
                        return Outcome(claimed, response.status, None)
            except TimeoutError:
                return Outcome(claimed, None, "timed out")
            except (aiohttp.ClientError, ValueError) as exc:
                # The kind of failure only: an error's text can quote the URL's query.
                return Outcome(claimed, None, type(exc).__name__)
        finally:
            self._slots.release(endpoint.id)

    # ---- recording -----------------------------------------------------------------------------

    def _next_try(self, attempts: int, now: datetime, *, forever: bool) -> datetime | None:
        """After ``attempts`` failed tries: when to try again, or None (it has failed).
        ``forever``: federation's calls go on at the schedule's last wait."""
        if attempts > len(self.retry_delays):
            return now + self.retry_delays[-1] if forever else None
        return now + self.retry_delays[attempts - 1]

    async def _record(self, lane: Endpoint, outcomes: Sequence[Outcome]) -> bool:
        """Record the tries; True if the endpoint is now disabled."""
        endpoint_id = lane.id
        now = utcnow()
        disabled_reason: str | None = None
        delivered_events: list[str] = []
        async with self.database.write() as session:
            endpoint = await session.get(WebhookEndpoint, endpoint_id, with_for_update=True)
            if endpoint is None:
                return True  # removed meanwhile: its deliveries went with it
            # Delivered: one statement for all of them (the usual case, and most of the work).
            delivered_ids = [o.claimed.delivery_id for o in outcomes if o.delivered]
            if delivered_ids:
                statuses = {o.status for o in outcomes if o.delivered}
                # One 2xx code for all (the usual case) goes in the one statement.
                shared_status = next(iter(statuses)) if len(statuses) == 1 else None
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id.in_(delivered_ids))
                    .values(
                        state=DELIVERED,
                        attempts=WebhookDelivery.attempts + 1,
                        last_status=shared_status,
                        last_error=None,
                        next_attempt_at=None,
                        lease_until=None,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
                if shared_status is None:  # several 2xx codes: each row its own
                    for outcome in outcomes:
                        if outcome.delivered:
                            await session.execute(
                                update(WebhookDelivery)
                                .where(WebhookDelivery.id == outcome.claimed.delivery_id)
                                .values(last_status=outcome.status)
                                .execution_options(synchronize_session=False)
                            )
                delivered_events = [o.claimed.event_id for o in outcomes if o.delivered]
            for outcome in outcomes:
                if outcome.delivered:
                    continue
                attempts = outcome.claimed.attempts + 1
                values: dict[str, object] = {
                    "attempts": attempts,
                    "last_status": outcome.status,
                    "last_error": outcome.error,
                    "lease_until": None,
                    "updated_at": now,
                }
                if outcome.status == 410 and not lane.federation:
                    # Gone: the receiver asks for nothing more. Kept pending for a replay.
                    values.update(next_attempt_at=None)
                    disabled_reason = f"answered 410 Gone at {now:%Y-%m-%d %H:%M} UTC"
                else:
                    following = self._next_try(attempts, now, forever=lane.federation)
                    values.update(next_attempt_at=following, state=PENDING if following else FAILED)
                await session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == outcome.claimed.delivery_id)
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
            successes = [o for o in outcomes if o.delivered]
            failures = [o for o in outcomes if not o.delivered]
            if successes:
                recovering = endpoint.failures_in_a_row > 0
                endpoint.last_success_at = now
                endpoint.failures_in_a_row = 0
                endpoint.failing_since = None
                if recovering:
                    # Back after an outage: what waits on the schedule goes now, not in hours.
                    await session.execute(
                        update(WebhookDelivery)
                        .where(
                            WebhookDelivery.endpoint_id == endpoint_id,
                            WebhookDelivery.state == PENDING,
                            WebhookDelivery.next_attempt_at > now,
                            WebhookDelivery.lease_until.is_(None),
                        )
                        .values(next_attempt_at=now)
                        .execution_options(synchronize_session=False)
                    )
            elif failures:
                endpoint.failures_in_a_row += len(failures)
                endpoint.last_failure_at = now
                endpoint.failing_since = endpoint.failing_since or now
                if now - endpoint.failing_since >= self.disable_after and not lane.federation:
                    since = f"{endpoint.failing_since:%Y-%m-%d %H:%M}"
                    disabled_reason = f"failing without a success since {since} UTC"
            if disabled_reason is not None and endpoint.state == ACTIVE:
                endpoint.state = DISABLED
                endpoint.disabled_reason = disabled_reason
                log.warning("webhook endpoint %s disabled: %s", endpoint_id, disabled_reason)
            if delivered_events:
                await _drop_delivered_personal_data(session, delivered_events)
        return endpoint.state != ACTIVE

    async def purge(self) -> None:
        """Delivered events older than ``KEEP_DELIVERED`` go (failed ones wait for a replay)."""
        cutoff = utcnow() - KEEP_DELIVERED
        async with self.database.write() as session:
            await session.execute(
                delete(WebhookDelivery)
                .where(WebhookDelivery.state == DELIVERED, WebhookDelivery.updated_at < cutoff)
                .execution_options(synchronize_session=False)
            )
            await session.execute(
                delete(WebhookEvent)
                .where(
                    WebhookEvent.occurred_at < cutoff,
                    ~exists().where(WebhookDelivery.event_id == WebhookEvent.id),
                )
                .execution_options(synchronize_session=False)
            )


async def _drop_delivered_personal_data(session: AsyncSession, event_ids: Sequence[str]) -> None:
    """A personal event delivered to every endpoint keeps no data: the publisher holds no one's
    data longer than a delivery takes (its body and person go; the delivery records stay)."""
    undelivered = exists().where(
        and_(WebhookDelivery.event_id == WebhookEvent.id, WebhookDelivery.state != DELIVERED)
    )
    await session.execute(
        update(WebhookEvent)
        .where(WebhookEvent.id.in_(event_ids), WebhookEvent.personal.is_(True), ~undelivered)
        .values(body=None, subscriber_id=None)
        .execution_options(synchronize_session=False)
    )
