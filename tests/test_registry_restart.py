"""After a registry restart, every live server is listed again within seconds, with the defaults.

The registry asks for a heartbeat every ``RELIST_PERIOD`` (5 s) in ``X-Geerpc-Period``,
and a heartbeat retries a failed beat at least that often, so both kinds of restart
end within one such period: a quick one that no beat noticed (the next beat
registers again), and an outage during which beats failed (the next retry does).
"""

from __future__ import annotations

import logging
import time

import aiohttp
import pytest
from _registry_helpers import FakeClock, RegistryProcess
from conftest import eventually

from geerpc.registry import DEFAULT_TIMEOUT, Heartbeat, Registry, announce
from geerpc.registry.contract import RELIST_PERIOD

SERVERS = [f"tcp@127.0.0.1:{9001 + i}" for i in range(4)]
GOAL = 10.0  # seconds from the registry listening again to every live server listed


async def listed(url: str) -> list[str]:
    """The registry's list, or [] while it does not answer."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            value = response.headers.get("X-Geerpc-Servers", "")
    except aiohttp.ClientError:
        return []
    return value.split(",") if value else []


@pytest.fixture
async def registry_process():
    process = RegistryProcess(timeout=DEFAULT_TIMEOUT)  # the defaults: 300 s
    yield process
    await process.stop()


@pytest.fixture
async def fleet():
    """Heartbeats as ``Server.start(registry=url)`` makes them, stopped afterwards."""
    started: list[Heartbeat] = []

    async def make(url: str) -> list[Heartbeat]:
        for address in SERVERS:
            beat = await announce(url, address, ["Arith"])
            assert isinstance(beat, Heartbeat)
            started.append(beat)
        return started

    yield make
    for beat in started:
        await beat.stop()


# -- a real registry process, real heartbeats, the default settings -----------------------


@pytest.mark.parametrize("ending", ["SIGKILL", "SIGTERM"])
async def test_a_quick_restart_lists_every_server_again_within_the_goal(registry_process, fleet, ending):
    url = await registry_process.start()
    beats = await fleet(url)
    assert await listed(url) == SERVERS
    assert {beat.period for beat in beats} == {RELIST_PERIOD}  # asked by the registry
    if ending == "SIGKILL":
        await registry_process.kill()  # a crash: the table is gone
    else:
        assert await registry_process.stop() == 0  # a clean stop forgets the table too
    assert await registry_process.start() == url  # same port, empty table
    back = time.monotonic()
    await eventually(lambda: _all_listed(url), timeout=GOAL, what="every server listed again")
    assert time.monotonic() - back < GOAL
    # Each heartbeat saw that its beat reached a new run of the registry.
    await eventually(lambda: all(beat.restarts == 1 for beat in beats), timeout=GOAL, what="restarts seen")


async def test_an_outage_lists_every_server_again_within_the_goal(registry_process, fleet):
    url = await registry_process.start()
    beats = await fleet(url)
    await registry_process.kill()
    # Down until every heartbeat has failed at least once (within one period).
    await eventually(lambda: all(beat.failures for beat in beats), timeout=2 * RELIST_PERIOD,
                     what="every beat failed")
    assert await registry_process.start() == url
    back = time.monotonic()
    await eventually(lambda: _all_listed(url), timeout=GOAL, what="every server listed again")
    assert time.monotonic() - back < GOAL
    assert all(beat.failures == 0 for beat in beats)


async def _all_listed(url: str) -> bool:
    return await listed(url) == SERVERS


# -- the same two cases on a fake clock ----------------------------------------------------


async def test_restart_shorter_than_the_period_relists_at_the_next_beat(caplog):
    clock = FakeClock()
    first = Registry()
    url = await first.start("127.0.0.1", 0)
    port = int(url.split(":")[2].split("/")[0])
    beat = Heartbeat(url, SERVERS[0], **clock.kwargs)
    beat.start()
    second = Registry()
    try:
        assert await beat.wait_first()
        assert beat.instance == first.instance
        await first.stop()
        await second.start("127.0.0.1", port)  # a new registry, empty, on the same port
        assert await listed(url) == []
        caplog.set_level(logging.INFO, "geerpc.registry")
        # no beat failed: the next one is due a period later, or a little sooner
        assert 0.9 * RELIST_PERIOD <= await clock.wake() <= RELIST_PERIOD < GOAL
        await clock.sleeping()
        assert await listed(url) == [SERVERS[0]]
        assert (beat.failures, beat.restarts, beat.instance) == (0, 1, second.instance)
        assert "restarted" in caplog.text
    finally:
        await beat.stop()
        await first.stop()
        await second.stop()


async def test_outage_retries_reach_the_registry_within_the_relist_period():
    clock = FakeClock()
    registry = Registry()
    url = await registry.start("127.0.0.1", 0)
    port = int(url.split(":")[2].split("/")[0])
    beat = Heartbeat(url, SERVERS[0], **clock.kwargs)
    beat.start()
    again = Registry()
    try:
        assert await beat.wait_first()
        await registry.stop()
        delays = []
        while sum(delays) < 60:  # a minute down: the backoff reaches its cap
            delays.append(await clock.wake())
        await clock.sleeping()
        assert beat.failures == len(delays)
        assert max(delays) <= RELIST_PERIOD < GOAL  # never longer between tries
        await again.start("127.0.0.1", port)
        assert await clock.wake() <= RELIST_PERIOD
        await clock.sleeping()
        assert beat.failures == 0
        assert await listed(url) == [SERVERS[0]]
    finally:
        await beat.stop()
        await registry.stop()
        await again.stop()
