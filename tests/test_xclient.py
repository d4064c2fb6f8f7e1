"""XClient over real servers on loopback: selection, failover, broadcast, discovery."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket

import pytest

import geerpc
from conftest import PYTHON, ROOT, eventually, subprocess_env
from geerpc.registry import Registry
from geerpc.xclient import MultiServerDiscovery, RegistryDiscovery, SelectMode, XClient


class Node:
    """Tells which server answered, and can be told to fail or hang."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def whoami(self):
        self.calls += 1
        return self.name

    async def fail(self):
        self.calls += 1
        raise ValueError(f"{self.name} failed")

    async def hang(self):
        self.started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def sleep(self, seconds):
        self.started.set()
        await asyncio.sleep(seconds)
        return self.name


@pytest.fixture
async def nodes():
    servers: list[geerpc.Server] = []
    instances: list[Node] = []

    async def make(count: int, registry: str | None = None, name: str = "Node") -> list[Node]:
        made = []
        for _ in range(count):
            node = Node(f"n{len(instances)}")
            server = geerpc.Server()
            server.register(node, name=name)
            await server.start("127.0.0.1", 0, registry=registry)
            node.address = server.address  # type: ignore[attr-defined]
            node.server = server  # type: ignore[attr-defined]
            servers.append(server)
            instances.append(node)
            made.append(node)
        return made

    yield make
    for server in servers:
        await server.stop(grace=0.5)


@pytest.fixture
async def registry():
    reg = Registry(timeout=30)
    await reg.start("127.0.0.1", 0)
    yield reg
    await reg.stop()


def dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp@127.0.0.1:{sock.getsockname()[1]}"


async def test_round_robin_order_is_exact(nodes):
    made = await nodes(3)
    async with XClient(MultiServerDiscovery([n.address for n in made]), SelectMode.ROUND_ROBIN) as xc:
        seen = [await xc.call("Node.whoami", timeout=2) for _ in range(9)]
    order = seen[:3]
    assert sorted(order) == ["n0", "n1", "n2"]
    assert seen == order * 3


async def test_random_is_roughly_even(nodes):
    made = await nodes(3)
    async with XClient(MultiServerDiscovery([n.address for n in made]), SelectMode.RANDOM) as xc:
        counts = collections.Counter([await xc.call("Node.whoami", timeout=2) for _ in range(600)])
    assert set(counts) == {"n0", "n1", "n2"}
    assert all(130 <= c <= 270 for c in counts.values()), counts


async def test_one_connection_per_server_even_for_concurrent_first_calls(nodes):
    (node,) = await nodes(1)
    async with XClient([node.address]) as xc:
        await asyncio.gather(*(xc.call("Node.whoami", timeout=2) for _ in range(50)))
        assert len(xc._clients) == 1
        assert len(node.server.snapshot().connections) == 1


async def test_no_server_available(nodes):
    async with XClient(MultiServerDiscovery([])) as xc:
        with pytest.raises(geerpc.NoServerAvailable):
            await xc.call("Node.whoami", timeout=1)
        with pytest.raises(geerpc.NoServerAvailable):
            await xc.broadcast("Node.whoami", timeout=1)


async def test_failover_past_a_refusing_server(nodes):
    (node,) = await nodes(1)
    dead = dead_address()
    async with XClient([dead, node.address], SelectMode.ROUND_ROBIN) as xc:
        for _ in range(4):  # whichever comes first, every call lands on the live one
            assert await xc.call("Node.whoami", timeout=2) == "n0"
    async with XClient([dead, node.address], SelectMode.ROUND_ROBIN, failover=False) as xc:
        results = []
        for _ in range(2):
            try:
                results.append(await xc.call("Node.whoami", timeout=2))
            except geerpc.ConnectError:
                results.append("refused")
        assert sorted(results) == ["n0", "refused"]


async def test_failover_when_a_server_process_is_killed(nodes):
    (node,) = await nodes(1)
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(ROOT / "tests" / "serve_arith.py"), stdout=asyncio.subprocess.PIPE, env=subprocess_env())
    try:
        assert proc.stdout is not None
        victim = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        # the live node also serves "Arith" so failover has somewhere to go
        node.server.register(_Arith(), name="Arith")
        async with XClient([victim, node.address], SelectMode.ROUND_ROBIN) as xc:
            answered = {await xc.call("Arith.add", 1, i, timeout=2) for i in range(4)}
            assert answered == {1, 2, 3, 4}
            assert victim in xc._clients  # a connection to the victim is open
            proc.kill()
            await proc.wait()
            for i in range(6):  # calls keep succeeding on the survivor
                assert await xc.call("Arith.add", 1, i, timeout=2) == 1 + i
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class _Arith:
    async def add(self, a, b):
        return a + b


