"""Contract §10: sign-in throttling counts every publisher process's failures. Two publisher
processes (two apps, two engines) on one PostgreSQL: ten wrong passwords spread over both, and
the 11th try is refused whichever process gets it; the pressure on an account and the policy's
other rules hold in the database as in memory (tests/publisher/test_sign_in_throttle.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from services.publisher.sign_in_store import DatabaseSignInThrottle
from services.publisher.sign_in_throttle import (
    ACCOUNT_FREE_FAILURES,
    PAIR_FAILURES,
    WINDOW_SECONDS,
)
from tests.publisher.conftest import Api, _open_api, migrated
from tests.publisher.console_support import Browser, make_user

WRONG = "not the password at all"


@pytest.fixture
async def publishers(pg_database: Callable[[], str]) -> AsyncIterator[tuple[Api, Api]]:
    url = await migrated(pg_database())
    first, close_first = await _open_api(url)
    second, close_second = await _open_api(url)
    try:
        yield first, second
    finally:
        await close_first()
        await close_second()


async def test_the_eleventh_wrong_password_is_refused_by_either_process(
    publishers: tuple[Api, Api],
) -> None:
    first, second = publishers
    assert isinstance(first.app.state.sign_in_throttle, DatabaseSignInThrottle)
    email = await make_user(first.app, "staff")
    guessers = [Browser(api.app, address="198.51.100.7") for api in publishers]
    owners = [Browser(api.app, address="203.0.113.20") for api in publishers]
    try:
        for attempt in range(PAIR_FAILURES):
            answer = await guessers[attempt % 2].sign_in(email, WRONG)
            assert answer.status_code == 401
        for guesser in guessers:
            refused = await guesser.sign_in(email)  # even the right password
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= WINDOW_SECONDS - 5
        for owner in owners:  # the staff member, from their own address, on either process
            assert (await owner.sign_in(email)).status_code == 303
    finally:
        for browser in guessers + owners:
            await browser.aclose()


async def test_the_rules_hold_in_the_database(pg_database: Callable[[], str]) -> None:
    url = await migrated(pg_database())
    api, close = await _open_api(url)
    now = [1_000_000.0]
    throttle = DatabaseSignInThrottle(api.app.state.database.sessionmaker, clock=lambda: now[0])
    try:
        # A pair lock is not reset by junk from elsewhere, and lasts the window.
        for _ in range(PAIR_FAILURES):
            await throttle.failed(email="staff@example.org", address="198.51.100.7")
        for n in range(30):
            await throttle.failed(email=f"junk-{n}@example.org", address="198.51.100.8")
        assert await throttle.wait(email="staff@example.org", address="198.51.100.7") == (
            WINDOW_SECONDS
        )
        assert await throttle.wait(email="Staff@Example.org ", address="203.0.113.20") is None
        # Under pressure (failures from many addresses), each address waits its own turn.
        for n in range(ACCOUNT_FREE_FAILURES):
            await throttle.failed(email="chief@example.org", address=f"192.0.2.{n}")
        first_try = await throttle.wait(email="chief@example.org", address="203.0.113.9")
        assert first_try is not None and first_try > 0
        now[0] += first_try
        assert await throttle.wait(email="chief@example.org", address="203.0.113.9") is None
        # A success forgives that address its failures for that email.
        await throttle.succeeded(email="chief@example.org", address="203.0.113.9")
        # Past the window, everything is forgotten.
        now[0] += 2 * WINDOW_SECONDS
        assert await throttle.wait(email="staff@example.org", address="198.51.100.7") is None
    finally:
        await close()
