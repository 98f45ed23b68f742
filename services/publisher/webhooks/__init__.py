"""Outbound webhooks (contract §8): every event to the tools a campaign already runs, signed.

- ``standard``: the wire format (Standard Webhooks: ids, signatures, secrets, event types).
- ``models``: the endpoints (the registry), the events and one delivery row per endpoint and event.
- ``registry``: adding, listing, removing and replaying endpoints (API, console and CLI).
- ``record``: an event and its deliveries, written in the transaction of the change it reports.
- ``consumer``: events from the other services (subscribers, responses, erasures).
- ``delivery``: the workers that send, retry on the schedule and disable dead endpoints.
- ``routes``: ``/api/v1/webhooks``.

Like the dispatcher's ledger, a row per thing to deliver, claimed, then recorded: a crash sends an
event again at most once, with the same ``webhook-id``; a slow endpoint holds back only itself.
"""
