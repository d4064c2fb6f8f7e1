"""aiohttp's HTTP connections leave no reference cycle once lost (geerpc.httpconn).

The registry, its heartbeats and the discoveries' watches speak HTTP through aiohttp.
On Python 3.11 each lost connection's socket transport was a cycle of asyncio's own,
left for a full collection: a registry serving watches, or a process that makes
discoveries, gathered them for as long as none ran. These tests turn the collector
off, open and lose connections on both sides, and look for transports among what a
collection would free.
"""

from __future__ import annotations

import ssl

import pytest
import trustme
from _garbage import leaves_no_garbage, transports
from _registry_helpers import FakeClock
from conftest import eventually

from geerpc.httpconn import connector
from geerpc.registry import Heartbeat, Registry
from geerpc.xclient.registry_discovery import RegistryDiscovery


def _contexts(https: bool) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The registry's and the discovery's TLS contexts (None, None for plain HTTP)."""
    if not https:
        return None, None
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx


@pytest.mark.parametrize("https", [False, True], ids=["http", "https"])
async def test_a_discovery_and_the_registry_serving_its_watch_leave_no_cycle(https):
    # Over HTTPS, asyncio's TLS layer hands the protocols only the TLS transport, and
    # lets go of the socket's beneath it before they hear of the loss: both sides take
    # it at connection_made, to release it too.
    server_ctx, client_ctx = _contexts(https)
    registry = Registry(timeout=30)
    url = await registry.start("127.0.0.1", 0, ssl=server_ctx)
    try:
        async def watch_and_close() -> None:
            discovery = RegistryDiscovery(url, wait=0.05, ssl=client_ctx)
            try:
                await discovery.refresh()
                await discovery.get_all()  # starts the watch
                await eventually(lambda: registry.watchers == 1, what="the watch parked")
            finally:
                await discovery.close()
            # the registry's side goes once the closed discovery's connection is lost
            await eventually(lambda: not registry._runner.server.connections, what="the registry's side closed")

        await leaves_no_garbage(watch_and_close, transports)
    finally:
        await registry.stop()


async def test_a_heartbeat_whose_connection_the_registry_closes_leaves_no_cycle():
    # The registry closes an idle connection after keepalive_timeout; the heartbeat's
    # next beat opens a new one. Each lost one, on either side, must be freed.
    clock = FakeClock()
    async with Registry(timeout=30, keepalive_timeout=0.05) as registry:
        assert registry.url is not None
        beat = Heartbeat(registry.url, "tcp@127.0.0.1:9001", period=1, **clock.kwargs)
        beat.start()
        try:
            assert await beat.wait_first()

            async def lose_and_beat() -> None:
                await clock.sleeping()  # the beat is done
                await eventually(lambda: not registry._runner.server.connections, what="the idle connection closed")
                beats = registry.counts.heartbeats
                await clock.wake()
                await eventually(lambda: registry.counts.heartbeats > beats, what="the next beat")

            await leaves_no_garbage(lose_and_beat, transports)
        finally:
            await beat.stop()


async def test_the_connector_keeps_aiohttps_protocol_hook():
    # connector() reaches into aiohttp's TCPConnector for its protocol factory. Should
    # an aiohttp release rename it, this fails here, not only as a cycle in a soak.
    made = connector(True)
    try:
        factory = made._factory
        assert factory.func.__module__ == "geerpc.httpconn"
    finally:
        await made.close()


@pytest.mark.parametrize("closed", ["after the reply", "when idle"])
async def test_requests_still_work_through_the_released_protocols(closed):
    # The wrapped protocols change nothing but the release: requests, each on a
    # connection the registry then closes, are all answered.
    import aiohttp

    async with Registry(timeout=30, keepalive_timeout=0.05) as registry:
        assert registry.url is not None
        async with aiohttp.ClientSession(connector=connector(True)) as session:
            for _ in range(5):
                headers = {"Accept": "application/json"}
                if closed == "after the reply":
                    headers["Connection"] = "close"
                async with session.get(registry.url, headers=headers) as response:
                    assert response.status == 200
                    assert (await response.json())["servers"] == []
                await eventually(lambda: not registry._runner.server.connections, what="the connection closed")
