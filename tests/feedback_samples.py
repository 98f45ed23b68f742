# ruff: noqa: E501 - the samples keep the line lengths the MTAs write
"""Bounce and complaint mails as real MTAs and feedback loops write them (layout, field names,
wording and line folding copied from their output), with our VERP address, Message-ID and the
recipient filled in. Each function returns the raw bytes an MTA would hand on."""

from __future__ import annotations


def _crlf(text: str) -> bytes:
    return text.lstrip("\n").replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")


def _original(verp: str, message_id: str, recipient: str) -> str:
    return f"""Return-Path: <{verp}>
Received: from uanet-dispatcher (uanet.example.org [192.0.2.10])
\tby mx1.example.org (Postfix) with ESMTPS id 4Qx7Zk1JrKz9sWv
\tfor <{recipient}>; Wed,  2 Dec 2026 04:20:08 +0000 (UTC)
From: Urgent Action Network <alerts@example.org>
To: {recipient}
Subject: Urgent Action: journalist at risk of torture
Date: Wed, 02 Dec 2026 04:20:08 +0000
Message-ID: {message_id}
MIME-Version: 1.0
List-Unsubscribe: <https://act.example.org/unsubscribe/abc>
List-Unsubscribe-Post: List-Unsubscribe=One-Click
Content-Type: text/plain; charset="utf-8"
Content-Transfer-Encoding: 7bit
"""


def postfix_hard(verp: str, message_id: str, recipient: str) -> bytes:
    """Postfix 3.x: the remote server refused the mailbox (550 5.1.1), headers returned."""
    boundary = "4Qx7Zk1JrKz9sWv.1764649211/mx1.example.org"
    return _crlf(f"""
Return-Path: <>
Received: by mx1.example.org (Postfix)
\tid 4Qx7Zk1JrKz9sWv; Wed,  2 Dec 2026 04:20:11 +0000 (UTC)
Date: Wed,  2 Dec 2026 04:20:11 +0000 (UTC)
From: MAILER-DAEMON@mx1.example.org (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: {verp}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <20261202042011.4Qx7Zk1JrKz9sWv@mx1.example.org>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mx1.example.org.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<{recipient}>: host mail.example.net[203.0.113.25] said: 550
    5.1.1 <{recipient}>: Recipient address rejected: User unknown in
    virtual mailbox table (in reply to RCPT TO command)

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx1.example.org
X-Postfix-Queue-ID: 4Qx7Zk1JrKz9sWv
X-Postfix-Sender: rfc822; {verp}
Arrival-Date: Wed,  2 Dec 2026 04:20:08 +0000 (UTC)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.example.net
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected:
    User unknown in virtual mailbox table

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

{_original(verp, message_id, recipient)}
--{boundary}--
""")


def postfix_delayed(verp: str, message_id: str, recipient: str) -> bytes:
    """Postfix's delay warning (``delay_warning_time``): still being retried, 4.4.1."""
    boundary = "4Qx7Zk1JrKz9sWv.1764663611/mx1.example.org"
    return _crlf(f"""
Return-Path: <>
Date: Wed,  2 Dec 2026 08:20:11 +0000 (UTC)
From: MAILER-DAEMON@mx1.example.org (Mail Delivery System)
Subject: Delayed Mail (still being retried)
To: {verp}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <20261202082011.5B1C2D3E4F@mx1.example.org>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host mx1.example.org.

####################################################################
# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #
####################################################################

Your message could not be delivered for more than 4 hour(s).
It will be retried until it is 5 day(s) old.

                   The mail system

<{recipient}>: connect to mail.example.net[203.0.113.25]:25: Connection timed
    out

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx1.example.org
X-Postfix-Queue-ID: 4Qx7Zk1JrKz9sWv
X-Postfix-Sender: rfc822; {verp}
Arrival-Date: Wed,  2 Dec 2026 04:20:08 +0000 (UTC)

Final-Recipient: rfc822; {recipient}
Original-Recipient: rfc822;{recipient}
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mail.example.net[203.0.113.25]:25:
    Connection timed out
Will-Retry-Until: Mon,  7 Dec 2026 04:20:08 +0000 (UTC)

--{boundary}
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers
Content-Transfer-Encoding: 8bit

{_original(verp, message_id, recipient)}
--{boundary}--
""")


