"""How many confirmations one mailbox or number may be sent (contract §11): at most
``PER_HOUR`` an hour, however its address is written, whichever process takes the sign-up.

Mail providers deliver ``Ana+1@Example.org`` and ``ana@example.org`` to one mailbox, and Gmail
ignores dots too (``a.n.a@gmail.com``): counted per stored address, each spelling would get its
own three confirmations, and a form could bomb one inbox with as many as it likes. So the count
is kept per mailbox (``mailbox``), in one row per mailbox taken with an atomic upsert (on
PostgreSQL concurrent takers of one row wait for each other's commit, so the cap holds across
processes).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, case, delete, literal, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from services.subscriptions.models import ConfirmationAllowance
from services.subscriptions.store import is_postgres
from shared.db import UTCDateTime
from shared.tokens import LinkSigner

PER_HOUR = 3
WINDOW = timedelta(hours=1)
# Domains that are one mailbox provider with dots ignored in the local part.
GMAIL = frozenset({"gmail.com", "googlemail.com"})


def mailbox(address: str) -> str:
    """The mailbox an email address reaches: lower case, without a ``+tag``; for Gmail without
    dots, and googlemail.com is gmail.com. A phone number (E.164) is its own."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return domain
    local = local.split("+", 1)[0] or local
    if domain in GMAIL:
        local, domain = local.replace(".", ""), "gmail.com"
    return f"{local}@{domain}"


async def take(
    session: AsyncSession, signer: LinkSigner, address: str, *, now: datetime, limit: int = PER_HOUR
) -> bool:
    """Count one confirmation to ``address``'s mailbox; False (nothing counted) when its hour
    already had ``limit``. In the caller's transaction."""
    table = ConfirmationAllowance
    at = literal(now, UTCDateTime())
    over: ColumnElement[bool] = table.window_start <= now - WINDOW
    insert = pg_insert if is_postgres(session) else sqlite_insert
    statement = (
        insert(table)
        .values(key=signer.fingerprint(mailbox(address)), window_start=now, sent=1)
        .on_conflict_do_update(
            index_elements=[table.key],
            set_={
                "window_start": case((over, at), else_=table.window_start),
                "sent": case((over, 1), else_=table.sent + 1),
            },
            where=or_(over, table.sent < limit),
        )
        .returning(table.sent)
    )
    return (await session.execute(statement)).first() is not None


async def forget_expired(session: AsyncSession, *, now: datetime) -> None:
    """Rows whose hour is over count nothing: gone, so the table stays as small as an hour.
    Rows a sign-up holds right now are skipped (never a wait, never a deadlock with it)."""
    table = ConfirmationAllowance
    expired = select(table.key).where(table.window_start <= now - WINDOW)
    if is_postgres(session):
        expired = expired.with_for_update(skip_locked=True)
    await session.execute(delete(table).where(table.key.in_(expired.scalar_subquery())))


async def forget(session: AsyncSession, signer: LinkSigner, addresses: list[str]) -> None:
    """An erased person's counts: gone with the rest of their data."""
    keys = [signer.fingerprint(mailbox(a)) for a in addresses]
    if keys:
        table = ConfirmationAllowance
        await session.execute(delete(table).where(table.key.in_(keys)))