async def test_no_retry_after_remote_error_or_timeout(nodes):
    made = await nodes(2)
    async with XClient([n.address for n in made], SelectMode.ROUND_ROBIN) as xc:
        with pytest.raises(geerpc.RemoteError, match="failed"):
            await xc.call("Node.fail", timeout=2)
        assert sum(n.calls for n in made) == 1
        with pytest.raises(geerpc.CallTimeout):
            await xc.call("Node.hang", timeout=0.1)
        assert sum(n.started.is_set() for n in made) == 1


async def test_broadcast_returns_a_reply_from_every_server(nodes):
    made = await nodes(3)
    async with XClient([n.address for n in made]) as xc:
        assert await xc.broadcast("Node.whoami", timeout=2) in {"n0", "n1", "n2"}
    assert [n.calls for n in made] == [1, 1, 1]


async def test_broadcast_first_error_cancels_the_rest(nodes):
    made = await nodes(3)
    failing = await nodes(1, name="Other")
    failing[0].server.register(_Failing(), name="Node")  # its Node.hang fails at once
    async with XClient([n.address for n in made + failing]) as xc:
        before = len(asyncio.all_tasks())
        with pytest.raises(geerpc.RemoteError, match="boom"):
            await xc.broadcast("Node.hang", timeout=5)
        async with asyncio.timeout(2):  # the cancellation reached each hanging server
            for node in made:
                await node.cancelled.wait()
        assert len(asyncio.all_tasks()) <= before


class _Failing:
    async def hang(self):
        raise RuntimeError("boom")


async def test_broadcast_timeout_bounds_the_whole_call(nodes):
    made = await nodes(3)
    async with XClient([n.address for n in made]) as xc:
        await xc.broadcast("Node.whoami", timeout=2)  # connections are up
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(geerpc.CallTimeout):
            await xc.broadcast("Node.hang", timeout=0.2)
        assert loop.time() - start < 1.0
        async with asyncio.timeout(2):
            for node in made:
                await node.cancelled.wait()


async def test_registry_discovery_end_to_end_and_deregistration(nodes, registry):
    made = await nodes(3, registry=registry.url)
    discovery = RegistryDiscovery(registry.url, update_interval=10)
    async with XClient(discovery, SelectMode.ROUND_ROBIN) as xc:
        assert sorted(await discovery.get_all()) == sorted(n.address for n in made)
        assert {await xc.call("Node.whoami", timeout=2) for _ in range(3)} == {"n0", "n1", "n2"}
        stopped = made[0]
        await stopped.server.stop()
        # deregistered at once; the watch brings the change within a second
        await eventually(lambda: stopped.address not in discovery.services(), timeout=2)
        assert {await xc.call("Node.whoami", timeout=2) for _ in range(6)} == {"n1", "n2"}
        await eventually(lambda: stopped.address not in xc._clients, timeout=2)


async def test_selection_by_service(nodes, registry):
    arith_nodes = await nodes(2, registry=registry.url, name="Arith")
    other = await nodes(1, registry=registry.url, name="Other")
    async with XClient(RegistryDiscovery(registry.url), SelectMode.ROUND_ROBIN) as xc:
        for _ in range(6):
            assert await xc.call("Arith.whoami", timeout=2) in {n.name for n in arith_nodes}
        assert await xc.call("Other.whoami", timeout=2) == other[0].name
        assert await xc.broadcast("Other.whoami", timeout=2) == other[0].name
    assert other[0].calls == 2


async def test_xclient_over_a_registry_listing_1000_servers(nodes, registry):
    import aiohttp

    (live,) = await nodes(1, registry=registry.url, name="Arith")
    async with aiohttp.ClientSession() as http:
        for i in range(999):
            async with http.post(registry.url, headers={"X-Geerpc-Server": f"tcp@127.0.0.1:{20000 + i}",
                                                        "X-Geerpc-Services": "Other"}) as response:
                assert response.status == 200
    async with XClient(registry.url, SelectMode.RANDOM) as xc:
        assert len(await xc.discovery.get_all()) == 1000
        for _ in range(20):
            assert await xc.call("Arith.whoami", timeout=2) == live.name


async def test_a_connection_whose_calls_keep_timing_out_is_dialed_afresh(nodes):
    (node,) = await nodes(1)
    server = node.server
    async with XClient([node.address]) as xc:
        for _ in range(2):
            with pytest.raises(geerpc.CallTimeout):
                await xc.call("Node.hang", timeout=0.05)
        assert len(server.snapshot().connections) == 1  # two in a row: kept
        assert await xc.call("Node.whoami", timeout=2) == "n0"  # an answer resets the count
        for _ in range(2):
            with pytest.raises(geerpc.CallTimeout):
                await xc.call("Node.hang", timeout=0.05)
        assert len(server.snapshot().connections) == 1
        with pytest.raises(geerpc.CallTimeout):
            await xc.call("Node.hang", timeout=0.05)
        await eventually(lambda: not server.snapshot().connections, what="the stuck connection closed")
        assert await xc.call("Node.whoami", timeout=2) == "n0"  # on a new connection
        assert len(server.snapshot().connections) == 1