def exim_dsn(verp: str, message_id: str, recipient: str) -> bytes:
    """Exim 4.9x: a multipart/report with the whole returned message."""
    boundary = "1764649211-eximdsn-1804289383"
    return _crlf(f"""
Return-path: <>
Received: from Debian-exim by mx2.example.org with local (Exim 4.96)
\tid 1v7QmZ-0003aB-2k
\tfor {verp};
\tWed, 02 Dec 2026 04:20:11 +0000
X-Failed-Recipients: {recipient}
Auto-Submitted: auto-replied
From: Mail Delivery System <Mailer-Daemon@mx2.example.org>
To: {verp}
Content-Type: multipart/report; report-type=delivery-status; boundary={boundary}
MIME-Version: 1.0
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1v7QmZ-0003aB-2k@mx2.example.org>
Date: Wed, 02 Dec 2026 04:20:11 +0000

--{boundary}
Content-type: text/plain; charset=us-ascii

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {recipient}
    host mail.example.net [203.0.113.25]
    SMTP error from remote mail server after RCPT TO:<{recipient}>:
    550 5.1.1 <{recipient}>: Recipient address rejected: User unknown

--{boundary}
Content-type: message/delivery-status

Reporting-MTA: dns; mx2.example.org

Action: failed
Final-Recipient: rfc822;{recipient}
Status: 5.0.0
Remote-MTA: dns; mail.example.net
Diagnostic-Code: smtp; 550 5.1.1 <{recipient}>: Recipient address rejected: User unknown

--{boundary}
Content-type: message/rfc822

{_original(verp, message_id, recipient)}
Please take action for the journalist: https://act.example.org/act/abc

--{boundary}--
""")


def exim_plain(verp: str, message_id: str, recipient: str) -> bytes:
    """An older Exim's plain-text bounce (no report part): read by flufl.bounce."""
    return _crlf(f"""
Return-path: <>
Received: from mail by mx3.example.org with local (Exim 4.69)
\tid 1KDoNS-0006Rb-Ic
\tfor {verp}; Wed, 02 Dec 2026 04:20:11 +0000
X-Failed-Recipients: {recipient}
From: Mail Delivery System <Mailer-Daemon@mx3.example.org>
To: {verp}
Subject: Mail delivery failed: returning message to sender
Message-Id: <E1KDoNS-0006Rb-Ic@mx3.example.org>
Date: Wed, 02 Dec 2026 04:20:11 +0000

This message was created automatically by mail delivery software.

A message that you sent could not be delivered to one or more of its
recipients. This is a permanent error. The following address(es) failed:

  {recipient}
    SMTP error from remote mail server after RCPT TO:<{recipient}>:
    host mail.example.net [203.0.113.25]: 550 5.1.1 User unknown

------ This is a copy of the message, including all the headers. ------

{_original(verp, message_id, recipient)}
Please take action for the journalist: https://act.example.org/act/abc
""")


def gmail_dsn(verp: str, message_id: str, recipient: str) -> bytes:
    """Gmail's "Delivery Status Notification (Failure)": text, HTML, the report, the headers."""
    boundary = "000000000000a1b2c3d4e5f60718"
    inner = "000000000000a1b2c3d4e5f60719"
    return _crlf(f"""
Delivered-To: {verp}
Return-Path: <>
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {verp}
Auto-Submitted: auto-replied
Subject: Delivery Status Notification (Failure)
References: {message_id}
In-Reply-To: {message_id}
X-Failed-Recipients: {recipient}
Message-ID: <6751a2b3.050a0220.1c2d3e.4f5a.GMR@mx.google.com>
Date: Tue, 01 Dec 2026 20:20:11 -0800 (PST)
MIME-Version: 1.0
Content-Type: multipart/report; boundary="{boundary}"; report-type=delivery-status

--{boundary}
Content-Type: multipart/related; boundary="{inner}"

--{inner}
Content-Type: multipart/alternative; boundary="{inner}-alt"

--{inner}-alt
Content-Type: text/plain; charset="UTF-8"


** Address not found **

Your message wasn't delivered to {recipient} because the address couldn't be found, or is unable to receive mail.

Learn more here: https://support.google.com/mail/?p=NoSuchUser

The response was:

The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. For more information, go to https://support.google.com/mail/?p=NoSuchUser

--{inner}-alt
Content-Type: text/html; charset="UTF-8"

<html><head></head><body><h2>Address not found</h2><p>Your message wasn't delivered because the address couldn't be found.</p></body></html>

--{inner}-alt--
--{inner}--
--{boundary}
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; uanet.example.org
Arrival-Date: Tue, 01 Dec 2026 20:20:09 -0800 (PST)
X-Original-Message-ID: {message_id}

Final-Recipient: rfc822; {recipient}
Action: failed
Status: 5.1.1
Remote-MTA: dns; gmail-smtp-in.l.google.com. (142.250.102.27, the server for the
 domain gmail.com.)
Diagnostic-Code: smtp; 550-5.1.1 The email account that you tried to reach does
 not exist. Please try 550-5.1.1 double-checking the recipient's email address
 for typos or 550-5.1.1 unnecessary spaces. For more information, go to 550
 5.1.1  https://support.google.com/mail/?p=NoSuchUser 4fb4d7f45d1cf-5d3e4f5a6b7sor1234567a12.74 - gsmtp
Last-Attempt-Date: Tue, 01 Dec 2026 20:20:11 -0800 (PST)

--{boundary}
Content-Type: text/rfc822-headers

{_original(verp, message_id, recipient)}
--{boundary}--
""")


