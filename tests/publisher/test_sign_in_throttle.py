"""Staff sign-in resists guessing without letting an outsider lock staff out (contract §7, §11):
10 wrong passwords for one account from one address refuse that account there for 15 minutes;
failures from everywhere only slow each address's tries down, so the owner waits at most a
minute; an unknown email gets exactly the answers an account gets. Each test runs on the
throttle of one process (SQLite: in memory) and on the one every process shares (PostgreSQL)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from services.publisher.sign_in_store import DatabaseSignInThrottle
from services.publisher.sign_in_throttle import (
    ACCOUNT_FREE_FAILURES,
    MAX_ACCOUNT_DELAY,
    PAIR_FAILURES,
    WINDOW_SECONDS,
    MemorySignInThrottle,
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
def clock(api: Api) -> Clock:
    clock = Clock()
    database = api.app.state.database
    api.app.state.sign_in_throttle = (
        MemorySignInThrottle(clock=clock)
        if database.is_sqlite
        else DatabaseSignInThrottle(database.sessionmaker, clock=clock)
    )
    return clock


@pytest.fixture
async def email(api: Api) -> str:
    return await make_user(api.app, "staff")


@pytest.fixture
async def browsers(api: Api) -> AsyncIterator[dict[str, Browser]]:
    opened: dict[str, Browser] = {}

    class Open(dict[str, Browser]):
        def __missing__(self, address: str) -> Browser:
            browser = opened[address] = Browser(api.app, address=address)
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


async def test_an_ipv6_network_is_one_address(
    email: str, clock: Clock, browsers: dict[str, Browser]
) -> None:
    """One host is given a whole /64: each guess from a fresh address in it is the same client."""
    for n in range(PAIR_FAILURES):
        answer = await browsers[f"2001:db8:7:1::{n + 1:x}"].sign_in(email, WRONG)
        assert answer.status_code == 401

    assert (await browsers["2001:db8:7:1:ffff::99"].sign_in(email, WRONG)).status_code == 429
    assert (await browsers["2001:db8:7:2::1"].sign_in(email)).status_code == 303  # next /64


async def test_a_spray_from_many_addresses_is_slowed_per_address(
    email: str, clock: Clock, browsers: dict[str, Browser]
) -> None:
    for n in range(ACCOUNT_FREE_FAILURES):
        clock.now += 1
        assert (await browsers[f"192.0.2.{n}"].sign_in(email, WRONG)).status_code == 401

    # Under pressure every address waits its turn: a new one as well, then it may try once.
    for n in range(ACCOUNT_FREE_FAILURES, ACCOUNT_FREE_FAILURES + 5):
        sprayer = browsers[f"192.0.2.{n}"]
        waited = await sprayer.sign_in(email, WRONG)
        assert waited.status_code == 429
        assert 1 <= int(waited.headers["retry-after"]) <= MAX_ACCOUNT_DELAY
        clock.now += int(waited.headers["retry-after"]) - 1
        assert (await sprayer.sign_in(email, WRONG)).status_code == 429  # early: still waiting
        clock.now += 1
        assert (await sprayer.sign_in(email, WRONG)).status_code == 401
        again = await sprayer.sign_in(email, WRONG)
        assert again.status_code == 429
        assert int(again.headers["retry-after"]) > int(waited.headers["retry-after"])


async def test_unknown_emails_count_against_the_address_not_an_account(
    email: str, clock: Clock, browsers: dict[str, Browser]
) -> None:
    sprayer = browsers["198.51.100.99"]
    for n in range(3):
        assert (await sprayer.sign_in(f"nobody{n}@example.org", WRONG)).status_code == 401
    assert (await browsers["203.0.113.20"].sign_in(email)).status_code == 303


async def test_attackers_polling_from_three_addresses_never_keep_the_owner_out_a_minute(
    api: Api, email: str, clock: Clock, browsers: dict[str, Browser]
) -> None:
    """Three addresses guess as fast as they can without locking themselves out (one wrong
    password each 100 s, 9 in any 15 minutes) and poll every 3 s in between. Once the attack
    fills its 15-minute window, the owner tries every 30 s for 5 minutes from their own
    address, following Retry-After; no try of theirs waits more than a minute."""
    attackers = {f"198.51.100.{n}": clock.now + 33 * n for n in (1, 2, 3)}  # next try of each
    failures = 0

    async def attack() -> None:
        nonlocal failures
        for address, next_try in attackers.items():
            if clock.now >= next_try:
                answer = await browsers[address].sign_in(email, WRONG)
                failures += answer.status_code == 401
                attackers[address] = clock.now + (100 if answer.status_code == 401 else 3)

    start = clock.now
    while clock.now < start + WINDOW_SECONDS:
        await attack()
        clock.now += 1
    assert failures >= ACCOUNT_FREE_FAILURES  # the email is under pressure

    waits: list[float] = []
    observed = clock.now
    while clock.now < observed + 5 * 60:
        owner = Browser(api.app, address="203.0.113.20")
        asked = clock.now
        answer = await owner.sign_in(email)
        while answer.status_code == 429:
            retry_at = clock.now + int(answer.headers["retry-after"])
            while clock.now < retry_at:  # the attackers carry on meanwhile
                clock.now += 1
                await attack()
            answer = await owner.sign_in(email)
        assert answer.status_code == 303
        waits.append(clock.now - asked)
        await owner.aclose()
        while clock.now < asked + 30:
            clock.now += 1
            await attack()

    assert max(waits) <= MAX_ACCOUNT_DELAY, waits


async def test_an_unknown_email_gets_exactly_the_answers_an_account_gets(
    email: str, clock: Clock, browsers: dict[str, Browser]
) -> None:
    def answers_of(prefix: str) -> list[Browser]:
        return [browsers[f"{prefix}.{n}"] for n in range(4)]

    transcripts: dict[str, list[tuple[int, str | None]]] = {email: [], "nobody@example.org": []}
    for target, prefix in ((email, "198.51.100"), ("nobody@example.org", "203.0.113")):
        begin = clock.now
        for step in range(90):  # 4 addresses polling for 3 minutes: locks, waits and all
            clock.now = begin + step * 2
            for guesser in answers_of(prefix):
                answer = await guesser.sign_in(target, WRONG)
                retry_after = answer.headers.get("retry-after")
                transcripts[target].append((answer.status_code, retry_after))
        clock.now = begin + 2 * WINDOW_SECONDS  # both start from nothing

    assert {code for code, _ in transcripts[email]} == {401, 429}
    assert transcripts[email] == transcripts["nobody@example.org"]


async def test_junk_emails_do_not_reset_an_accounts_pair_lock() -> None:
    throttle = MemorySignInThrottle(clock=Clock())
    for _ in range(PAIR_FAILURES):
        await throttle.failed(email="staff@example.org", address="198.51.100.7")
    # Failures for emails that are no account, from another address, as many as it may.
    for n in range(200):
        await throttle.failed(email=f"junk-{n}@example.org", address="198.51.100.8")
    assert await throttle.wait(email="staff@example.org", address="198.51.100.7") == (
        WINDOW_SECONDS
    )
    assert await throttle.wait(email="Staff@Example.org ", address="203.0.113.20") is None
