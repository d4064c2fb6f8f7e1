"""The registry's ``/metrics``, scraped from a real registry on 127.0.0.1 and parsed
with prometheus_client's own parser. The registry runs on a fake clock, so expiry
happens when a test moves it; heartbeats run on fake clocks of their own, so each
beats again only when the test says."""

from __future__ import annotations

import asyncio

import aiohttp
import prometheus_client
import pytest
from _registry_helpers import FakeClock
from conftest import eventually
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from geerpc.registry import Heartbeat, Registry

A = "tcp@127.0.0.1:9001"
B = "tcp@127.0.0.1:9002"
TIMEOUT = 300.0


class Now:
    """The registry's clock: it moves only when a test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def beats():
    """Starts heartbeats, each on its own fake clock, and stops every one afterwards."""
    started: list[Heartbeat] = []

    async def make(url: str, address: str, **kwargs) -> tuple[Heartbeat, FakeClock]:
        clock = FakeClock()
        beat = Heartbeat(url, address, **clock.kwargs, **kwargs)
        beat.start()
        started.append(beat)
        assert await beat.wait_first()
        return beat, clock

    yield make
    for beat in started:
        await beat.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


def metrics_url(registry: Registry) -> str:
    assert registry.url is not None
    return str(URL(registry.url).with_path("/metrics"))


async def scrape(http: aiohttp.ClientSession, registry: Registry) -> dict[tuple[str, str], float]:
    """Every sample of the registry's /metrics, keyed by name and its ``code`` label."""
    async with http.get(metrics_url(registry)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
        text = await response.text()
    samples: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, sample.labels.get("code", "")] = sample.value
    return samples


def value(samples: dict[tuple[str, str], float], name: str, code: str = "") -> float:
    return samples[name, code]


async def park_watch(http: aiohttp.ClientSession, registry: Registry) -> asyncio.Task[int]:
    """A watch parked on the registry's current index; its task returns the status."""
    assert registry.url is not None
    index = registry.table.index

    async def watch() -> int:
        async with http.get(registry.url, params={"index": str(index), "wait": "30"}) as response:
            return response.status

    task = asyncio.create_task(watch())
    await eventually(lambda: registry.watchers == 1, what="the watch parked")
    return task


async def test_metrics_count_servers_heartbeats_watchers_and_expiry(make_registry, beats, http):
    now = Now()
    registry = await make_registry(clock=now)
    await beats(registry.url, A, services=["Arith"])
    _, clock_b = await beats(registry.url, B)
    watch = await park_watch(http, registry)

    samples = await scrape(http, registry)
    assert value(samples, "geerpc_registry_servers") == 2
    assert value(samples, "geerpc_registry_heartbeats_total") == 2
    assert value(samples, "geerpc_registry_watchers") == 1
    assert value(samples, "geerpc_registry_expirations_total") == 0
    assert value(samples, "geerpc_registry_max_watchers") == registry.max_watchers
    assert value(samples, "geerpc_registry_max_servers") == registry.table.max_servers

    # B beats again 200 s on; at 300 s A has been silent for the whole timeout.
    now.now += 200
    await clock_b.wake()
    await clock_b.sleeping()  # its beat is done, and it waits for the next one
    now.now += 100
    samples = await scrape(http, registry)
    assert value(samples, "geerpc_registry_servers") == 1
    assert value(samples, "geerpc_registry_heartbeats_total") == 3
    assert value(samples, "geerpc_registry_expirations_total") == 1
    assert await asyncio.wait_for(watch, 5) == 200  # the expiry was a change: the watch answered
    assert value(await scrape(http, registry), "geerpc_registry_watchers") == 0


async def test_metrics_count_deregistrations_and_refusals(make_registry, beats, http):
    registry = await make_registry()
    beat, _ = await beats(registry.url, A)
    await beat.stop()  # deregisters with a DELETE
    async with http.delete(registry.url, headers={"X-Geerpc-Server": A}) as response:
        assert response.status == 404  # not registered any more
    async with http.post(registry.url) as response:
        assert response.status == 400  # no X-Geerpc-Server
    samples = await scrape(http, registry)
    assert value(samples, "geerpc_registry_servers") == 0
    assert value(samples, "geerpc_registry_heartbeats_total") == 1
    assert value(samples, "geerpc_registry_deregistrations_total") == 1
    assert value(samples, "geerpc_registry_refused_total", "400") == 1
    assert value(samples, "geerpc_registry_refused_total", "404") == 1
    assert value(samples, "geerpc_registry_refused_total", "429") == 0  # listed before it first happens
    assert value(samples, "geerpc_registry_refused_total", "503") == 0


async def test_metrics_answer_head_and_leave_the_dashboard_and_the_path_alone(make_registry, http):
    registry = await make_registry()
    async with http.head(metrics_url(registry)) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == prometheus_client.CONTENT_TYPE_LATEST
        assert await response.read() == b""
    async with http.get(str(URL(registry.url).with_path("/"))) as response:
        assert response.status == 200
        assert "<html" in (await response.text()).lower()
    async with http.get(registry.url) as response:
        assert response.status == 200
        assert response.headers["X-Geerpc-Servers"] == ""


async def test_metrics_are_not_held_back_by_the_watch_limit(make_registry, http):
    registry = await make_registry(max_watchers=1)
    watch = await park_watch(http, registry)
    assert value(await scrape(http, registry), "geerpc_registry_watchers") == 1
    await registry.stop()  # answers the watch
    assert await asyncio.wait_for(watch, 5) == 200


async def test_two_registries_in_one_process_keep_separate_counts(make_registry, beats, http):
    first = await make_registry()
    second = await make_registry()
    await beats(first.url, A)
    await beats(first.url, B)
    await beats(second.url, A)
    one, two = await scrape(http, first), await scrape(http, second)
    assert (value(one, "geerpc_registry_servers"), value(one, "geerpc_registry_heartbeats_total")) == (2, 2)
    assert (value(two, "geerpc_registry_servers"), value(two, "geerpc_registry_heartbeats_total")) == (1, 1)
    # Each registry has its own CollectorRegistry: the library's global one knows none of them.
    assert prometheus_client.REGISTRY.get_sample_value("geerpc_registry_servers") is None
    assert first.metrics.registry is not second.metrics.registry


def test_the_metrics_path_cannot_be_the_registry_path():
    with pytest.raises(ValueError, match="metrics"):
        Registry(path="/metrics")
