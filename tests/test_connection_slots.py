"""Connection slots: a cap per peer address, the longest idle evicted, idle timeout on.

Hostile rows (in the style of HOSTILE.md):
- one client opens sockets that finish the handshake and sit idle, more than its
  address may hold: each new one evicts that address's quietest, and a client from
  another address (or the same one, once idle ones can go) always gets in;
- sockets that never send the Option count as idle: they are evicted first in turn;
- every connection busy: the newcomer is refused at once with a clear reason;
- a Client whose connection the server closed while idle dials again on its next call;
  one that lost its connection with calls pending fails them and never resends.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import pytest

import geerpc
from geerpc import protocol as p
from geerpc.admission import Admission

from _raw import Raw, assert_serving, fake_server, raw_connection, read_request, serving
from conftest import Arith, eventually


@dataclass(eq=False)
class FakeSlot:
    idle: bool = True
    last_active: float = 0.0


# --------------------------------------------------------------------------- the policy, sans IO


def test_per_address_cap_evicts_that_address_quietest_idle() -> None:
    admission: Admission[FakeSlot] = Admission(max_connections=100, max_per_ip=2)
    old, new = FakeSlot(last_active=1.0), FakeSlot(last_active=5.0)
    assert admission.admit(old, "10.0.0.1") == (None, None)
    assert admission.admit(new, "10.0.0.1") == (None, None)
    third = FakeSlot(last_active=9.0)
    assert admission.admit(third, "10.0.0.1") == (None, old)
    assert admission.count("10.0.0.1") == 2 and old not in admission.slots()
    assert admission.admit(FakeSlot(), "10.0.0.2") == (None, None)  # another address is not capped by it


def test_busy_connections_are_never_evicted() -> None:
    admission: Admission[FakeSlot] = Admission(max_connections=100, max_per_ip=2)
    busy = [FakeSlot(idle=False, last_active=t) for t in (1.0, 2.0)]
    for slot in busy:
        admission.admit(slot, "10.0.0.1")
    refusal, evicted = admission.admit(FakeSlot(), "10.0.0.1")
    assert evicted is None
    assert refusal == "too many connections from 10.0.0.1 (max_connections_per_ip=2)"
    busy[1].idle = True
    assert admission.admit(FakeSlot(), "10.0.0.1") == (None, busy[1])


def test_server_cap_evicts_from_the_most_crowded_address() -> None:
    admission: Admission[FakeSlot] = Admission(max_connections=4, max_per_ip=3)
    quiet_friend = FakeSlot(last_active=0.0)  # quieter, but its address holds one connection
    admission.admit(quiet_friend, "10.0.0.9")
    crowd = [FakeSlot(last_active=t) for t in (3.0, 2.0, 4.0)]
    for slot in crowd:
        admission.admit(slot, "10.0.0.1")
    assert admission.admit(FakeSlot(), "10.0.0.2") == (None, crowd[1])
    assert len(admission) == 4


def test_server_cap_with_the_crowd_busy_evicts_the_quietest_anywhere() -> None:
    admission: Admission[FakeSlot] = Admission(max_connections=3, max_per_ip=3)
    crowd = [FakeSlot(idle=False) for _ in range(2)]
    for slot in crowd:
        admission.admit(slot, "10.0.0.1")
    lone = FakeSlot(last_active=7.0)
    admission.admit(lone, None)  # a unix-socket peer
    assert admission.admit(FakeSlot(), "10.0.0.2") == (None, lone)
    lone_busy = [s for s in admission.slots() if s.idle]
    for slot in lone_busy:
        slot.idle = False
    assert admission.admit(FakeSlot(), "10.0.0.3") == ("server has too many connections", None)


def test_remove_forgets_and_ignores_unknown_slots() -> None:
    admission: Admission[FakeSlot] = Admission(max_connections=2, max_per_ip=2)
    slot = FakeSlot()
    admission.admit(slot, "10.0.0.1")
    admission.remove(slot)
    admission.remove(slot)
    admission.remove(FakeSlot())
    assert len(admission) == 0 and admission.count("10.0.0.1") == 0


def test_the_server_checks_its_limits() -> None:
    server = geerpc.Server()
    assert (server.max_connections_per_ip, server.idle_timeout) == (64, 300.0)
    assert geerpc.Server(max_connections=8).max_connections_per_ip == 8
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_connections_per_ip must be a positive integer or None"):
            geerpc.Server(max_connections_per_ip=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- real sockets


async def test_idle_sockets_from_one_address_cannot_lock_others_out() -> None:
    async with serving(Arith(), max_connections=64, max_connections_per_ip=8) as server:
        assert server.address is not None
        attackers = [await Raw.handshake(server.address) for _ in range(8)]
        silent = [await Raw.open(server.address) for _ in range(8)]  # never send the Option
        try:
            # Each of the 16 evicted the quietest before it; the address keeps 8.
            await eventually(lambda: len(server.snapshot().connections) == 8, what="the address held to its cap")
            closed = [raw for raw in attackers if await raw.read_until_closed(timeout=2) == b""]
            assert len(closed) == 8  # the handshaken ones went first: they were the quietest
            await assert_serving(server)  # a well-behaved client still gets in
        finally:
            for raw in attackers + silent:
                await raw.close()


async def test_a_busy_address_at_its_cap_is_refused_with_a_reason() -> None:
    arith = Arith()
    async with serving(arith, max_connections_per_ip=2) as server:
        assert server.address is not None
        clients = [await geerpc.dial(server.address) for _ in range(2)]
        busy = [asyncio.create_task(c.call("Arith.sleep", 30)) for c in clients]
        try:
            await eventually(lambda: sum(c.running for c in server.snapshot().connections) == 2,
                             what="both connections busy")
            async with raw_connection(server.address, handshake=False) as raw:
                answer = await raw.read_until_closed(timeout=2)
            assert json.loads(answer)["Error"] == "too many connections from 127.0.0.1 (max_connections_per_ip=2)"
            with pytest.raises(geerpc.HandshakeError, match="too many connections from 127.0.0.1"):
                await geerpc.dial(server.address)
        finally:
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            for client in clients:
                await client.close()


async def test_a_client_evicted_while_idle_dials_again_on_its_next_call() -> None:
    async with serving(Arith(), max_connections_per_ip=1) as server:
        assert server.address is not None
        async with await geerpc.dial(server.address) as first:
            assert await first.call("Arith.add", 1, 2) == 3
            async with await geerpc.dial(server.address) as second:  # evicts the first
                await eventually(lambda: first.closed, what="the first connection closed")
                assert await second.call("Arith.add", 2, 2) == 4
            assert await first.call("Arith.add", 3, 3, timeout=5) == 6  # dialed again
            assert not first.closed


async def test_a_client_closed_by_the_idle_timeout_dials_again() -> None:
    async with serving(Arith(), idle_timeout=0.2) as server:
        assert server.address is not None
        async with await geerpc.dial(server.address) as client:
            assert await client.call("Arith.add", 1, 2) == 3
            await eventually(lambda: client.closed, what="the idle connection closed by the server")
            assert await client.call("Arith.add", 2, 3) == 5


async def test_a_connection_lost_with_calls_pending_is_not_dialed_again() -> None:
    dials = 0

    async def take_one_request_then_hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal dials
        dials += 1
        await reader.readline()  # the Option
        writer.write(p.encode_option(p.Option()))
        await read_request(reader)  # then close with the call pending

    async with fake_server(take_one_request_then_hang_up) as address:
        client = await geerpc.dial(address)
        try:
            with pytest.raises(geerpc.ConnectionClosed):
                await client.call("Arith.add", 1, 2, timeout=5)
            with pytest.raises(geerpc.ConnectionClosed):  # not resent, and no new dial
                await client.call("Arith.add", 1, 2, timeout=5)
            assert dials == 1
        finally:
            await client.close()


async def test_a_closed_client_never_dials_again() -> None:
    async with serving(Arith()) as server:
        assert server.address is not None
        client = await geerpc.dial(server.address)
        await client.close()
        with pytest.raises(geerpc.ConnectionClosed, match="closed"):
            await client.call("Arith.add", 1, 2)


async def test_concurrent_calls_share_one_new_dial() -> None:
    async with serving(Arith(), idle_timeout=0.2) as server:
        assert server.address is not None
        async with await geerpc.dial(server.address) as client:
            await client.call("Arith.add", 0, 0)
            await eventually(lambda: client.closed, what="the idle connection closed by the server")
            results = await asyncio.gather(*(client.call("Arith.add", i, 1) for i in range(20)))
            assert results == [i + 1 for i in range(20)]
            assert len(server.snapshot().connections) == 1


async def test_a_new_dial_that_outlives_its_callers_fails_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """The server closed the idle connection, and the new dial hangs: the caller's call
    times out while dialing, and the dial's own failure later is nobody's error."""
    import gc

    first = asyncio.Event()
    hang_up = asyncio.Event()
    given_up = asyncio.Event()  # the client gave up a dial that was never acknowledged

    async def answers_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        if first.is_set():
            await reader.read()  # later connections: never acknowledged
            given_up.set()
            return
        first.set()
        writer.write(p.encode_option(p.Option()))
        await hang_up.wait()  # then closed while idle

    async with fake_server(answers_once) as address:
        client = await geerpc.dial(address, connect_timeout=0.3)
        try:
            hang_up.set()
            await eventually(lambda: client.closed, what="the idle connection closed by the server")
            with caplog.at_level(logging.ERROR, logger="asyncio"):
                with pytest.raises(geerpc.CallTimeout, match="while dialing .* again"):
                    await client.call("S.m", timeout=0.1)
                await asyncio.wait_for(given_up.wait(), 5)  # the dial failed at 0.3 s, unawaited
                gc.collect()
            assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
            given_up.clear()
            with pytest.raises(geerpc.ConnectTimeout, match="took longer than 0.3 s"):
                await client.call("S.m", timeout=5)  # the dial's own error, not a CallTimeout
        finally:
            await client.close()
