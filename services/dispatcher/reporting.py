"""Delivery counts leave the dispatcher as a few events, not one per ledger commit.

Every commit of outcomes writes its ``DeliveriesReported`` in the same transaction (exact, and
safe across a crash); the outbox relay then folds the ones still waiting into one per (action,
message kind, channel) before publishing them. With the relay's passes spaced by
``REPORT_INTERVAL``, a fan-out reports a few times a second whatever its rate, and coordinators
still see the counts move at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from pydantic import ValidationError

from shared.events import Channel, DeliveriesReported, MessageKind

# Seconds between two passes of the dispatcher's outbox relay.
REPORT_INTERVAL = 0.25


class DeliveryReportCompactor:
    """Merges pending ``DeliveriesReported`` of the same action, message kind and channel."""

    routing_keys: tuple[str, ...] = (DeliveriesReported.ROUTING_KEY,)

    def merge(
        self, bodies: Sequence[tuple[str, str]]
    ) -> list[tuple[list[str], DeliveriesReported]]:
        groups: dict[tuple[uuid.UUID, MessageKind, Channel], list[tuple[str, DeliveriesReported]]]
        groups = {}
        for row_id, body in bodies:
            try:
                report = DeliveriesReported.model_validate_json(body)
            except ValidationError:
                continue  # not ours to fix: published as it is
            key = (report.action_id, report.message_kind, report.channel)
            groups.setdefault(key, []).append((row_id, report))
        merged: list[tuple[list[str], DeliveriesReported]] = []
        for (action_id, message_kind, channel), members in groups.items():
            if len(members) < 2:
                continue
            merged.append(
                (
                    [row_id for row_id, _ in members],
                    DeliveriesReported(
                        action_id=action_id,
                        message_kind=message_kind,
                        channel=channel,
                        sent=sum(report.sent for _, report in members),
                        failed=sum(report.failed for _, report in members),
                    ),
                )
            )
        return merged
