"""Staff sign-in resists guessing without letting an outsider lock staff out (contract §7):
10 wrong passwords for one account from one address refuse that account there for 15 minutes;
failures from everywhere only slow the account's tries down; junk emails change nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from services.publisher.staff import (
    ACCOUNT_FREE_FAILURES,
    MAX_ACCOUNT_DELAY,
    MAX_TRACKED_ADDRESSES,
    PAIR_FAILURES,
    WINDOW_SECONDS,
    SignInThrottle,
)
from tests.publisher.conftest import Api
from tests.publisher.console_support import Browser, make_user

WRONG = "not the password at all"


@dataclass
class Clock:
    """The throttle's clock, moved by the test instead of waited for."""

    now: float = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(sqlite_api: Api) -> Clock:
    clock = Clock()
    sqlite_api.app.state.sign_in_throttle = SignInThrottle(clock=clock)
    return clock


@pytest.fixture
async def email(sqlite_api: Api) -> str:
    return await make_user(sqlite_api.app, "staff")


@pytest.fixture
async def browsers(sqlite_api: Api) -> AsyncIterator[dict[str, Browser]]:
    opened: dict[str, Browser] = {}

    class Open(dict[str, Browser]):
        def __missing__(self, address: str) -> Browser:
            browser = opened[address] = Browser(sqlite_api.app, address=address)
            return browser

    yield Open()
    for browser in opened.values():
        await browser.aclose()


async def test_ten_failures_refuse_that_account_from_that_address_only(
    email: str, clock: Clock, browsers: dict[str, Browser]
) -> None:
    guesser, staff = browsers["198.51.100.7"], browsers["203.0.113.20"]
    for _ in range(PAIR_FAILURES):
        assert (await guesser.sign_in(email, WRONG)).status_code == 401

    refused = await guesser.sign_in(email)  # even the right password
    signed_in = await staff.sign_in(email)  # the staff member, from their own address

    assert refused.status_code == 429 and "Too many failed attempts" in refused.text
    assert int(refused.headers["retry-after"]) == WINDOW_SECONDS
    assert signed_in.status_code == 303
    clock.now += WINDOW_SECONDS
    assert (await guesser.sign_in(email)).status_code == 303


async def test_a_spray_from_many_addresses_is_slowed_and_locks_no_one_out(
    email: str, clock: Clock, browsers: dict[str, Browser]
) -> None:
    sprayed = ACCOUNT_FREE_FAILURES + 5
    for n in range(sprayed):
        clock.now += 1
        answer = await browsers[f"192.0.2.{n}"].sign_in(email, WRONG)
        if n < ACCOUNT_FREE_FAILURES:
            assert answer.status_code == 401
        else:
            # Each try past the free ones waits longer after the last failure.
            assert answer.status_code == 429
            clock.now += int(answer.headers["retry-after"])
            assert (await browsers[f"192.0.2.{n}"].sign_in(email, WRONG)).status_code == 401

    slowed = await browsers["192.0.2.250"].sign_in(email, WRONG)
    assert slowed.status_code == 429
    assert 1 <= int(slowed.headers["retry-after"]) <= MAX_ACCOUNT_DELAY
    # The staff member waits at most that long, then signs in: slowed, never locked out.
    clock.now += MAX_ACCOUNT_DELAY
    assert (await browsers["203.0.113.20"].sign_in(email)).status_code == 303


async def test_unknown_emails_count_against_the_address_not_an_account(
    email: str, clock: Clock, browsers: dict[str, Browser]
) -> None:
    sprayer = browsers["198.51.100.99"]
    for n in range(3):
        assert (await sprayer.sign_in(f"nobody{n}@example.org", WRONG)).status_code == 401
    assert (await browsers["203.0.113.20"].sign_in(email)).status_code == 303


def test_junk_addresses_do_not_reset_an_accounts_counters() -> None:
    clock = Clock()
    throttle = SignInThrottle(clock=clock)
    for _ in range(PAIR_FAILURES - 1):
        throttle.failed(user_id=1, address="198.51.100.7")
    # A flood of failures for emails that are no account, from as many addresses as memory keeps.
    for n in range(MAX_TRACKED_ADDRESSES + 10):
        throttle.failed(user_id=None, address=f"junk-{n}")
    throttle.failed(user_id=1, address="198.51.100.7")

    assert throttle.wait(user_id=1, address="198.51.100.7") == WINDOW_SECONDS
    assert throttle.wait(user_id=1, address="203.0.113.20") is None
