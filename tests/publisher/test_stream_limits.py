"""Live streams do not outlive their caller's rights, and one caller holds only a few (§11):
a stream ends when its token is revoked, its session signs out or its account is disabled;
one more stream than ``MAX_STREAMS_PER_CALLER`` gets 429. Through a real HTTP server."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import httpx
import pytest

from services.publisher.auth import create_api_token, revoke_api_token
from services.publisher.live_streams import MAX_STREAMS_PER_CALLER, RECHECK_SECONDS, StreamSlots
from services.publisher.staff import disable_staff_user
from tests.publisher.conftest import Api
from tests.publisher.console_support import PASSWORD, make_user
from tests.publisher.test_stream import next_stats, served
from tests.support import eventually

__all__ = ["served"]  # the fixture, shared with test_stream

ENDED_WITHIN = 30.0  # seconds a test waits for a stream to end (it ends within ~0.2 s here)


@pytest.fixture
def quick_recheck(api: Api) -> StreamSlots:
    slots = StreamSlots(recheck_seconds=0.2)
    api.app.state.stream_slots = slots
    return slots


async def stream_ends(lines: AsyncIterator[str]) -> bool:
    async for _ in lines:
        pass
    return True


async def action_url(api: Api, served: str) -> str:
    action = await api.publish((await api.create())["id"])
    return f"{served}/api/v1/actions/{action['id']}/stats/stream"


def test_the_recheck_is_within_the_contracts_minute() -> None:
    assert RECHECK_SECONDS <= 60


async def test_a_revoked_tokens_stream_ends(
    api: Api, served: str, quick_recheck: StreamSlots
) -> None:
    url = await action_url(api, served)
    sessionmaker = api.app.state.runtime.sessionmaker
    token = await create_api_token(sessionmaker, role="coordinator", name="wall screen")
    kept = api.auth("admin")
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("GET", url, headers={"Authorization": f"Bearer {token}"}) as revoked,
        client.stream("GET", url, headers=kept) as other,
    ):
        assert revoked.status_code == 200 and other.status_code == 200
        lines = revoked.aiter_lines()
        await asyncio.wait_for(next_stats(lines), 10)
        await revoke_api_token(sessionmaker, name="wall screen")

        assert await asyncio.wait_for(stream_ends(lines), ENDED_WITHIN)
        # Another caller's stream goes on.
        other_lines = other.aiter_lines()
        await asyncio.wait_for(next_stats(other_lines), 10)
        await asyncio.sleep(1)
        assert not other.is_closed
    # Both places given back once both streams are over.
    await eventually(lambda: quick_recheck.open_streams() == 0, what="the places given back")


@pytest.mark.parametrize("how", ["signed out", "account disabled"])
async def test_a_console_stream_ends_when_its_session_does(
    api: Api, served: str, quick_recheck: StreamSlots, how: str
) -> None:
    url = await action_url(api, served)
    email = await make_user(api.app, "coordinator")
    async with httpx.AsyncClient(base_url=served, timeout=60) as browser:
        login = await browser.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', login.text)
        assert csrf
        form = {"email": email, "password": PASSWORD, "csrf_token": csrf.group(1)}
        assert (await browser.post("/login", data=form)).status_code == 303
        page = await browser.get("/")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert csrf
        async with browser.stream("GET", url) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            await asyncio.wait_for(next_stats(lines), 10)
            if how == "signed out":
                # From another tab: the session ends, the stream with it.
                ended = await browser.post("/logout", data={"csrf_token": csrf.group(1)})
                assert ended.status_code == 303
            else:
                await disable_staff_user(api.app.state.runtime.sessionmaker, email=email)

            assert await asyncio.wait_for(stream_ends(lines), ENDED_WITHIN)


async def test_one_caller_holds_a_bounded_number_of_streams(
    api: Api, served: str, quick_recheck: StreamSlots
) -> None:
    url = await action_url(api, served)
    coordinator = api.auth("coordinator")
    async with AsyncExitStack() as streams, httpx.AsyncClient(timeout=60) as client:
        held = [
            await streams.enter_async_context(client.stream("GET", url, headers=coordinator))
            for _ in range(MAX_STREAMS_PER_CALLER)
        ]
        assert [r.status_code for r in held] == [200] * MAX_STREAMS_PER_CALLER

        refused = await client.get(url, headers=coordinator)
        assert refused.status_code == 429
        assert refused.json() == {
            "detail": f"at most {MAX_STREAMS_PER_CALLER} live streams at once"
        }
        assert int(refused.headers["retry-after"]) > 0
        # Another caller is not refused.
        async with client.stream("GET", url, headers=api.auth("admin")) as other:
            assert other.status_code == 200

        await held[0].aclose()  # one closed: its place is given back

        async def admitted() -> int:
            while True:
                async with client.stream("GET", url, headers=coordinator) as again:
                    if again.status_code != 429:
                        return again.status_code
                await asyncio.sleep(0.1)

        assert await asyncio.wait_for(admitted(), ENDED_WITHIN) == 200
