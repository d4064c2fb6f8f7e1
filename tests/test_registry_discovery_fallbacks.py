"""RegistryDiscovery when things are not simple: watches refused or cut, servers leaving
for good versus a registry restarting, replies with nothing usable, bad arguments."""

from __future__ import annotations

import logging
import math

import aiohttp
import pytest
from _registry_helpers import FakeClock, RegistryProcess
from aiohttp import web
from conftest import eventually

from geerpc.errors import RegistryError
from geerpc.registry import Registry
from geerpc.xclient.registry_discovery import RegistryDiscovery
from geerpc.xclient.registry_policy import MIN_WATCH_GAP

A = "tcp@127.0.0.1:9001"
B = "tcp@127.0.0.1:9002"
LOGGER = "geerpc.xclient.registry_discovery"


class _Watches:
    """A registry answering plain GETs with [A] as JSON, and watches with ``status``."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.headers = headers or {}
        self.gets = 0
        self.watches = 0

    async def __call__(self, request: web.Request) -> web.Response:
        body = {"index": 7, "timeout": 300, "uptime": 1000, "servers": [{"address": A, "services": None}]}
        if "index" in request.query:
            self.watches += 1
            if self.status != 200:
                return web.Response(status=self.status, text="no watch for you", headers=self.headers)
        else:
            self.gets += 1
        return web.json_response(body, headers={"X-Geerpc-Index": "7"})


def _records(caplog, level: int, text: str = "") -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == level and text in r.getMessage()]


# -- watches refused or cut ------------------------------------------------------------------


@pytest.mark.parametrize("status, headers", [(429, {"Retry-After": "1"}), (400, {})], ids=["429", "400"])
async def test_refused_watch_falls_back_to_polling_at_update_interval(geerpc_like, discoveries, caplog,
                                                                      status, headers):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    watches = geerpc_like.override = _Watches(status, headers)
    clock = FakeClock()
    discovery = discoveries(geerpc_like.url, update_interval=2.0, **clock.kwargs)
    assert await discovery.get_all() == [A]
    assert await clock.wake() == MIN_WATCH_GAP  # the list has an index: watch it
    assert await clock.sleeping() == 2.0  # refused: poll at update_interval instead
    assert (watches.gets, watches.watches) == (1, 1)
    for _ in range(10):
        assert await discovery.get_all() == [A]  # fresh until update_interval has passed
    assert (watches.gets, watches.watches) == (1, 1)
    assert len(_records(caplog, logging.WARNING)) == 1
    assert discovery.last_error is None  # the registry answers: it is not failing
    # After the pause (update_interval, as long as Retry-After or longer) the watch is
    # tried again; refused again, the pause doubles and the repeat is logged at DEBUG.
    await clock.wake()
    assert await clock.wake() == MIN_WATCH_GAP
    assert await clock.sleeping() == 2.0
    assert (watches.gets, watches.watches) == (2, 2)
    assert _records(caplog, logging.DEBUG, "watching again in 4 s")
    assert len(_records(caplog, logging.WARNING)) == 1


async def test_retry_after_postpones_the_watch_while_polling_goes_on(geerpc_like, discoveries, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    watches = geerpc_like.override = _Watches(429, {"Retry-After": "30"})
    clock = FakeClock()
    discovery = discoveries(geerpc_like.url, update_interval=0.1, **clock.kwargs)
    assert await discovery.get_all() == [A]
    await clock.wake()  # the gap before the watch, which is refused
    assert [await clock.wake() for _ in range(6)] == [0.1] * 6  # polling every 0.1 s
    await clock.sleeping()
    assert (watches.gets, watches.watches) == (7, 1)  # and no second watch before Retry-After
    clock.advance(30.0)
    await clock.sleeping()
    await clock.wake()  # the gap: Retry-After is over, watch again
    await clock.sleeping()
    assert watches.watches == 2


async def test_watch_resumes_when_no_longer_refused(geerpc_like, discoveries, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    watches = geerpc_like.override = _Watches(429)
    clock = FakeClock()
    discovery = discoveries(geerpc_like.url, update_interval=0.1, **clock.kwargs)
    assert await discovery.get_all() == [A]
    await clock.run_until(lambda: watches.watches >= 2)
    assert _records(caplog, logging.DEBUG, "refused the watch")
    assert len(_records(caplog, logging.WARNING)) == 1  # repeats go to DEBUG
    watches.status = 200
    await clock.run_until(lambda: _records(caplog, logging.INFO, "accepts watches again"))
    assert discovery.watching


async def test_watch_cut_by_a_proxy_backs_off_and_warns_once(geerpc_like, discoveries, caplog):
    # Plain GETs work but every watch gets a 502: each plain GET succeeds, yet the
    # watch must not be retried at the first-failure pace nor warned about each time.
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    watches = geerpc_like.override = _Watches(502)
    clock = FakeClock()
    discovery = discoveries(geerpc_like.url, update_interval=10.0, **clock.kwargs)
    assert await discovery.get_all() == [A]
    await clock.run_until(lambda: watches.watches >= 5)
    # Sleeps alternate: the gap before a watch, then the backoff after it failed.
    assert clock.sleeps[0::2] == [MIN_WATCH_GAP] * 5
    backoffs = clock.sleeps[1::2]
    for failures, delay in enumerate(backoffs, 1):
        step = min(10.0, 0.5 * 2 ** (failures - 1))
        assert step / 2 <= delay <= step  # doubling although a good GET came in between
    assert len(_records(caplog, logging.WARNING)) == 1
    assert len(_records(caplog, logging.INFO, "answers again")) == 1


async def test_registry_with_a_short_max_wait_keeps_the_watch(discoveries, caplog):
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    async with Registry(max_wait=0.2) as registry:
        clock = FakeClock()
        discovery = discoveries(registry.url, wait=30.0, **clock.kwargs)
        assert await discovery.get_all() == []
        for _ in range(3):
            await clock.wake()  # the gap, then a watch the registry holds for 0.2 s, not 30
            assert await clock.sleeping() == MIN_WATCH_GAP  # it came back unchanged: watch again
            assert discovery.watching and discovery.last_error is None
        assert len(clock.sleeps) == 4
        assert not _records(caplog, logging.WARNING)


# -- an empty list: the last server left, or the registry restarted ----------------------


async def _deregister(url: str, address: str) -> None:
    async with aiohttp.ClientSession() as session, session.delete(url, headers={"X-Geerpc-Server": address}) as r:
        assert r.status == 200


async def _register(url: str, address: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(url, headers={"X-Geerpc-Server": address}) as r:
        assert r.status == 200


async def test_last_server_leaving_empties_the_watched_list_at_once(discoveries):
    async with Registry(timeout=300) as registry:
        await _register(registry.url, A)
        discovery = discoveries(registry.url, update_interval=60)
        assert await discovery.get_all() == [A]
        await eventually(lambda: discovery.watching)
        await _deregister(registry.url, A)
        await eventually(lambda: discovery.services() == {}, timeout=2)


async def test_last_server_leaving_empties_a_refreshed_list(discoveries):
    async with Registry(timeout=300) as registry:
        await _register(registry.url, A)
        discovery = discoveries(registry.url, watch=False)
        assert await discovery.get_all() == [A]
        await _deregister(registry.url, A)
        await discovery.refresh()
        assert await discovery.get_all() == []


async def test_killed_and_restarted_registry_process_is_held_then_followed(discoveries):
    process = RegistryProcess(timeout=300)
    try:
        url = await process.start()
        await _register(url, A)
        discovery = discoveries(url, watch=False)
        assert await discovery.get_all() == [A]
        await process.kill()
        with pytest.raises(RegistryError):
            await discovery.refresh()
        await process.start()
        await discovery.refresh()
        assert await discovery.get_all() == [A]  # empty, but up for less than its timeout
        await _register(url, B)
        await discovery.refresh()
        assert await discovery.get_all() == [B]  # a non-empty answer applies at once
        await _deregister(url, B)
        await discovery.refresh()
        assert await discovery.get_all() == []  # nothing restarted since: applied at once
    finally:
        await process.stop()


# -- replies with nothing usable -----------------------------------------------------------


def _json(servers: list[object]):
    async def reply(request: web.Request) -> web.Response:
        return web.json_response({"servers": servers})

    return reply


@pytest.mark.parametrize("json_reply", [False, True], ids=["header", "json"])
async def test_reply_listing_only_unusable_addresses_keeps_the_old_list(geerpc_like, discoveries, json_reply):
    geerpc_like.servers = [A]
    discovery = discoveries(geerpc_like.url, watch=False)
    assert await discovery.get_all() == [A]
    if json_reply:
        geerpc_like.override = _json([{"address": "not an address"}, {"address": "tcp@h:99999"}, "junk"])
    else:
        geerpc_like.servers = ["not-an-address", "tcp@h:99999", "ftp@h:1"]
    with pytest.raises(RegistryError, match="usable"):
        await discovery.refresh()
    assert await discovery.get_all() == [A]
    assert discovery.last_error and "usable" in discovery.last_error


async def test_reply_with_some_usable_addresses_is_applied(geerpc_like, discoveries):
    geerpc_like.servers = [A]
    discovery = discoveries(geerpc_like.url, watch=False)
    assert await discovery.get_all() == [A]
    geerpc_like.servers = ["garbage", B]
    await discovery.refresh()
    assert await discovery.get_all() == [B]


# -- arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [math.nan, None, 0, -1.0, math.inf, True])
def test_bad_timeout_fails_at_construction(timeout):
    with pytest.raises(ValueError, match="timeout"):
        RegistryDiscovery("http://127.0.0.1:1/_geerpc_/registry", timeout=timeout)


@pytest.mark.parametrize("wait", [math.nan, -1.0, math.inf])
def test_bad_wait_fails_at_construction(wait):
    with pytest.raises(ValueError, match="wait"):
        RegistryDiscovery("http://127.0.0.1:1/_geerpc_/registry", wait=wait)
