"""Shared fixtures: services to serve, a server on 127.0.0.1 port 0, a client to it;
and ``eventually``, the one way tests wait for something that happens elsewhere."""

from __future__ import annotations

import asyncio
import inspect
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import geerpc

ROOT = Path(__file__).resolve().parent.parent


async def eventually(condition: Callable[[], Any | Awaitable[Any]], timeout: float = 5.0,
                     what: str = "condition", *, interval: float = 0.01) -> float:
    """Poll ``condition`` (a plain or an async callable) until it returns something true.

    Returns the seconds it took. Raises AssertionError naming ``what`` if it is still
    false after ``timeout`` seconds. Tests never sleep to wait for readiness: they wait
    on an event, or poll with a deadline through this.
    """
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(interval)


def eventually_sync(condition: Callable[[], Any], timeout: float = 5.0, what: str = "condition", *,
                    interval: float = 0.01) -> float:
    """``eventually`` for a thread without an event loop (state another thread changes)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(interval)
    return time.monotonic() - start


class Arith:
    """The service most tests call."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.calls = 0

    async def add(self, a, b):
        self.calls += 1
        return a + b

    def mul(self, a, b):
        return a * b

    async def sleep(self, seconds):
        self.started.set()
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return seconds

    def block(self, seconds):
        time.sleep(seconds)
        return seconds

    async def echo(self, value):
        return value

    async def fail(self, message):
        raise ValueError(message)

    def _secret(self):
        return "secret"


@pytest.fixture
async def browser():
    """A headless Chromium; skipped without one, unless GEERPC_REQUIRE_BROWSER=1."""
    from browser import Browser, find_chromium

    executable = find_chromium()
    if executable is None:
        if os.environ.get("GEERPC_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (GEERPC_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("chromium is not installed")
    b = Browser(executable)
    try:
        await b.start()
        yield b
    finally:
        await b.close()


@pytest.fixture
async def registry():
    """A registry on 127.0.0.1, a free port, with GeeRPC's 5-minute timeout."""
    from geerpc.registry import Registry

    async with Registry(timeout=300) as reg:
        yield reg


@pytest.fixture
async def make_registry():
    """Starts registries (``Registry`` options, GeeRPC's 5-minute timeout by default)
    on 127.0.0.1, a free port, and stops every one afterwards."""
    from geerpc.registry import Registry

    started: list[Registry] = []

    async def make(timeout: float = 300.0, **options) -> Registry:
        registry = Registry(timeout, **options)
        await registry.start("127.0.0.1", 0)
        started.append(registry)
        return registry

    yield make
    for registry in started:
        await registry.stop()


@pytest.fixture
async def geerpc_like():
    """A registry that speaks only GeeRPC's two headers, as the Go original does."""
    from _registry_helpers import GeeRPCLikeRegistry

    fake = GeeRPCLikeRegistry()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def discoveries():
    """Makes RegistryDiscovery objects and closes every one of them afterwards."""
    from geerpc.xclient.registry_discovery import RegistryDiscovery

    made: list[RegistryDiscovery] = []

    def make(url: str, *args, **kwargs) -> RegistryDiscovery:
        discovery = RegistryDiscovery(url, *args, **kwargs)
        made.append(discovery)
        return discovery

    yield make
    for discovery in made:
        await discovery.close()


@pytest.fixture
def arith() -> Arith:
    return Arith()


@pytest.fixture
async def server(arith: Arith) -> AsyncIterator[geerpc.Server]:
    srv = geerpc.Server()
    srv.register(arith)
    await srv.start("127.0.0.1", 0)
    yield srv
    await srv.stop(grace=1.0)


@pytest.fixture
async def client(server: geerpc.Server) -> AsyncIterator[geerpc.Client]:
    assert server.address is not None
    c = await geerpc.dial(server.address, connect_timeout=5)
    yield c
    await c.close()


def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes that import geerpc from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable
