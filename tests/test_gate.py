"""The decode gate: what decoding large frames may take of a server's loop.

Hostile row B1b (in the style of HOSTILE.md): peers sending large, costly frames back
to back on several connections, each within ``max_elements``. The server decodes
large frames within a share of its loop's time; a frame that must wait is kept aside
with its connection's reading paused, frames after it wait behind it (a Cancel still
cancels what came before it), and small frames (every ordinary call) never wait.

The arithmetic is checked with a given ``now``; the queue over real connections, with
a budget the test opens and closes itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from _raw import Raw, assert_serving, raw_connection, request, serving
from conftest import Arith, eventually

import geerpc
from geerpc import protocol as p
from geerpc.gate import BURST, LARGE_FRAME, SHARE, DecodeBudget, DecodeGate

MiB = 1024 * 1024
LARGE = "x" * (LARGE_FRAME + 1)  # an argument that makes a frame large enough for the gate


# --------------------------------------------------------------------------- arithmetic


def test_a_full_budget_lets_a_decode_start_at_once() -> None:
    budget = DecodeBudget(share=0.5, burst=0.02)
    assert budget.wait(100.0) == 0.0


def test_a_decode_past_the_burst_waits_until_the_share_has_paid_it_back() -> None:
    budget = DecodeBudget(share=0.5, burst=0.02)
    budget.charge(0.05, now=10.0)  # 0.03 s over the burst
    assert budget.wait(10.0) == pytest.approx(0.06)  # 0.03 s at half a second a second
    assert budget.wait(10.03) == pytest.approx(0.03)
    assert budget.wait(10.07) == 0.0


def test_the_budget_refills_no_higher_than_the_burst() -> None:
    budget = DecodeBudget(share=0.5, burst=0.02)
    budget.wait(0.0)
    budget.charge(0.03, now=1000.0)  # after a long quiet time: still only 0.02 s in hand
    assert budget.wait(1000.0) == pytest.approx(0.02)


def test_time_going_backwards_refills_nothing() -> None:
    budget = DecodeBudget(share=0.5, burst=0.02)
    budget.charge(0.04, now=5.0)
    assert budget.wait(4.0) == pytest.approx(0.04)
    assert budget.wait(5.0) == pytest.approx(0.04)


@pytest.mark.parametrize("share", [0, -0.5, 1.5, float("nan")])
def test_a_share_outside_zero_to_one_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="share must be in"):
        DecodeBudget(share=share)


@pytest.mark.parametrize("burst", [0, -1, float("nan")])
def test_a_burst_that_is_not_positive_is_refused(burst: float) -> None:
    with pytest.raises(ValueError, match="burst must be positive"):
        DecodeBudget(burst=burst)


def test_the_defaults_are_half_the_loop_and_twenty_milliseconds() -> None:
    budget = DecodeBudget()
    assert (budget.share, budget.burst) == (SHARE, BURST) == (0.5, 0.02)


# --------------------------------------------------------------------------- the queue


class Switch(DecodeBudget):
    """A budget the test opens and closes: closed, every decode waits (polled each 10 ms)."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def wait(self, now: float) -> float:
        return 0.01 if self.closed else 0.0

    def charge(self, seconds: float, now: float) -> None:
        pass


async def test_waiters_take_their_turn_first_come_first_served() -> None:
    switch = Switch()
    gate = DecodeGate(asyncio.get_running_loop(), switch)
    switch.closed = True
    assert not gate.admit()
    order: list[int] = []
    done = asyncio.Event()
    for i in range(3):
        gate.wait(lambda i=i: (order.append(i), i == 2 and done.set()))
    assert len(gate) == 3 and gate.waits == 3
    switch.closed = False
    assert not gate.admit()  # others wait before any newcomer
    await asyncio.wait_for(done.wait(), 5)
    assert order == [0, 1, 2] and len(gate) == 0 and gate.admit()
    gate.close()


async def test_a_closed_gate_forgets_its_waiters() -> None:
    switch = Switch()
    switch.closed = True
    gate = DecodeGate(asyncio.get_running_loop(), switch)
    gate.wait(lambda: pytest.fail("a closed gate woke a waiter"))
    gate.close()
    assert len(gate) == 0
    switch.closed = False
    gate.wait(lambda: None)  # usable again, and the old waiter is gone
    await eventually(lambda: len(gate) == 0, what="the new waiter woken")
    gate.close()


# --------------------------------------------------------------------------- over connections


class Recorder(Arith):
    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.released = asyncio.Event()

    async def take(self, value: str) -> int:
        self.order.append("take")
        return len(value)

    async def add(self, a: int, b: int) -> int:
        self.order.append("add")
        return a + b

    async def wait(self, value: str) -> int:
        self.order.append("wait")
        self.started.set()
        try:
            await self.released.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return len(value)


@contextlib.asynccontextmanager
async def frame_waiting(service: Arith, data: bytes) -> AsyncIterator[tuple[geerpc.Server, Switch, Raw]]:
    """A server whose gate is closed, and a raw connection that sent ``data`` (a large
    frame first): yielded once that frame waits at the gate. The test opens the switch."""
    switch = Switch()
    switch.closed = True
    async with serving(service) as server:
        server.decode_gate.budget = switch
        assert server.address is not None
        async with raw_connection(server.address) as raw:
            await raw.send(data)
            await eventually(lambda: len(server.decode_gate) == 1, what="the large frame waiting")
            yield server, switch, raw