def arf_complaint(
    verp: str, message_id: str, recipient: str | None, *, redacted: bool = False
) -> bytes:
    """An RFC 5965 abuse report from a mailbox provider's feedback loop. ``redacted``: as most
    loops send it, without the complainer's address (no Original-Rcpt-To, To blanked) and
    without the envelope sender: only the returned message's Message-ID is left."""
    boundary = "----=_Part_11372_2066873142.1764650000000"
    rcpt = "" if redacted or recipient is None else f"Original-Rcpt-To: <{recipient}>\n"
    mail_from = "" if redacted else f"Original-Mail-From: <{verp}>\n"
    original = _original(verp, message_id, recipient or "redacted@example.net")
    if redacted:
        original = (
            original.replace(f"Return-Path: <{verp}>\n", "")
            .replace(f"To: {recipient}\n", "To: redacted@redacted\n")
            .replace(f"\tfor <{recipient}>;", "\tfor <redacted@redacted>;")
        )
    return _crlf(f"""
Return-Path: <feedback@fbl.mail.example.com>
From: Mail Feedback Loop <feedback@fbl.mail.example.com>
To: abuse@example.org
Subject: Complaint about message from 192.0.2.10
Date: Wed, 02 Dec 2026 05:13:20 +0000
Message-ID: <1764650000.11372@fbl.mail.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report;
\tboundary="{boundary}"

------=_Part_11372_2066873142.1764650000000
Content-Type: text/plain; charset="US-ASCII"
Content-Transfer-Encoding: 7bit

This is an email abuse report for an email message received from IP
192.0.2.10 on Wed, 02 Dec 2026 04:20:09 +0000.
For more information about this format please see
https://www.rfc-editor.org/rfc/rfc5965.

------=_Part_11372_2066873142.1764650000000
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleMail-FBL/2.1
Version: 1
{mail_from}{rcpt}Arrival-Date: Wed, 02 Dec 2026 04:20:09 +0000
Source-IP: 192.0.2.10
Reported-Domain: example.org
Authentication-Results: mx.mail.example.com; spf=pass smtp.mailfrom=example.org;
 dkim=pass header.d=example.org

------=_Part_11372_2066873142.1764650000000
Content-Type: message/rfc822
Content-Disposition: inline

{original}
Please take action for the journalist: https://act.example.org/act/abc

------=_Part_11372_2066873142.1764650000000--
""")


def auto_reply(verp: str) -> bytes:
    """An out-of-office answer to the envelope sender: reports nothing."""
    return _crlf(f"""
From: Ana <ana@example.net>
To: {verp}
Subject: Out of office
Auto-Submitted: auto-replied
Date: Wed, 02 Dec 2026 04:21:00 +0000
Message-ID: <ooo-1@example.net>

I am away until Monday.
""")


MALFORMED = b"\x00\xff\xfeNot a mail at all\r\n--\r\nContent-Type: multipart/report\r\n\r\n\x80\x81"


def exchange_ndr(verp: str, message_id: str, recipient: str) -> bytes:
    """Exchange 2003's non-delivery report (plain text, the original attached): flufl.bounce."""
    boundary = "----_=_NextPart_001_01C8A3B2.6F2E4C10"
    return _crlf(f"""
Return-Path: <>
From: System Administrator <postmaster@corp.example.net>
To: {verp}
Subject: Undeliverable: Urgent Action: journalist at risk of torture
Date: Wed, 2 Dec 2026 04:20:11 +0000
Message-ID: <E3B2A1C0D9F8E7D6C5B4A3921@EXCH01.corp.example.net>
MIME-Version: 1.0
X-MS-Has-Attach: yes
Content-Type: multipart/mixed; boundary="{boundary}"

This is a multi-part message in MIME format.

--{boundary}
Content-Type: text/plain; charset="iso-8859-1"
Content-Transfer-Encoding: quoted-printable

Your message

  To:      {recipient}
  Subject: Urgent Action: journalist at risk of torture
  Sent:    Wed, 2 Dec 2026 04:20:08 +0000

did not reach the following recipient(s):

{recipient} on Wed, 2 Dec 2026 04:20:11 +0000
    The e-mail account does not exist at the organization this message was
sent to.  Check the e-mail address, or contact the recipient directly to
find out the correct address.
    <EXCH01.corp.example.net #5.1.1>

MSEXCH:IMS:Corp:Main:EXCH01 0 (000C05A6) Unknown Recipient

--{boundary}
Content-Type: message/rfc822

{_original(verp, message_id, recipient)}
Please take action for the journalist: https://act.example.org/act/abc

--{boundary}--
""")
