"""Prometheus counters of what the dispatcher did, per channel."""

from __future__ import annotations

from prometheus_client import Counter

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
