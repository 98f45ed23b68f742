"""Staff accounts of the console: argon2id password hashes, sign-in, and a brake on guessing.

Sign-in answers the same way, in about the same time, for an unknown email and a wrong password:
an unknown email is still checked against a hash, so timing does not tell which accounts exist.
"""

from __future__ import annotations

import asyncio
import functools

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from pydantic import BaseModel, EmailStr, ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.publisher.audit import ACCOUNT_CREATED, ACCOUNT_DISABLED, Actor, record
from services.publisher.auth import ROLES
from services.publisher.models import StaffUser
from shared.db import utcnow

MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024  # argon2 would take anything; a megabyte "password" is an attack

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters


@functools.cache
def _dummy_hash() -> str:
    """Checked when the email is unknown, so both failures cost the same work. Made on first
    use, not at import: a hash holds 64 MiB for a moment, and every publisher process would pay
    that peak just to start."""
    return _hasher.hash("uanet: no such account, same work as a real check")


class StaffUserError(ValueError):
    """A staff account that cannot be created; ``str()`` says why in one line."""


class _Email(BaseModel):
    email: EmailStr


def normalize_email(raw: str) -> str:
    try:
        return _Email(email=raw.strip()).email.lower()
    except ValidationError:
        raise StaffUserError("not a valid email address") from None


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise StaffUserError(f"the password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise StaffUserError("the password is too long")
    return _hasher.hash(password)


def password_matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


async def create_staff_user(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    email: str,
    role: str,
    password: str,
    actor: Actor | None = None,
) -> StaffUser:
    if role not in ROLES:
        raise StaffUserError(f"unknown role {role!r}")
    address = normalize_email(email)
    password_hash = await asyncio.to_thread(hash_password, password)
    user = StaffUser(email=address, role=role, password_hash=password_hash, created_at=utcnow())
    try:
        async with sessionmaker() as session, session.begin():
            session.add(user)
            await session.flush()
            record(
                session,
                actor=actor or Actor.command_line(),
                event=ACCOUNT_CREATED,
                subject=f"account {address} ({role})",
            )
    except IntegrityError:
        raise StaffUserError("a staff account with that email already exists") from None
    return user


async def disable_staff_user(
    sessionmaker: async_sessionmaker[AsyncSession], *, email: str, actor: Actor | None = None
) -> None:
    """Revoke a console account: it can no longer sign in, and its sessions stop working."""
    address = normalize_email(email)
    async with sessionmaker() as session, session.begin():
        user = (
            await session.execute(select(StaffUser).where(StaffUser.email == address))
        ).scalar_one_or_none()
        if user is None or user.disabled_at is not None:
            raise StaffUserError("no active staff account with that email")
        user.disabled_at = utcnow()
        record(
            session,
            actor=actor or Actor.command_line(),
            event=ACCOUNT_DISABLED,
            subject=f"account {address} ({user.role})",
        )


async def staff_user_by_email(session: AsyncSession, email: str) -> StaffUser | None:
    query = select(StaffUser).where(StaffUser.email == email.strip().lower())
    return (await session.execute(query)).scalar_one_or_none()


async def check_sign_in(
    session: AsyncSession, *, email: str, password: str, user: StaffUser | None = None
) -> StaffUser | None:
    """The account if the password is right; None otherwise (whatever the reason)."""
    password = password[:MAX_PASSWORD_LENGTH]
    if user is None:
        user = await staff_user_by_email(session, email)
    stored = user.password_hash if user is not None else _dummy_hash()
    # argon2 takes tens of milliseconds of CPU: off the event loop.
    ok = await asyncio.to_thread(password_matches, stored, password)
    if not ok or user is None or user.disabled_at is not None:
        return None
    return user
