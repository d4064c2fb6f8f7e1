"""RegistryDiscovery against geerpc's registry, a GeeRPC-like one, and hostile ones."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest
from _registry_helpers import FakeClock, RegistryProcess, free_port
from aiohttp import web
from conftest import eventually

from geerpc.errors import NoServerAvailable, RegistryError
from geerpc.registry import Heartbeat, Registry
from geerpc.xclient.discovery import ServerList
from geerpc.xclient.registry_discovery import RegistryDiscovery
from geerpc.xclient.selection import SelectMode

A = "tcp@127.0.0.1:9001"
B = "tcp@127.0.0.1:9002"
C = "tcp@127.0.0.1:9003"


async def post(url: str, address: str, services: str | None = None) -> None:
    headers = {"X-Geerpc-Server": address}
    if services is not None:
        headers["X-Geerpc-Services"] = services
    async with aiohttp.ClientSession() as session, session.post(url, headers=headers) as response:
        assert response.status == 200


def test_is_a_server_list():
    assert issubclass(RegistryDiscovery, ServerList)


# -- against geerpc's registry -------------------------------------------------------------


async def test_lists_servers_and_selects_by_service(registry, discoveries):
    await post(registry.url, A, "Arith")
    await post(registry.url, B, "Calc")
    await post(registry.url, C)
    discovery = discoveries(registry.url)
    assert await discovery.get_all() == [A, B, C]
    assert await discovery.get_all(service="Arith") == [A, C]
    assert await discovery.get(SelectMode.ROUND_ROBIN, service="Calc") in (B, C)
    assert discovery.services()[A] == frozenset({"Arith"})
    assert discovery.services()[C] is None


async def test_no_server_raises(registry, discoveries):
    discovery = discoveries(registry.url)
    with pytest.raises(NoServerAvailable):
        await discovery.get(SelectMode.RANDOM)


async def test_watch_delivers_a_registration_within_a_second(registry, discoveries):
    discovery = discoveries(registry.url, update_interval=60)
    assert await discovery.get_all() == []  # starts the watch
    await eventually(lambda: discovery.watching, timeout=2)
    started = time.monotonic()
    await post(registry.url, A)
    # services() does not refresh: only the watch can bring A in.
    await eventually(lambda: A in discovery.services(), timeout=1.0)
    assert time.monotonic() - started < 1.0


async def test_watch_delivers_an_expiry_within_a_second_of_it(discoveries):
    async with Registry(timeout=0.5) as registry:
        await post(registry.url, A)
        discovery = discoveries(registry.url, update_interval=60)
        assert await discovery.get_all() == [A]
        await eventually(lambda: discovery.services() == {}, timeout=1.5)
        await discovery.close()


async def test_concurrent_stale_reads_share_one_request(geerpc_like, discoveries):
    geerpc_like.servers = [A]
    geerpc_like.delay = 0.2
    discovery = discoveries(geerpc_like.url, watch=False)
    results = await asyncio.gather(*(discovery.get_all() for _ in range(20)))
    assert results == [[A]] * 20
    assert geerpc_like.gets == 1


async def test_refresh_fetches_now(registry, discoveries):
    discovery = discoveries(registry.url, update_interval=60, watch=False)
    assert await discovery.get_all() == []
    await post(registry.url, A)
    assert await discovery.get_all() == []  # fresh enough: no request
    await discovery.refresh()
    assert await discovery.get_all() == [A]


async def test_registry_with_1000_servers(registry, discoveries):
    addresses = [f"tcp@10.0.{i // 250}.{i % 250 + 1}:9000" for i in range(1000)]
    async with aiohttp.ClientSession() as session:
        semaphore = asyncio.Semaphore(50)

        async def one(address: str) -> None:
            async with semaphore, session.post(registry.url, headers={"X-Geerpc-Server": address}) as r:
                assert r.status == 200

        await asyncio.gather(*(one(a) for a in addresses))
    discovery = discoveries(registry.url)
    assert await discovery.get_all() == sorted(addresses)
    assert await discovery.get(SelectMode.RANDOM) in addresses


# -- registry down or restarted -------------------------------------------------------------


async def test_serves_last_good_list_while_registry_is_down(discoveries, caplog):
    caplog.set_level(logging.DEBUG, logger="geerpc.xclient.registry_discovery")
    clock = FakeClock()
    registry = Registry(timeout=300)
    url = await registry.start()
    try:
        await post(url, A)
        discovery = discoveries(url, update_interval=0.1, watch=False, **clock.kwargs)
        assert await discovery.get_all() == [A]
    finally:
        await registry.stop()
    clock.advance(0.15)  # the list is stale: the next read must try the registry
    assert await discovery.get(SelectMode.RANDOM) == A
    with pytest.raises(RegistryError):
        await discovery.refresh()
    assert discovery.last_error
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert [r.levelno for r in failures] == [logging.WARNING, logging.DEBUG]
    # In backoff (the clock stands still), reads answer from the cache without asking.
    for _ in range(20):
        assert await discovery.get_all() == [A]
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 2
    clock.advance(0.1)  # the backoff is capped at update_interval
    assert await discovery.get_all() == [A]
    assert len([r for r in caplog.records if "failed" in r.getMessage()]) == 3


async def test_watch_backs_off_while_registry_fails(geerpc_like, discoveries):
    geerpc_like.status = 500
    clock = FakeClock()
    discovery = discoveries(geerpc_like.url, update_interval=1.0, **clock.kwargs)
    assert await discovery.get_all() == []
    delays = []
    for _ in range(6):
        delays.append(await clock.wake())
        for _ in range(10):
            await discovery.get_all()  # reads share the retry or wait for the backoff: no more requests
    await clock.sleeping()
    assert geerpc_like.gets == 7  # the first GET, then one per retry
    assert 0.25 <= delays[0] <= 0.5  # equal jitter on 0.5 s ...
    assert all(0.5 <= delay <= 1.0 for delay in delays[1:])  # ... doubling, capped at update_interval


async def test_unreachable_registry_first_read_is_empty_and_names_the_error(discoveries):
    discovery = discoveries(f"http://127.0.0.1:{free_port()}/_geerpc_/registry", timeout=1)
    with pytest.raises(NoServerAvailable, match="last error"):
        await discovery.get(SelectMode.RANDOM)


async def test_empty_list_from_a_restarted_registry_is_held_until_its_timeout(discoveries):
    # The first registry has been up for 100 s; the second one, started on the same
    # port, has just started. No request fails in between: the registry's start time
    # moving is what shows the restart. Both registries and the discovery share a clock.
    clock = FakeClock()
    first = Registry(timeout=300, clock=clock)
    url = await first.start()
    clock.advance(100.0)
    port = int(url.split(":")[2].split("/")[0])
    await post(url, A)
    discovery = discoveries(url, watch=False, **clock.kwargs)
    assert await discovery.get_all() == [A]
    await first.stop()
    second = Registry(timeout=0.6, clock=clock)
    await second.start("127.0.0.1", port)
    try:
        await discovery.refresh()
        assert await discovery.get_all() == [A]  # empty answer from a registry up for < 0.6 s
        clock.advance(0.5)
        await discovery.refresh()
        assert await discovery.get_all() == [A]  # still held
        clock.advance(0.25)
        await discovery.refresh()
        assert await discovery.get_all() == []  # up for its timeout: every live server has beaten again
    finally:
        await second.stop()


async def test_non_empty_list_from_a_restarted_registry_is_applied_at_once(discoveries):
    first = Registry(timeout=300)
    url = await first.start()
    port = int(url.split(":")[2].split("/")[0])
    await post(url, A)
    discovery = discoveries(url, watch=False)
    assert await discovery.get_all() == [A]
    await first.stop()
    second = Registry(timeout=300)
    await second.start("127.0.0.1", port)
    try:
        await post(url, B)
        await discovery.refresh()
        assert await discovery.get_all() == [B]
    finally:
        await second.stop()


async def test_discovery_follows_a_killed_and_restarted_registry_without_going_empty(discoveries):
    process = RegistryProcess(timeout=300)
    clock = FakeClock()  # the heartbeat's: it beats again only when the test says
    beat = None
    try:
        url = await process.start()
        beat = Heartbeat(url, A, **clock.kwargs)
        beat.start()
        assert await beat.wait_first()
        discovery = discoveries(url, update_interval=0.2)
        assert await discovery.get_all() == [A]
        await eventually(lambda: discovery.watching, timeout=3)
        await process.kill()
        await eventually(lambda: not discovery.watching, timeout=3)
        assert await discovery.get_all() == [A]
        await process.start()
        # The restarted registry lists nobody until the heartbeat beats again; the
        # discovery watches it again but keeps serving A.
        await eventually(lambda: discovery.watching, timeout=5)
        assert await discovery.get_all() == [A]
        await clock.wake()  # the next beat lists A again
        await clock.sleeping()
        await post(url, B)
        await eventually(lambda: set(discovery.services()) == {A, B}, timeout=2)
    finally:
        if beat is not None:
            await beat.stop()
        await process.stop()


# -- a registry that speaks only GeeRPC's two headers -----------------------------------------


async def test_falls_back_to_polling_a_geerpc_registry(geerpc_like, discoveries):
    geerpc_like.servers = [A]
    clock = FakeClock()
    discovery = discoveries(geerpc_like.url, update_interval=0.2, **clock.kwargs)
    assert await discovery.get_all() == [A]
    assert await clock.sleeping() == 0.2  # no index to watch: poll every update_interval
    assert not discovery.watching
    geerpc_like.servers = [A, B]
    assert await discovery.get_all() == [A]  # fresh for update_interval: no request
    assert geerpc_like.gets == 1
    assert await clock.wake() == 0.2
    assert await clock.sleeping() == 0.2
    assert await discovery.get_all() == [A, B]
    assert geerpc_like.gets == 2


async def test_geerpc_registry_with_1000_servers_in_one_header(geerpc_like, discoveries):
    geerpc_like.servers = [f"tcp@10.0.{i // 250}.{i % 250 + 1}:9000" for i in range(1000)]
    discovery = discoveries(geerpc_like.url)
    assert len(await discovery.get_all()) == 1000  # a 20 KB header: past aiohttp's default limit


async def test_empty_answer_after_an_error_is_held_for_restart_grace(geerpc_like, discoveries):
    geerpc_like.servers = [A]
    clock = FakeClock()
    discovery = discoveries(geerpc_like.url, watch=False, restart_grace=0.5, **clock.kwargs)
    assert await discovery.get_all() == [A]
    geerpc_like.status = 500
    with pytest.raises(RegistryError):
        await discovery.refresh()
    geerpc_like.status = None
    geerpc_like.servers = []
    await discovery.refresh()
    assert await discovery.get_all() == [A]
    clock.advance(0.25)
    await discovery.refresh()
    assert await discovery.get_all() == [A]  # still within restart_grace of the first empty answer
    clock.advance(0.25)
    await discovery.refresh()
    assert await discovery.get_all() == []


async def test_empty_answer_without_an_error_is_applied(geerpc_like, discoveries):
    geerpc_like.servers = [A]
    discovery = discoveries(geerpc_like.url, watch=False)
    assert await discovery.get_all() == [A]
    geerpc_like.servers = []
    await discovery.refresh()
    assert await discovery.get_all() == []


# -- hostile registries -------------------------------------------------------------------------


async def test_unusable_addresses_are_dropped_and_logged_once(geerpc_like, discoveries, caplog):
    geerpc_like.servers = ["garbage", A, "tcp@x:99999", "ftp@h:1"]
    discovery = discoveries(geerpc_like.url, watch=False)
    assert await discovery.get_all() == [A]
    await discovery.refresh()
    warnings = [r for r in caplog.records if "unusable" in r.getMessage()]
    assert len(warnings) == 3


def _replying(body: bytes, content_type: str = "application/json", headers: dict[str, str] | None = None):
    async def reply(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers=headers or {})

    return reply


@pytest.mark.parametrize(
    "reply, error",
    [
        (_replying(b"{not json"), "malformed JSON"),
        (_replying(b'{"servers": 5}'), "'servers' list"),
        (_replying(b"[]"), "'servers' list"),
        (_replying(b"hello", "text/plain"), "no X-Geerpc-Servers"),
        (_replying(b'{"servers": []}' + b" " * 100_000), "exceeds"),
        (_replying(b"", "text/plain", {"X-Geerpc-Servers": "tcp@h:1," * 5000}), "Got more than"),
    ],
    ids=["bad-json", "servers-not-list", "not-object", "no-header", "huge-body", "huge-header"],
)
async def test_garbage_replies_keep_the_old_list(geerpc_like, discoveries, reply, error):
    geerpc_like.servers = [A]
    discovery = discoveries(geerpc_like.url, watch=False, max_response_bytes=10_000)
    assert await discovery.get_all() == [A]
    geerpc_like.override = reply
    with pytest.raises(RegistryError, match=error):
        await discovery.refresh()
    assert await discovery.get_all() == [A]


async def test_json_entries_with_bad_fields_are_dropped(geerpc_like, discoveries):
    servers = [
        {"address": A, "services": ["Arith"]},
        {"address": B, "services": "Arith"},
        {"address": 5},
        "nope",
        {"address": C, "services": None},
    ]
    geerpc_like.override = _replying(json.dumps({"servers": servers}).encode())
    discovery = discoveries(geerpc_like.url, watch=False)
    assert await discovery.get_all() == [A, C]


async def test_slow_registry_times_out_and_keeps_the_old_list(geerpc_like, discoveries):
    geerpc_like.servers = [A]
    discovery = discoveries(geerpc_like.url, watch=False, timeout=0.3)
    assert await discovery.get_all() == [A]
    geerpc_like.delay = 10
    started = time.monotonic()
    with pytest.raises(RegistryError, match="timed out"):
        await discovery.refresh()
    assert time.monotonic() - started < 1.5
    assert await discovery.get_all() == [A]


# -- lifecycle --------------------------------------------------------------------------------


async def test_close_is_idempotent_and_stops_the_watch(registry):
    discovery = RegistryDiscovery(registry.url)
    await post(registry.url, A)
    assert await discovery.get_all() == [A]
    watch = discovery._watch_task
    await discovery.close()
    await discovery.close()
    assert watch is not None and watch.done()
    assert await discovery.get_all() == [A]  # the last list, no request
    with pytest.raises(RegistryError):
        await discovery.refresh()


async def test_close_during_a_read_does_not_break_the_reader(geerpc_like):
    geerpc_like.delay = 5
    discovery = RegistryDiscovery(geerpc_like.url, watch=False)
    read = asyncio.create_task(discovery.get_all())
    await eventually(lambda: geerpc_like.gets == 1)
    await discovery.close()
    assert await asyncio.wait_for(read, 2) == []


async def test_async_with_closes(registry):
    async with RegistryDiscovery(registry.url) as discovery:
        await discovery.get_all()
    assert discovery._session is None
