"""Server life cycle: registration, start, graceful stop, serve_forever."""

from __future__ import annotations

import asyncio
import time

import pytest

import geerpc
from conftest import Arith, eventually


class Gate:
    """A service whose calls wait for the test to open the gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.entered = 0
        self.all_entered = asyncio.Event()
        self.expected = 1

    async def wait(self, value):
        self.entered += 1
        if self.entered >= self.expected:
            self.all_entered.set()
        await self.gate.wait()
        return value


def test_register_names_and_conflicts():
    server = geerpc.Server()
    assert server.register(Arith()) == "Arith"
    assert server.register(Arith(), name="Calc") == "Calc"
    with pytest.raises(ValueError, match="already registered"):
        server.register(Arith())
    with pytest.raises(ValueError, match="identifier"):
        server.register(Arith(), name="a.b")
    assert "add" in server.services["Calc"] and "_secret" not in server.services["Calc"]


def test_bad_options_are_refused():
    with pytest.raises(ValueError):
        geerpc.Server(handle_timeout=0)
    with pytest.raises(ValueError):
        geerpc.Server(max_in_flight=0)
    with pytest.raises(ValueError):
        geerpc.Server(max_frame_size=2**33)


async def test_start_returns_listening_address_and_cannot_start_twice():
    server = geerpc.Server()
    server.register(Arith())
    address = await server.start("127.0.0.1", 0)
    try:
        assert address == server.address and address.startswith("tcp@127.0.0.1:")
        async with await geerpc.dial(address) as client:  # listening once start() returned
            assert await client.call("Arith.add", 1, 2) == 3
        with pytest.raises(RuntimeError):
            await server.start("127.0.0.1", 0)
    finally:
        await server.stop()


async def test_start_accepts_tcp_address_form():
    async with geerpc.Server() as server:
        server.register(Arith())
        address = await server.start("tcp@127.0.0.1:0")
        async with await geerpc.dial(address) as client:
            assert await client.call("Arith.add", 2, 3) == 5


async def test_graceful_stop_lets_in_flight_calls_finish():
    gate = Gate()
    gate.expected = 3
    server = geerpc.Server()
    server.register(gate)
    await server.start("127.0.0.1", 0)
    async with await geerpc.dial(server.address) as client:
        calls = [asyncio.ensure_future(client.call("Gate.wait", i)) for i in range(3)]
        await gate.all_entered.wait()
        stopping = asyncio.ensure_future(server.stop(grace=5))
        # stop() is draining: a new request is answered Unavailable, not run
        with pytest.raises(geerpc.Unavailable):
            await client.call("Gate.wait", 99)
        assert not stopping.done()
        gate.gate.set()
        assert await asyncio.gather(*calls) == [0, 1, 2]
        async with asyncio.timeout(3):
            await stopping
    # stopped: no longer accepting
    with pytest.raises(geerpc.ConnectError):
        await geerpc.dial(server.address, connect_timeout=1)


async def test_stop_cancels_calls_after_grace_and_is_idempotent():
    gate = Gate()
    server = geerpc.Server()
    server.register(gate)
    await server.start("127.0.0.1", 0)
    async with await geerpc.dial(server.address) as client:
        call = asyncio.ensure_future(client.call("Gate.wait", 1))
        await gate.all_entered.wait()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.gather(server.stop(grace=0.1), server.stop(grace=0.1))
        assert loop.time() - start < 2
        with pytest.raises(geerpc.Unavailable, match="stopped before"):
            await call
    await server.stop()  # a third time, after the fact


async def test_serve_forever_returns_after_stop():
    server = geerpc.Server()
    server.register(Arith())
    await server.start("127.0.0.1", 0)
    forever = asyncio.ensure_future(server.serve_forever())
    async with await geerpc.dial(server.address) as client:  # it serves meanwhile
        assert await client.call("Arith.add", 1, 2) == 3
    done, _ = await asyncio.wait([forever], timeout=0.1)  # at once if it returned early
    assert not done
    await server.stop()
    async with asyncio.timeout(2):
        await forever


async def test_cancelling_serve_forever_stops_the_server():
    server = geerpc.Server()
    server.register(Arith())
    await server.start("127.0.0.1", 0)
    forever = asyncio.ensure_future(server.serve_forever())
    async with await geerpc.dial(server.address) as client:  # serve_forever is waiting by now
        assert await client.call("Arith.add", 1, 2) == 3
    assert not forever.done()
    forever.cancel()
    with pytest.raises(asyncio.CancelledError):
        await forever
    with pytest.raises(geerpc.ConnectError):
        await geerpc.dial(server.address, connect_timeout=1)


async def test_client_gone_mid_call_cancels_its_work_and_serves_others(server, arith):
    doomed = await geerpc.dial(server.address)
    call = asyncio.ensure_future(doomed.call("Arith.sleep", 30))
    await arith.started.wait()
    await doomed.close()
    with pytest.raises(geerpc.ConnectionClosed):
        await call
    async with asyncio.timeout(2):
        await arith.cancelled.wait()
    async with await geerpc.dial(server.address) as other:
        assert await other.call("Arith.add", 1, 2) == 3


async def test_idle_timeout_closes_quiet_connections_but_not_busy_ones(arith):
    server = geerpc.Server(idle_timeout=0.2)
    server.register(arith)
    async with server:
        await server.start("127.0.0.1", 0)
        idle = await geerpc.dial(server.address)
        busy = await geerpc.dial(server.address)
        try:
            call = asyncio.ensure_future(busy.call("Arith.sleep", 0.5))
            await eventually(lambda: idle.closed, 2, "the idle connection closed (after about 0.2 s)")
            assert await call == 0.5  # a call running longer than idle_timeout is not cut
            assert not busy.closed
        finally:
            await idle.close()
            await busy.close()


async def test_accepted_and_dialed_tcp_sockets_use_keepalive(server, client):
    import socket

    assert client._conn.transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
    (conn,) = server._connections
    assert conn._transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


class Slow:
    def __init__(self) -> None:
        import threading

        self.finished = threading.Event()

    def block(self, seconds):
        time.sleep(seconds)
        self.finished.set()
        return seconds


async def test_blocking_def_past_its_deadline_times_out_and_its_late_result_is_dropped(arith):
    slow = Slow()
    server = geerpc.Server(handle_timeout=0.1)
    server.register(slow)
    server.register(arith)
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    try:
        async with server:
            await server.start("127.0.0.1", 0)
            async with await geerpc.dial(server.address) as client:
                with pytest.raises(geerpc.CallTimeout, match="within 0.1"):
                    await client.call("Slow.block", 0.3)  # a thread cannot be stopped
                # the slot is free at the deadline, not when the thread ends
                assert server.snapshot().calls_in_flight == 0
                assert await client.call("Arith.mul", 6, 7) == 42
                await eventually(slow.finished.is_set)  # the thread ends; its result goes nowhere
                assert await client.call("Arith.add", 1, 1) == 2
        assert errors == []
    finally:
        loop.set_exception_handler(None)


async def test_cancelling_a_blocking_def_call_frees_its_slot(arith):
    server = geerpc.Server(max_in_flight=1)
    server.register(arith)
    async with server:
        await server.start("127.0.0.1", 0)
        async with await geerpc.dial(server.address) as client:
            blocked = asyncio.ensure_future(client.call("Arith.block", 0.5))
            await eventually(lambda: server.snapshot().calls_in_flight == 1, what="the blocking call running")
            blocked.cancel()
            await asyncio.gather(blocked, return_exceptions=True)
            await eventually(lambda: server.snapshot().calls_in_flight == 0, what="its slot free")
            async with asyncio.timeout(0.4):  # well before the blocked thread is done
                assert await client.call("Arith.add", 2, 3) == 5


async def test_stop_answers_running_and_held_calls_unavailable(arith):
    gate = Gate()
    server = geerpc.Server(max_in_flight=1)
    server.register(gate)
    server.register(arith)
    await server.start("127.0.0.1", 0)
    async with await geerpc.dial(server.address) as client:
        calls = [asyncio.ensure_future(client.call("Gate.wait", i)) for i in range(3)]
        blocking = asyncio.ensure_future(client.call("Arith.block", 0.3))
        await gate.all_entered.wait()  # one runs; the others are held at the cap
        await eventually(lambda: [c.held for c in server.snapshot().connections] == [3], what="three held")
        await server.stop(grace=0.05)
        results = await asyncio.gather(*calls, blocking, return_exceptions=True)
        assert all(isinstance(r, geerpc.Unavailable) for r in results), results

