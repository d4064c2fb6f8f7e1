"""A connection's byte budget: what one peer can make the server hold.

Hostile rows (in the style of HOSTILE.md):
- a peer that asks for large replies and never reads: the server parks finished
  results instead of encoding them, and holds no more than its budget plus one reply;
- large arguments to a handler that waits: calls start only while the budget has
  room, the rest wait unread in the socket;
- one request that would alone exceed the budget is answered InvalidArguments, and
  the connection goes on;
- amplification through a real connection: a frame of nested empty arrays is answered
  "request too large", and other clients are served meanwhile.
"""

from __future__ import annotations

import asyncio

import pytest

import geerpc
from geerpc import protocol as p
from geerpc.snapshot import ConnectionStats

from _raw import Raw, assert_serving, raw_connection, request, serving
from conftest import Arith, eventually

MiB = 1024 * 1024


class Big:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0

    async def blob(self, size: int) -> bytes:
        await asyncio.sleep(0)  # a real task, not an inline call
        return b"x" * size  # a fresh object per call, as a real handler would make

    def blob_def(self, size: int) -> bytes:
        return b"y" * size

    async def hold(self, data: bytes) -> int:
        self.started += 1
        await self.release.wait()
        return len(data)


def only_connection(server: geerpc.Server) -> ConnectionStats:
    (connection,) = server.snapshot().connections
    return connection


@pytest.mark.parametrize("method", ["Big.blob", "Big.blob_def"])
async def test_a_peer_that_never_reads_gets_no_more_than_the_budget(method: str) -> None:
    budget = 8 * MiB
    async with serving(Big(), Arith(), connection_budget=budget, max_in_flight=64) as server:
        assert server.address is not None
        async with raw_connection(server.address, rcvbuf=4096) as raw:
            await raw.send(b"".join(request(seq, method, MiB) for seq in range(1, 65)))

            def settled() -> bool:
                c = only_connection(server)
                return c.running == 0 and c.parked + c.held > 0

            await eventually(settled, what="the calls to run and their results to be parked")
            held = only_connection(server)
            # Before the budget, 64 fresh 1 MiB replies were encoded and queued: 64 MiB.
            assert held.bytes_held <= budget + MiB + 64 * 1024, held
            await assert_serving(server)  # another client is not held up by this one

            # Once the peer reads, every reply arrives, whole and in some order.
            seqs = set()
            for _ in range(64):
                response = await raw.read_response(timeout=10)
                assert response.error is None and len(response.result) == MiB
                seqs.add(response.seq)
            assert seqs == set(range(1, 65))
            await eventually(lambda: only_connection(server).bytes_held < 64 * 1024, what="the budget to empty")


async def test_large_arguments_start_calls_only_while_the_budget_has_room() -> None:
    budget = 8 * MiB
    big = Big()
    async with serving(big, Arith(), connection_budget=budget, max_in_flight=128) as server:
        assert server.address is not None
        async with raw_connection(server.address) as raw:
            data = b"d" * MiB
            sending = asyncio.create_task(
                raw.send(b"".join(request(seq, "Big.hold", data) for seq in range(1, 33))))
            try:
                await eventually(lambda: big.started >= 4, what="calls to start")
                stats = only_connection(server)
                assert stats.running + stats.held < 12, stats  # not 32 x 1 MiB
                assert stats.bytes_held <= budget + 2 * MiB, stats
                await assert_serving(server)
            finally:
                big.release.set()
            await sending
            results = [await raw.read_response(timeout=10) for _ in range(32)]
            assert sorted(r.seq for r in results) == list(range(1, 33))
            assert all(r.result == MiB for r in results)


async def test_one_request_over_the_whole_budget_is_refused_and_the_connection_goes_on() -> None:
    async with serving(Big(), Arith(), connection_budget=2 * MiB) as server:
        assert server.address is not None
        async with raw_connection(server.address) as raw:
            await raw.send(request(1, "Big.hold", b"d" * (3 * MiB)))
            response = await raw.read_response()
            assert response.seq == 1 and response.error is not None
            code, kind, message = response.error
            assert (code, kind) == (p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments")
            assert "request too large" in message and "connection_budget" in message
            await raw.send(request(2, "Arith.add", 1, 2))
            assert (await raw.read_response()).result == 3


async def test_one_large_call_runs_on_a_connection_that_holds_nothing_else() -> None:
    big = Big()
    big.release.set()
    async with serving(big, connection_budget=4 * MiB) as server:
        assert server.address is not None
        async with await geerpc.dial(server.address) as client:
            assert await client.call("Big.hold", b"d" * (3 * MiB), timeout=10) == 3 * MiB
            assert len(await client.call("Big.blob", 3 * MiB, timeout=10)) == 3 * MiB


async def test_amplification_is_answered_and_others_are_served_meanwhile() -> None:
    chunk = b"\xdc" + (5000).to_bytes(2, "big") + b"\x90" * 5000
    count = (16 * MiB - 64) // len(chunk)
    body = b"\x96\x00\x01\xa9Nope.nope\xc0\x91\xdd" + count.to_bytes(4, "big") + chunk * count + b"\x80"
    async with serving(Arith()) as server:
        assert server.address is not None
        async with raw_connection(server.address) as raw:
            for _ in range(3):
                await raw.send(len(body).to_bytes(4, "big") + body)
                await assert_serving(server)
            for _ in range(3):
                response = await raw.read_response(timeout=10)
                assert response.error is not None and "request too large" in response.error[2]
            await raw.send(request(2, "Arith.add", 2, 3))
            assert (await raw.read_response()).result == 5


def test_limits_are_checked_when_the_server_is_made() -> None:
    for bad in (0, -1, 1.5, True, "64"):
        with pytest.raises(ValueError, match="connection_budget must be a positive integer"):
            geerpc.Server(connection_budget=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_elements must be a positive integer"):
            geerpc.Server(max_elements=bad)  # type: ignore[arg-type]


async def test_raw_helpers_agree_with_the_budget_counter() -> None:
    async with serving(Arith()) as server:
        assert server.address is not None
        raw = await Raw.handshake(server.address)
        try:
            await raw.send(request(1, "Arith.add", 1, 2))
            assert (await raw.read_response()).result == 3
            # nothing held once answered but the receive buffer (16 KiB to start with)
            await eventually(lambda: only_connection(server).bytes_held <= 16 * 1024, what="nothing held once answered")
        finally:
            await raw.close()
