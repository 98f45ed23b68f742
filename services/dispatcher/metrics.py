"""Prometheus counters of what the dispatcher did, per channel."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

SENT = Counter("uanet_dispatcher_sent_total", "Messages accepted by SMTP or Twilio", ["channel"])
FAILED = Counter("uanet_dispatcher_failed_total", "Messages that failed for good", ["channel"])
RETRIED = Counter(
    "uanet_dispatcher_retried_total",
    "Sends that failed temporarily and will be retried",
    ["channel"],
)
CANCELLED = Counter(
    "uanet_dispatcher_cancelled_total",
    "Deliveries cancelled because the action closed",
    ["channel"],
)
RECEIPTS = Counter(
    "uanet_dispatcher_receipts_total", "Delivery receipts (Twilio status callbacks)", ["status"]
)
DEAD_LETTERED = Counter(
    "uanet_dispatcher_dead_lettered_total",
    "Deliveries whose batch gave up retrying and went to the dead-letter queue",
    ["channel"],
)
LAG = Histogram(
    "uanet_dispatcher_lag_seconds",
    "Seconds from a batch's creation (audience resolution) to each message of it accepted",
    ["channel"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
)
