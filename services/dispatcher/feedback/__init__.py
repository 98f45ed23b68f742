"""Bounces, complaints and deliveries reported after the relay said yes.

Routes in: the bounce port (``port.py``: DSNs, ARF abuse reports and plain bounce texts that an
MTA hands on over SMTP, parsed in ``mail.py``) and the ESP webhooks (``webhooks.py``: SendGrid,
Mailgun, Amazon SES through SNS, each verified as its provider signs it). Each route turns what
it got into ``Feedback`` (``reports.py``); ``record.py`` ties it to the ledger row of the one
message it concerns (VERP tag first, else the Message-ID) and applies it once: count moves,
suppressions and target warnings go out through the outbox.
"""
