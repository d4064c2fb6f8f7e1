"""The registry's HTTP endpoint, against a real listening registry on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time

import aiohttp
import pytest
from _registry_helpers import RegistryProcess
from conftest import eventually

from geerpc.registry import Registry

SERVER = "X-Geerpc-Server"
SERVERS = "X-Geerpc-Servers"
SERVICES = "X-Geerpc-Services"
INDEX = "X-Geerpc-Index"
A = "tcp@127.0.0.1:9001"
B = "tcp@127.0.0.1:9002"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http, url, address=A, services=None, **headers):
    all_headers = {SERVER: address, **headers}
    if services is not None:
        all_headers[SERVICES] = services
    async with http.post(url, headers=all_headers) as response:
        return response.status, response.headers.copy(), await response.text()


async def get(http, url, params=None, **headers):
    async with http.get(url, params=params or {}, headers=headers) as response:
        return response.status, response.headers.copy(), await response.read()


async def listed(http, url, **params) -> list[str]:
    status, headers, _ = await get(http, url, params)
    assert status == 200
    value = headers[SERVERS]
    return value.split(",") if value else []


# -- GeeRPC's contract ----------------------------------------------------------------


async def test_start_returns_url_of_the_registry_path(make_registry):
    registry = await make_registry()
    assert registry.url.startswith("http://127.0.0.1:")
    assert registry.url.endswith("/_geerpc_/registry")


async def test_get_on_empty_registry_has_empty_header(make_registry, http):
    registry = await make_registry()
    status, headers, body = await get(http, registry.url)
    assert status == 200
    assert headers[SERVERS] == ""
    assert body == b""


async def test_post_registers_and_get_lists_sorted(make_registry, http):
    registry = await make_registry()
    for address in (B, A):
        status, headers, _ = await post(http, registry.url, address)
        assert status == 200
        assert headers["X-Geerpc-Timeout"] == "300"
    assert await listed(http, registry.url) == [A, B]


async def test_post_reply_carries_timeout_zero_and_fraction(make_registry, http):
    for timeout, text in ((0, "0"), (0.5, "0.5")):
        registry = await make_registry(timeout)
        _, headers, _ = await post(http, registry.url)
        assert headers["X-Geerpc-Timeout"] == text


async def test_every_reply_asks_for_a_period_and_names_the_run(make_registry, http):
    registry = await make_registry()  # the defaults: timeout 300 s, period 5 s
    replies = [await post(http, registry.url), await get(http, registry.url),
               await get(http, registry.url, {"index": "x"}),  # a 400
               await get(http, registry.url, Accept="application/json")]
    instance = registry.instance
    assert len(instance) == 16 and int(instance, 16) >= 0
    for _, headers, _ in replies:
        assert (headers["X-Geerpc-Period"], headers["X-Geerpc-Instance"]) == ("5", instance)
    body = json.loads(replies[-1][2])
    assert (body["period"], body["instance"]) == (5.0, instance)


async def test_the_instance_changes_with_every_start(make_registry, http):
    registry = await make_registry()
    first = registry.instance
    port = int(registry.url.split(":")[2].split("/")[0])
    await registry.stop()
    await registry.start("127.0.0.1", port)
    _, headers, _ = await post(http, registry.url)
    assert headers["X-Geerpc-Instance"] == registry.instance != first
    other = await make_registry()
    assert other.instance not in (first, registry.instance)


@pytest.mark.parametrize(
    "timeout, asked, period",
    [(300, 5, "5"), (300, 2.5, "2.5"), (300, 600, "240"), (30, 600, "10"), (6, 5, "2"), (0, 600, "600"),
     (300, 0.1, "0.1")],
)
async def test_the_period_asked_is_at_most_what_the_timeout_allows(make_registry, http, timeout, asked, period):
    registry = await make_registry(timeout, heartbeat_period=asked)
    _, headers, _ = await post(http, registry.url)
    assert headers["X-Geerpc-Period"] == period


@pytest.mark.parametrize("asked", [0, 0.05, -1, math.nan, math.inf, True, "5", None])
def test_bad_heartbeat_period_is_a_value_error(asked):
    with pytest.raises(ValueError, match="heartbeat_period"):
        Registry(heartbeat_period=asked)


async def test_bare_host_port_is_stored_as_tcp(make_registry, http):
    registry = await make_registry()
    await post(http, registry.url, "127.0.0.1:9001")
    await post(http, registry.url, A)
    assert await listed(http, registry.url) == [A]


async def test_server_expires_after_timeout(make_registry, http):
    registry = await make_registry(timeout=0.5)
    await post(http, registry.url)
    assert await listed(http, registry.url) == [A]
    started = time.monotonic()
    await eventually(lambda: _empty(http, registry.url), timeout=3)
    assert time.monotonic() - started > 0.3


async def _empty(http, url) -> bool:
    return await listed(http, url) == []


async def test_timeout_zero_never_expires(make_registry, http):
    registry = await make_registry(timeout=0)
    await post(http, registry.url)
    assert registry._sweeper is None
    assert await listed(http, registry.url) == [A]


# -- extras: deregistration, services, JSON -------------------------------------------


async def test_delete_deregisters(make_registry, http):
    registry = await make_registry()
    await post(http, registry.url)
    async with http.delete(registry.url, headers={SERVER: A}) as response:
        assert response.status == 200
    assert await listed(http, registry.url) == []


async def test_delete_of_unknown_address_is_404(make_registry, http):
    registry = await make_registry()
    async with http.delete(registry.url, headers={SERVER: A}) as response:
        assert response.status == 404
        assert "not registered" in await response.text()


async def test_services_filter_and_json(make_registry, http):
    registry = await make_registry()
    await post(http, registry.url, A, services="Arith,Calc")
    await post(http, registry.url, B)  # no services: offers every service
    await post(http, registry.url, "tcp@127.0.0.1:9003", services="Calc")
    assert await listed(http, registry.url, service="Arith") == [A, B]
    status, headers, body = await get(http, registry.url, {"service": "Calc"}, Accept="application/json")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    import json

    data = json.loads(body)
    assert data["index"] == int(headers[INDEX])
    assert data["timeout"] == 300
    assert data["uptime"] >= 0
    assert [s["address"] for s in data["servers"]] == [A, B, "tcp@127.0.0.1:9003"]
    assert data["servers"][0]["services"] == ["Arith", "Calc"]
    assert data["servers"][1]["services"] is None
    assert 0 <= data["servers"][0]["age"] < 5


# -- watches ----------------------------------------------------------------------------


async def _index(http, url) -> int:
    _, headers, _ = await get(http, url)
    return int(headers[INDEX])


async def test_watch_wakes_on_registration_within_a_second(make_registry, http):
    registry = await make_registry()
    index = await _index(http, registry.url)
    watch = asyncio.create_task(get(http, registry.url, {"index": str(index), "wait": "20"}))
    # Parked with the current index, the watch can only end early by being woken (its
    # wait is 20 s); registering before it parked would answer it at once instead.
    await eventually(lambda: registry.watchers == 1, timeout=2)
    started = time.monotonic()
    await post(http, registry.url)
    status, headers, _ = await asyncio.wait_for(watch, 1.0)
    assert time.monotonic() - started < 1.0
    assert status == 200
    assert headers[SERVERS] == A
    assert int(headers[INDEX]) != index


async def test_watch_with_other_index_answers_at_once(make_registry, http):
    registry = await make_registry()
    index = await _index(http, registry.url)
    status, headers, _ = await asyncio.wait_for(get(http, registry.url, {"index": str(index + 1), "wait": "20"}), 2)
    assert status == 200
    assert int(headers[INDEX]) == index


async def test_watch_times_out_with_unchanged_list_and_ignores_refreshes(make_registry, http):
    registry = await make_registry()
    await post(http, registry.url)
    index = await _index(http, registry.url)
    watch = asyncio.create_task(get(http, registry.url, {"index": str(index), "wait": "0.5"}))
    for _ in range(3):
        await post(http, registry.url)  # heartbeat refreshes are not changes
    status, headers, _ = await asyncio.wait_for(watch, 3)
    assert (status, headers[SERVERS], int(headers[INDEX])) == (200, A, index)


async def test_watch_wakes_on_expiry(make_registry, http):
    registry = await make_registry(timeout=0.5)
    await post(http, registry.url)
    index = await _index(http, registry.url)
    started = time.monotonic()
    _, headers, _ = await asyncio.wait_for(get(http, registry.url, {"index": str(index), "wait": "20"}), 2)
    assert headers[SERVERS] == ""
    assert time.monotonic() - started < 1.5  # expiry at 0.5 s, well within a second after it


async def test_watch_wakes_on_deregistration(make_registry, http):
    registry = await make_registry()
    await post(http, registry.url)
    index = await _index(http, registry.url)
    watch = asyncio.create_task(get(http, registry.url, {"index": str(index), "wait": "20"}))
    async with http.delete(registry.url, headers={SERVER: A}):
        pass
    _, headers, _ = await asyncio.wait_for(watch, 1.0)
    assert headers[SERVERS] == ""


async def test_index_from_another_registry_run_is_answered_at_once(make_registry, http):
    first = await make_registry()
    old_index = await _index(http, first.url)
    second = await make_registry()
    status, headers, _ = await asyncio.wait_for(get(http, second.url, {"index": str(old_index), "wait": "20"}), 2)
    assert status == 200
    assert int(headers[INDEX]) != old_index


async def test_stop_answers_pending_watches(make_registry, http):
    registry = await make_registry()
    index = await _index(http, registry.url)
    watch = asyncio.create_task(get(http, registry.url, {"index": str(index), "wait": "30"}))
    await eventually(lambda: registry.watchers == 1)
    started = time.monotonic()
    await registry.stop()
    assert time.monotonic() - started < 2
    status, _, _ = await asyncio.wait_for(watch, 2)
    assert status == 200


async def test_watcher_that_hangs_up_frees_its_slot(make_registry):
    registry = await make_registry(max_watchers=1)
    async with aiohttp.ClientSession() as session:
        index = await _index(session, registry.url)
        watch = asyncio.create_task(get(session, registry.url, {"index": str(index), "wait": "30"}))
        await eventually(lambda: registry.watchers == 1)
        watch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await watch
    await eventually(lambda: registry.watchers == 0)


# -- bad input: always 4xx with a reason, never 500 -----------------------------------


@pytest.mark.parametrize(
    "headers, reason",
    [
        ({}, "missing X-Geerpc-Server"),
        ({SERVER: ""}, "missing X-Geerpc-Server"),
        ({SERVER: "garbage"}, "host:port"),
        ({SERVER: "tcp@host"}, "host:port"),
        ({SERVER: "tcp@host:99999"}, "port"),
        ({SERVER: "ftp@host:1"}, "unknown protocol"),
        ({SERVER: "tcp@a:1,tcp@b:2"}, "commas"),
        ({SERVER: "tcp@" + "a" * 300 + ":1"}, "256"),
        ({SERVER: A, SERVICES: ",".join(f"S{i}" for i in range(65))}, "too many services"),
        ({SERVER: A, SERVICES: "x" * 101}, "longer than"),
        ({SERVER: A, SERVICES: "Ar ith"}, "letters, digits"),
        ({SERVER: A, SERVICES: "Arith,,Calc"}, "empty service name"),
    ],
)
async def test_bad_post_is_400_with_reason(make_registry, http, headers, reason):
    registry = await make_registry()
    async with http.post(registry.url, headers=headers) as response:
        assert response.status == 400
        assert reason in await response.text()
    assert await listed(http, registry.url) == []


async def test_duplicate_server_header_is_400(make_registry, http):
    registry = await make_registry()
    async with http.post(registry.url, headers=[(SERVER, A), (SERVER, B)]) as response:
        assert response.status == 400
        assert "2 times" in await response.text()


@pytest.mark.parametrize(
    "params",
    [
        {"wait": "-1"},
        {"wait": "abc"},
        {"wait": "nan"},
        {"wait": "inf"},
        {"index": "-1"},
        {"index": "abc"},
        {"index": "1.5"},
        {"index": "9" * 40},
        {"index": ""},
        {"service": "Ar ith"},
        {"service": ""},
        {"service": "a,b"},
    ],
)
async def test_bad_query_is_400(make_registry, http, params):
    registry = await make_registry()
    status, _, body = await get(http, registry.url, params)
    assert status == 400
    assert body.strip()


async def test_repeated_query_parameter_is_400(make_registry, http):
    registry = await make_registry()
    async with http.get(registry.url + "?index=1&index=2") as response:
        assert response.status == 400


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS"])
async def test_unknown_method_is_405(make_registry, http, method):
    registry = await make_registry()
    async with http.request(method, registry.url, headers={SERVER: A}) as response:
        assert response.status == 405
        assert "GET" in response.headers["Allow"]


async def _raw(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(4096), 5)
    finally:
        writer.close()
        await writer.wait_closed()


def _port(url: str) -> int:
    return int(url.split(":")[2].split("/")[0])


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /_geerpc_/registry HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
        b"POST /_geerpc_/registry HTTP/1.1\r\nHost: x\r\nX-Geerpc-Server: " + b"a" * 10_000 + b"\r\n\r\n",
        b"GET /_geerpc_/registry HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
        b"GET /_geerpc_/registry?" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x00\xff\xfe garbage\r\n\r\n",
        b"BREW /_geerpc_/registry HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /_geerpc_/registry HTTP/1.1\r\nHost: x\r\nX-Geerpc-Server: tcp@\xff\xfe:1\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["huge-header", "huge-address", "too-many-headers", "huge-url", "garbage", "bad-method", "non-utf8"],
)
async def test_malformed_http_is_4xx_and_registry_keeps_serving(make_registry, http, request_bytes):
    registry = await make_registry()
    reply = await _raw(_port(registry.url), request_bytes)
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:200]
    assert await listed(http, registry.url) == []


async def test_full_registry_answers_503_but_lets_listed_servers_refresh(make_registry, http):
    registry = await make_registry(max_servers=2)
    assert (await post(http, registry.url, A))[0] == 200
    assert (await post(http, registry.url, B))[0] == 200
    status, headers, text = await post(http, registry.url, "tcp@127.0.0.1:9003")
    assert status == 503
    assert "full" in text
    assert "Retry-After" in headers
    assert (await post(http, registry.url, A))[0] == 200


async def test_too_many_watchers_is_429(make_registry, http):
    registry = await make_registry(max_watchers=2)
    index = await _index(http, registry.url)
    watches = [asyncio.create_task(get(http, registry.url, {"index": str(index), "wait": "30"})) for _ in range(2)]
    await eventually(lambda: registry.watchers == 2)
    status, headers, _ = await get(http, registry.url, {"index": str(index), "wait": "30"})
    assert status == 429
    assert "Retry-After" in headers
    await post(http, registry.url)  # a change releases the two watchers
    assert [w[0] for w in await asyncio.wait_for(asyncio.gather(*watches), 2)] == [200, 200]


# -- lifecycle ---------------------------------------------------------------------------


async def test_async_with_starts_on_a_free_port_and_stops():
    async with Registry() as registry:
        assert registry.url is not None
        url = registry.url
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectionError):
            async with session.get(url):
                pass


async def test_async_with_after_explicit_start_keeps_the_address():
    registry = Registry()
    url = await registry.start("127.0.0.1", 0)
    async with registry as same:
        assert same is registry
        assert registry.url == url
    await registry.stop()  # idempotent


async def test_start_twice_is_an_error(make_registry):
    registry = await make_registry()
    with pytest.raises(RuntimeError):
        await registry.start()


async def test_stop_without_start_is_fine():
    await Registry().stop()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_registry_process_prints_url_and_exits_0_on_signal(signum):
    process = RegistryProcess(timeout=300)
    try:
        url = await process.start()
        async with aiohttp.ClientSession() as session:
            async with session.post(url, headers={SERVER: A}) as response:
                assert response.status == 200
    finally:
        assert await process.stop(signum) == 0


async def test_expiry_follows_the_registry_clock_not_the_wall_clock(http):
    # The registry reads a monotonic clock; here a fake one shows expiry happens at
    # exactly `timeout` on that clock, whatever the wall clock does meanwhile.
    now = [1000.0]
    async with Registry(timeout=300, clock=lambda: now[0]) as registry:
        await post(http, registry.url)
        now[0] += 299.9
        assert await listed(http, registry.url) == [A]
        now[0] += 0.1
        assert await listed(http, registry.url) == []
