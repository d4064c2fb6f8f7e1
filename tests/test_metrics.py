"""The server's ``/metrics`` on its RPC port, scraped with aiohttp from a real server on
127.0.0.1 and parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

import geerpc


class Shop:
    def __init__(self) -> None:
        self.parked = asyncio.Event()
        self.release = asyncio.Event()

    async def ok(self, x):
        await asyncio.sleep(0)
        return x

    async def boom(self):
        await asyncio.sleep(0)
        raise ValueError("boom")

    async def slow(self):
        await asyncio.sleep(5)

    async def deny(self):
        await asyncio.sleep(0)
        raise geerpc.PermissionDenied("no")

    async def park(self):
        self.parked.set()
        await self.release.wait()


def url(server: geerpc.Server) -> str:
    assert server.address is not None
    return f"http://{server.address.removeprefix('tcp@')}/metrics"


async def scrape(http: aiohttp.ClientSession, server: geerpc.Server) -> dict[tuple[str, tuple], float]:
    async with http.get(url(server)) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=")
        text = await reply.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def calls(samples, method: str, code: str) -> float:
    return samples[("geerpc_server_calls_total", (("code", code), ("method", method), ("service", "Shop")))]


@pytest.fixture
async def served():
    servers: list[geerpc.Server] = []

    async def make() -> tuple[geerpc.Server, Shop]:
        server, shop = geerpc.Server(), Shop()
        server.register(shop)
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server, shop

    async with aiohttp.ClientSession() as http:
        yield make, http
    for server in servers:
        await server.stop(grace=0)


async def test_counts_per_code_and_the_duration_histogram(served):
    make, http = served
    server, _ = await make()
    async with await geerpc.dial(server.address) as client:
        for i in range(3):
            assert await client.call("Shop.ok", i) == i
        with pytest.raises(geerpc.RemoteError):
            await client.call("Shop.boom")
        with pytest.raises(geerpc.CallTimeout):
            await client.call("Shop.slow", timeout=0.05)
        with pytest.raises(geerpc.InvalidArguments):
            await client.call("Shop.ok", 1, 2)
        with pytest.raises(geerpc.PermissionDenied):
            await client.call("Shop.deny")
        await asyncio.sleep(0)
        samples = await scrape(http, server)
    assert calls(samples, "ok", "OK") == 3 and calls(samples, "ok", "INVALID_ARGUMENT") == 1
    assert calls(samples, "boom", "APPLICATION") == 1 and calls(samples, "boom", "OK") == 0
    assert calls(samples, "deny", "PERMISSION_DENIED") == 1
    assert calls(samples, "slow", "TIMEOUT") == 1
    labels = (("method", "ok"), ("service", "Shop"))
    assert samples[("geerpc_server_call_duration_seconds_count", labels)] == 4
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in samples.items()
                     if k[0] == "geerpc_server_call_duration_seconds_bucket"
                     and dict(k[1])["method"] == "ok")
    assert [v for _, v in buckets] == sorted(v for _, v in buckets) and buckets[-1] == (float("inf"), 4)
    assert len(buckets) == len(geerpc.service.DURATION_BUCKETS) + 1
    assert samples[("geerpc_server_protocol_errors_total", ())] == 0


async def test_in_flight_and_connections_gauges(served):
    make, http = served
    server, shop = await make()
    async with await geerpc.dial(server.address) as one, await geerpc.dial(server.address) as two:
        await one.call("Shop.ok", 1)
        await two.call("Shop.ok", 1)
        call = asyncio.ensure_future(one.call("Shop.park"))
        await asyncio.wait_for(shop.parked.wait(), 5)
        samples = await scrape(http, server)
        assert samples[("geerpc_server_calls_in_flight", ())] == 1
        assert samples[("geerpc_server_connections", ())] == 3  # two clients and the scrape
        shop.release.set()
        await call
        assert (await scrape(http, server))[("geerpc_server_calls_in_flight", ())] == 0


async def test_two_servers_keep_separate_numbers(served):
    make, http = served
    (a, _), (b, _) = await make(), await make()
    async with await geerpc.dial(a.address) as client:
        await client.call("Shop.ok", 1)
    assert calls(await scrape(http, a), "ok", "OK") == 1
    assert calls(await scrape(http, b), "ok", "OK") == 0


async def test_head_gives_the_headers_only_and_the_debug_page_still_works(served):
    make, http = served
    server, _ = await make()
    async with http.head(url(server)) as reply:
        assert reply.status == 200 and int(reply.headers["Content-Length"]) > 0
        assert await reply.read() == b""
    async with http.get(url(server).replace("/metrics", "/debug/geerpc")) as reply:
        assert reply.status == 200 and "Shop" in await reply.text()
