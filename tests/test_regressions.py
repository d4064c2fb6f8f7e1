"""Races and corner cases found in review: each test failed before its fix.

Waiting is done on events or by polling a condition with a deadline (``eventually``).
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from conftest import eventually

import geerpc
from geerpc import protocol as p
from geerpc.registry.heartbeat import Heartbeat
from geerpc.xclient import XClient


class Svc:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.release = asyncio.Event()

    async def wait(self):
        self.started.append("wait")
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled.append("wait")
            raise
        return "released"

    async def add(self, a, b):
        await asyncio.sleep(0)  # a real suspension: runs as a task, not inline
        return a + b


@pytest.fixture
async def serve():
    servers: list[geerpc.Server] = []

    async def make(**limits) -> tuple[geerpc.Server, Svc]:
        server = geerpc.Server(**limits)
        svc = Svc()
        server.register(svc)
        await server.start("127.0.0.1", 0)
        servers.append(server)
        return server, svc

    yield make
    for server in servers:
        await server.stop(grace=0.1)


async def raw_open(server: geerpc.Server, *frames: bytes):
    host, port = server.address[4:].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(p.encode_option(p.Option()) + b"".join(frames))
    await reader.readline()  # the server's Option: the handshake is done
    return reader, writer


class SilentPeer:
    """A listener that accepts and never reads: a server that stopped reading, or a dead registry."""

    def __init__(self, answer_option: bool = False) -> None:
        self.peers: list[asyncio.StreamWriter] = []
        self.answer_option = answer_option

    async def __aenter__(self) -> str:
        async def handle(reader, writer):
            self.peers.append(writer)
            if self.answer_option:
                await reader.readline()
                writer.write(p.encode_option(p.Option(max_frame_size=p.DEFAULT_MAX_FRAME_SIZE)))
                writer.transport.pause_reading()

        self.listener = await asyncio.start_server(handle, "127.0.0.1", 0)
        return f"127.0.0.1:{self.listener.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc_info) -> None:
        for writer in self.peers:
            writer.transport.abort()
        self.listener.close()
        await self.listener.wait_closed()


async def test_calls_cancelled_before_they_start_free_their_slots(serve):
    server, _ = await serve(max_in_flight=8)
    async with await geerpc.dial(server.address) as client:
        for _ in range(40):  # each Cancel lands in the same read as its Request
            task = asyncio.ensure_future(client.call("Svc.add", 1, 2))
            await asyncio.sleep(0)  # let the request be written, then give up on it
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await eventually(lambda: server.snapshot().calls_in_flight == 0, what="no call left in flight")
        assert await client.call("Svc.add", 1, 2, timeout=2) == 3


async def test_cancel_gets_through_at_max_in_flight(serve):
    server, svc = await serve(max_in_flight=1)
    async with await geerpc.dial(server.address) as client:
        stuck = asyncio.ensure_future(client.call("Svc.wait"))
        await eventually(lambda: svc.started == ["wait"])
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)
        await eventually(lambda: svc.cancelled == ["wait"])
        assert await client.call("Svc.add", 1, 2, timeout=2) == 3


async def test_nothing_starts_on_a_connection_after_it_is_lost(serve):
    server, svc = await serve(max_in_flight=1)
    reader, writer = await raw_open(server, *(p.encode_request(i, "Svc.wait", [], {}, None) for i in (1, 2, 3)))
    await eventually(lambda: svc.started == ["wait"])  # 1 runs, 2 and 3 are held
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()  # RST
    await eventually(lambda: not server.snapshot().connections and svc.cancelled == ["wait"])
    assert svc.started == ["wait"]  # the held requests were dropped, not started


async def test_eof_cancels_calls_even_at_max_in_flight(serve):
    server, svc = await serve(max_in_flight=1)
    reader, writer = await raw_open(server, *(p.encode_request(i, "Svc.wait", [], {}, None) for i in (1, 2)))
    await eventually(lambda: svc.started == ["wait"])
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: svc.cancelled == ["wait"] and not server.snapshot().connections)


async def test_graceful_stop_waits_even_after_an_earlier_disconnect(serve):
    server, svc = await serve()
    first = await geerpc.dial(server.address)
    await first.close()  # a connection closing while idle must not pre-set "drained"
    await eventually(lambda: not server.snapshot().connections)
    async with await geerpc.dial(server.address) as client:
        call = asyncio.ensure_future(client.call("Svc.wait"))
        await eventually(lambda: svc.started == ["wait"])
        stopping = asyncio.ensure_future(server.stop(grace=5))
        with pytest.raises(geerpc.Unavailable, match="stopping"):  # the stop has begun
            await client.call("Svc.add", 1, 2, timeout=2)
        # A stop that does not wait cancels the call within milliseconds; this one
        # waits up to its 5 s grace. Returns at once if either ends.
        done, _ = await asyncio.wait([call, stopping], timeout=0.3, return_when=asyncio.FIRST_COMPLETED)
        assert not done and svc.cancelled == []
        svc.release.set()
        assert await call == "released"
        async with asyncio.timeout(2):
            await stopping


async def test_call_timeout_holds_while_the_server_does_not_read():
    async with SilentPeer(answer_option=True) as address:
        async with await geerpc.dial(f"tcp@{address}") as client:
            fillers = [asyncio.ensure_future(client.call("Svc.put", b"x" * 2**21)) for _ in range(4)]
            await eventually(lambda: not client._conn.writable.is_set())
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(geerpc.CallTimeout, match="not reading"):
                await client.call("Svc.put", b"small", timeout=0.3)
            assert loop.time() - start < 1.5
            # waiting callers do not add to the backlog
            more = [asyncio.ensure_future(client.call("Svc.put", b"x" * 2**21)) for _ in range(10)]
            await asyncio.sleep(0)
            assert client._conn.transport.get_write_buffer_size() < 8 * 2**20
            for task in fillers + more:
                task.cancel()
            await asyncio.gather(*fillers, *more, return_exceptions=True)


async def test_stop_during_start_leaves_nothing_running():
    server = geerpc.Server()
    server.register(Svc())
    starting = asyncio.ensure_future(server.start("127.0.0.1", 0))
    await asyncio.sleep(0)  # start() is inside create_server
    await server.stop(grace=0)
    with pytest.raises(RuntimeError, match="stopped while"):
        await starting
    assert server._listener is not None and not server._listener.is_serving()


async def test_stop_during_registration_stops_the_heartbeat():
    from aiohttp import web

    hold, seen = asyncio.Event(), []

    async def registry(request: web.Request) -> web.Response:
        seen.append(request.method)
        if seen == ["POST"]:
            await hold.wait()  # the first registration hangs until the test lets it go
        return web.Response(headers={"X-Geerpc-Timeout": "300"})

    app = web.Application()
    app.router.add_route("*", "/_geerpc_/registry", registry)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        server = geerpc.Server()
        server.register(Svc())
        starting = asyncio.ensure_future(server.start("127.0.0.1", 0, registry=f"http://127.0.0.1:{port}/_geerpc_/registry"))
        await eventually(lambda: seen == ["POST"])
        stopping = asyncio.ensure_future(server.stop(grace=0))  # while start() waits on the registry
        await eventually(lambda: server.stopping, what="stop() begun")
        hold.set()
        with pytest.raises(RuntimeError, match="stopped while"):
            await starting
        await stopping
        assert seen == ["POST", "DELETE"]  # registered, then deregistered by stop()
        assert server._announcement is not None and server._announcement._task is None
    finally:
        await runner.cleanup()


async def test_unavailable_from_a_stopping_server_does_not_cut_its_draining_calls(serve):
    server, svc = await serve()
    async with XClient([server.address], failover=False) as xc:
        long = asyncio.ensure_future(xc.call("Svc.wait", timeout=5))
        await eventually(lambda: svc.started == ["wait"])
        stopping = asyncio.ensure_future(server.stop(grace=5))
        await eventually(lambda: server.stopping, what="stop() begun")
        with pytest.raises(geerpc.Unavailable):
            await xc.call("Svc.add", 1, 2, timeout=5)
        svc.release.set()
        assert await long == "released"  # the shared connection was kept for it
        await stopping


@pytest.mark.parametrize("what", ["call", "broadcast"])
async def test_xclient_closed_during_a_dial_raises_connection_closed(what):
    async with SilentPeer() as address:  # accepts, never answers the Option
        xc = XClient([f"tcp@{address}"], connect_timeout=5)
        task = asyncio.ensure_future(getattr(xc, what)("Svc.add", 1, 2, timeout=3))
        await eventually(lambda: bool(xc._dials))
        await xc.close()
        with pytest.raises(geerpc.ConnectionClosed):
            await task


async def test_heartbeat_stop_lets_the_callers_cancellation_through():
    from geerpc.registry import Registry

    async with Registry() as registry:  # started on 127.0.0.1, a free port
        hb = Heartbeat(registry.url, "tcp@127.0.0.1:9", period=60)
        hb.start()
        await hb.wait_first()
        stopping = asyncio.ensure_future(hb.stop())
        await asyncio.sleep(0)
        stopping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stopping


@pytest.mark.parametrize(("what", "message"), [
    ("call", "Svc.add timed out after 0.5 s finding a server"),
    ("broadcast", "broadcast of Svc.add timed out after 0.5 s finding the servers"),
])
async def test_call_timeout_bounds_discovery_too(what, message):
    async with SilentPeer() as address:  # a registry that never answers
        async with XClient(f"http://{address}/_geerpc_/registry") as xc:
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(geerpc.CallTimeout) as info:
                await getattr(xc, what)("Svc.add", 1, 2, timeout=0.5)
            assert str(info.value) == message
            assert loop.time() - start < 1.5
