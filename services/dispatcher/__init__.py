"""The dispatcher: the only service that talks to SMTP and Twilio.

Consumes ``dispatcher.actions`` (what each urgent action says), ``dispatcher.batches`` (whom to send
it to) and ``dispatcher.messages`` (confirmations, SMS replies); sends through ``senders``; records
every delivery once in the ledger (``models.Delivery``); emits ``DeliveriesReported``,
``DeliveryStatusChanged`` and ``RecipientSuppressed`` through its outbox.
"""
