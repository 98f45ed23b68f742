"""Staff accounts of the console: argon2id password hashes, sign-in, and a brake on guessing.

Sign-in answers the same way, in about the same time, for an unknown email and a wrong password:
an unknown email is still checked against a hash, so timing does not tell which accounts exist.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

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
# Checked when the email is unknown, so both failures cost the same work.
_DUMMY_HASH = _hasher.hash("uanet: no such account, same work as a real check")


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
    stored = user.password_hash if user is not None else _DUMMY_HASH
    # argon2 takes tens of milliseconds of CPU: off the event loop.
    ok = await asyncio.to_thread(password_matches, stored, password)
    if not ok or user is None or user.disabled_at is not None:
        return None
    return user


# Contract §7: 10 wrong passwords for one account from one address in 15 minutes refuse that
# account from that address for 15 minutes; an account's failures from everywhere slow its
# further tries, each waiting longer, up to a minute. Twice the per-address allowance, so one
# address (locked out itself at 10) cannot even slow the account down for its owner.
PAIR_FAILURES = 10
WINDOW_SECONDS = 15 * 60
ACCOUNT_FREE_FAILURES = 2 * PAIR_FAILURES
MAX_ACCOUNT_DELAY = 60.0
ADDRESS_FAILURES = 50  # wrong sign-ins from one address, whatever the account (a spray)
MAX_TRACKED_ADDRESSES = 100_000


@dataclass
class SignInThrottle:
    """A brake on guessing that an outsider cannot turn into a lock-out (per process).

    - One account from one client address: after ``PAIR_FAILURES`` wrong passwords within the
      window, refused (even the right password) for ``WINDOW_SECONDS``. Someone else's address
      is not refused: an outsider failing on purpose locks out only themselves.
    - One account from all addresses: past ``ACCOUNT_FREE_FAILURES`` failures in the window,
      each try waits after the last failure (2 s, 4 s, … up to ``MAX_ACCOUNT_DELAY``): a spray
      from many addresses gets a few tries a minute, the staff member only waits a little.
    - One address, all accounts (unknown ones too): after ``ADDRESS_FAILURES``, refused.

    Failures for emails that are no account are counted per address only, so junk addresses
    never touch an account's counters (nor push them out of memory).
    """

    clock: Callable[[], float] = time.monotonic

    def __post_init__(self) -> None:
        self._pair: dict[tuple[int, str], deque[float]] = {}
        self._pair_locked: dict[tuple[int, str], float] = {}
        self._account: dict[int, deque[float]] = {}
        self._address: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, times: deque[float], now: float) -> deque[float]:
        while times and now - times[0] > WINDOW_SECONDS:
            times.popleft()
        return times

    def wait(self, *, user_id: int | None, address: str) -> float | None:
        """Seconds until this account may be tried from this address; None if it may now."""
        now = self.clock()
        by_address = self._address.get(address)
        if by_address is not None and len(self._recent(by_address, now)) >= ADDRESS_FAILURES:
            return by_address[0] + WINDOW_SECONDS - now
        if user_id is None:
            return None
        locked_until = self._pair_locked.get((user_id, address))
        if locked_until is not None:
            if now < locked_until:
                return locked_until - now
            del self._pair_locked[(user_id, address)]
        failures = self._recent(self._account.get(user_id, deque()), now)
        if len(failures) >= ACCOUNT_FREE_FAILURES:
            delay = min(2.0 ** (len(failures) - ACCOUNT_FREE_FAILURES + 1), MAX_ACCOUNT_DELAY)
            if now < failures[-1] + delay:
                return failures[-1] + delay - now
        return None

    def failed(self, *, user_id: int | None, address: str) -> None:
        now = self.clock()
        by_address = self._address.setdefault(address, deque())
        self._address.move_to_end(address)
        self._recent(by_address, now).append(now)
        while len(self._address) > MAX_TRACKED_ADDRESSES:
            self._address.popitem(last=False)
        if user_id is None:
            return
        account = self._recent(self._account.setdefault(user_id, deque()), now)
        account.append(now)
        while len(account) > 10_000:  # bounded, and far past the longest delay anyway
            account.popleft()
        pair = self._recent(self._pair.setdefault((user_id, address), deque()), now)
        pair.append(now)
        if len(pair) >= PAIR_FAILURES:
            self._pair_locked[(user_id, address)] = now + WINDOW_SECONDS
            pair.clear()
        self._forget_stale(now)

    def succeeded(self, *, user_id: int, address: str) -> None:
        self._pair.pop((user_id, address), None)

    def _forget_stale(self, now: float) -> None:
        # Only entries whose window is over: forgetting them changes no answer.
        if len(self._pair) > MAX_TRACKED_ADDRESSES:
            for key in [k for k, v in self._pair.items() if not self._recent(v, now)]:
                del self._pair[key]
        if len(self._pair_locked) > MAX_TRACKED_ADDRESSES:
            for key in [k for k, until in self._pair_locked.items() if until <= now]:
                del self._pair_locked[key]