async def test_a_large_frame_waits_for_the_gate_and_what_follows_waits_behind_it() -> None:
    service = Recorder()
    sent = request(1, "Recorder.take", LARGE) + request(2, "Recorder.add", 2, 3)
    async with frame_waiting(service, sent) as (server, switch, raw):
        assert server.address is not None
        # Small frames on other connections never wait: a whole call goes through.
        async with await geerpc.dial(server.address) as client:
            assert await client.call("Recorder.add", 1, 2, timeout=5) == 3
        assert service.order == ["add"]  # the other client's: nothing of this connection ran
        switch.closed = False
        replies = {}
        for _ in range(2):
            response = await raw.read_response(timeout=5)
            replies[response.seq] = response.result
        assert replies == {1: len(LARGE), 2: 5}
        assert service.order == ["add", "take", "add"]  # in the order they were sent
        assert server.decode_gate.waits == 1


class Charges(Switch):
    """A closed switch that also keeps every charge made to it."""

    def __init__(self) -> None:
        super().__init__()
        self.closed = True
        self.charges: list[float] = []

    def charge(self, seconds: float, now: float) -> None:
        self.charges.append(seconds)


async def test_small_frames_pipelined_past_the_large_frame_size_never_wait_nor_are_charged() -> None:
    # What counts is each frame's own length, not what one read brought: a client
    # pipelining thousands of small calls is ordinary traffic, however full its reads.
    async with serving(Recorder()) as server:
        charges = Charges()
        server.decode_gate.budget = charges
        assert server.address is not None
        async with raw_connection(server.address) as raw:
            burst = b"".join(request(seq, "Recorder.add", seq, 1) for seq in range(1, 4001))
            assert len(burst) > LARGE_FRAME
            await raw.send(burst)
            replies = {}
            for _ in range(4000):
                response = await raw.read_response(timeout=5)
                replies[response.seq] = response.result
            assert replies == {seq: seq + 1 for seq in range(1, 4001)}
        assert server.decode_gate.waits == 0
        assert charges.charges == []


async def test_a_cancel_behind_a_waiting_frame_still_cancels_it() -> None:
    service = Recorder()
    sent = request(1, "Recorder.wait", LARGE) + p.encode_cancel(1)
    async with frame_waiting(service, sent) as (server, switch, raw):
        switch.closed = False
        await raw.send(request(2, "Recorder.add", 1, 1))
        assert (await raw.read_response(timeout=5)).result == 2  # no reply for the cancelled call
        # The Cancel came after its request, so it cancelled the call before it
        # began; taken first, it would have been for no call, and the call would wait.
        assert service.order == ["add"]
        (connection,) = server._connections
        assert connection.running == 0


async def test_a_peer_that_hangs_up_while_its_frame_waits_is_closed_once_it_is_read() -> None:
    async with frame_waiting(Recorder(), request(1, "Recorder.take", LARGE)) as (server, switch, raw):
        await raw.close()
        switch.closed = False  # reading resumes after the frame, and finds the hang-up
        await eventually(lambda: not server.snapshot().connections, what="the connection closed")
        assert len(server.decode_gate) == 0
        assert server.address is not None
        async with await geerpc.dial(server.address) as client:
            assert await client.call("Recorder.add", 1, 2, timeout=5) == 3


async def test_a_server_stopped_while_frames_wait_stops_at_once() -> None:
    service = Recorder()
    async with frame_waiting(service, request(1, "Recorder.take", LARGE)) as (server, _, raw):  # never opened
        await asyncio.wait_for(server.stop(grace=1), 5)
        assert len(server.decode_gate) == 0 and service.order == []
        assert await raw.read_until_closed(timeout=5) == b""


async def test_a_waiting_frame_keeps_its_connection_from_counting_as_idle() -> None:
    async with frame_waiting(Recorder(), request(1, "Recorder.take", LARGE)) as (server, _, _raw):
        (connection,) = server._connections
        assert not connection.idle  # not the one evicted to make room


async def test_amplification_on_three_connections_goes_through_the_gate_and_others_are_served() -> None:
    chunk = b"\xdc" + (5000).to_bytes(2, "big") + b"\x90" * 5000
    count = (16 * MiB - 64) // len(chunk)
    body = b"\x96\x00\x01\xa9Nope.nope\xc0\x91\xdd" + count.to_bytes(4, "big") + chunk * count + b"\x80"
    frame = len(body).to_bytes(4, "big") + body
    async with serving(Arith()) as server:
        assert server.address is not None
        async with raw_connection(server.address) as a, raw_connection(server.address) as b, \
                raw_connection(server.address) as c:
            raws = (a, b, c)
            await asyncio.gather(*(raw.send(frame + frame) for raw in raws))
            await assert_serving(server)
            for raw in raws:
                for _ in range(2):
                    response = await raw.read_response(timeout=20)
                    assert response.error is not None and "request too large" in response.error[2]
        # Six decodes of 262,144 elements each are far more than the 20 ms burst.
        assert server.decode_gate.waits >= 1
