"""The registry's endpoint: how it reads GET requests (Accept, wait, service) and what it keeps."""

from __future__ import annotations

import asyncio
import json
import math
import time

import aiohttp
import pytest
from conftest import eventually

from geerpc.registry import LivenessTable, Registry
from geerpc.registry.render import FILTERED_CACHE

A = "tcp@127.0.0.1:9001"
B = "tcp@127.0.0.1:9002"


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def _post(http: aiohttp.ClientSession, url: str, address: str, services: str | None = None) -> None:
    headers = {"X-Geerpc-Server": address}
    if services is not None:
        headers["X-Geerpc-Services"] = services
    async with http.post(url, headers=headers) as response:
        assert response.status == 200


async def _get(http: aiohttp.ClientSession, url: str, **params: str) -> tuple[int, str, float]:
    started = time.monotonic()
    async with http.get(url, params=params) as response:
        await response.read()
        return response.status, response.headers.get("X-Geerpc-Servers", ""), time.monotonic() - started


# -- the X-Geerpc-Servers cache ----------------------------------------------------------


async def test_distinct_service_filters_do_not_grow_the_header_cache(http):
    async with Registry(timeout=0) as registry:
        await _post(http, registry.url, A)  # declares no services: offers every one
        for i in range(3 * FILTERED_CACHE):
            status, servers, _ = await _get(http, registry.url, service=f"S{i}")
            assert (status, servers) == (200, A)
        assert registry.lists.cached_filters == FILTERED_CACHE


async def test_cached_filtered_lists_follow_changes(http):
    async with Registry(timeout=0) as registry:
        await _post(http, registry.url, A, "Arith")
        await _post(http, registry.url, B, "Calc")
        for _ in range(2):  # the second round is served from the cache
            assert (await _get(http, registry.url, service="Arith"))[1] == A
            assert (await _get(http, registry.url))[1] == f"{A},{B}"
        await _post(http, registry.url, B, "Arith,Calc")  # a change of services moves the index
        assert (await _get(http, registry.url, service="Arith"))[1] == f"{A},{B}"
        assert (await _get(http, registry.url, service="Calc"))[1] == B


# -- wait and max_wait -------------------------------------------------------------------


async def _index(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        return response.headers["X-Geerpc-Index"]


@pytest.mark.parametrize("wait", ["5", "301", "1e9", "400s"])
async def test_wait_above_max_wait_is_answered_after_max_wait(http, wait):
    async with Registry(max_wait=0.2) as registry:
        status, _, took = await _get(http, registry.url, index=await _index(http, registry.url), wait=wait)
        assert status == 200
        assert 0.15 < took < 2.0


async def test_watch_without_wait_is_bounded_by_max_wait(http):
    async with Registry(max_wait=0.2) as registry:
        status, _, took = await _get(http, registry.url, index=await _index(http, registry.url))
        assert status == 200
        assert 0.15 < took < 2.0


@pytest.mark.parametrize("max_wait", [-1.0, 0.0, 0.01, math.nan, math.inf])
def test_bad_max_wait_is_rejected(max_wait):
    with pytest.raises(ValueError, match="max_wait"):
        Registry(max_wait=max_wait)


# -- timeout -----------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", [math.inf, -math.inf, math.nan, -1.0])
def test_timeout_must_be_finite_and_not_negative(timeout):
    with pytest.raises(ValueError, match="timeout"):
        Registry(timeout)
    with pytest.raises(ValueError, match="timeout"):
        LivenessTable(timeout)


# -- Accept ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "accept, expected",
    [
        ("application/json", True),
        ("Application/JSON", True),
        ("APPLICATION/JSON; q=0.5", True),
        ("text/html;q=0.5, Application/Json", True),
        ("application/json;q=0", False),
        ("application/json-seq", False),
        ("*/*", False),
        ("", False),
    ],
)
def test_accepts_json(accept, expected):
    from geerpc.registry.dashboard import accepts_json

    assert accepts_json(accept) is expected


@pytest.mark.parametrize("accept", ["Application/JSON", "APPLICATION/JSON", "text/html;q=0.5, Application/Json"])
async def test_json_is_chosen_whatever_the_case_of_the_media_type(http, accept):
    async with Registry() as registry:
        await _post(http, registry.url, A)
        async with http.get(registry.url, headers={"Accept": accept}) as response:
            assert response.content_type == "application/json"
            data = json.loads(await response.read())
    assert [s["address"] for s in data["servers"]] == [A]


async def test_watch_parked_then_released_by_stop(http):
    # A watch bounded by max_wait still ends at once when the registry stops.
    registry = Registry()
    await registry.start()
    try:
        watch = asyncio.create_task(_get(http, registry.url or "", index=await _index(http, registry.url or "")))
        await eventually(lambda: registry.watchers == 1)
    finally:
        await registry.stop()
    status, _, took = await asyncio.wait_for(watch, 2)
    assert status == 200 and took < 2
