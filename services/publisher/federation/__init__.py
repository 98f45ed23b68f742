"""Federation (contract §9): an international office (the hub) publishes once; each national
section, its own uanet, receives the action as a draft, translates and sends it to its own
members, and reports its counts back. Personal data never leaves a section: only actions go
down and counts go up, signed like our webhooks with the section's key.

- ``wire``: the calls between hub and section (Standard Webhooks signatures plus
  ``uanet-section``), their bodies.
- ``models``: the hub's sections and the counts each reported.
- ``hub``: sections added and removed, counts taken (newest wins), the network's stats.
- ``section``: the inbox (a draft from the hub, auto-publish, follow-ups, the close), decline,
  and the reporter of counts.
- ``routes``: ``/api/v1/federation/inbox``, ``/api/v1/federation/counts``, decline and pending
  follow-ups.

Both directions ride on the webhook deliverer (a row per call, claimed, retried on
``UANET_WEBHOOK_RETRY_SCHEDULE``, here until the other side answers).
"""
