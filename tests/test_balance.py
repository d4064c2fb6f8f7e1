"""LEAST_LOADED: the balancer's arithmetic on a fake clock and a seeded RNG (no event
loop), then XClient over real servers on loopback: a slow server, a dead one, a
flapping one, and broadcast past ejection.

Hostile conditions covered here (beside HOSTILE.md rows 23 and 25): a server that
answers every call 2 s late (Linkerd's test) is avoided; a server killed with calls
in flight is ejected; one that keeps restarting is ejected, probed and let back.
"""

from __future__ import annotations

import asyncio
import collections
import math
import random
import socket

import pytest
from conftest import eventually

import geerpc
from geerpc.xclient import SelectMode, XClient
from geerpc.xclient.balance import EJECT_BASE, EJECT_MAX, PENALTY, Balancer, Outcome

A, B, C, D = "tcp@10.0.0.1:1", "tcp@10.0.0.2:1", "tcp@10.0.0.3:1", "tcp@10.0.0.4:1"


def reply(balancer: Balancer, address: str, latency: float, now: float) -> None:
    """One attempt on ``address`` that got its answer ``latency`` s after ``now``."""
    ticket = balancer.begin(address, now)
    balancer.end(ticket, Outcome.REPLY, now + latency)


def fail(balancer: Balancer, address: str, now: float, times: int = 1, how: Outcome = Outcome.FAILED) -> None:
    for _ in range(times):
        balancer.end(balancer.begin(address, now), how, now)


# --------------------------------------------------------------------------- selection


def test_one_server_is_always_that_server():
    balancer = Balancer()
    rng = random.Random(1)
    assert {balancer.pick([A], 0.0, rng) for _ in range(20)} == {A}


def test_power_of_two_choices_takes_the_lower_load():
    balancer = Balancer()
    for address, latency in ((A, 0.001), (B, 0.002), (C, 0.5), (D, 0.004)):
        reply(balancer, address, latency, 0.0)
    rng = random.Random(7)
    counts = collections.Counter(balancer.pick([A, B, C, D], 1.0, rng) for _ in range(1000))
    assert C not in counts  # it loses to whichever other server it is paired with
    # A wins every pair it is in (half of them), B beats C and D
    assert counts[A] == pytest.approx(500, abs=60)
    assert counts[D] < counts[B]


def test_the_two_choices_are_distinct_servers():
    balancer = Balancer()
    reply(balancer, A, 0.001, 0.0)
    reply(balancer, B, 0.5, 0.0)
    rng = random.Random(3)
    # with two servers, both are always compared: the slow one is never taken
    assert {balancer.pick([A, B], 1.0, rng) for _ in range(200)} == {A}


def test_pending_calls_multiply_the_estimate():
    balancer = Balancer()
    reply(balancer, A, 0.010, 0.0)
    assert balancer.load(A, 0.010) == pytest.approx(0.010)
    balancer.begin(A, 0.010)
    balancer.begin(A, 0.010)
    assert balancer.load(A, 0.010) == pytest.approx(0.030)


def test_a_slow_reply_raises_the_estimate_at_once_and_it_decays():
    balancer = Balancer(decay=10.0)
    reply(balancer, A, 0.010, 0.0)
    reply(balancer, A, 0.400, 1.0)  # the peak: taken at once, not averaged in
    assert balancer.stats(1.4)[A].ewma_latency == pytest.approx(0.400)
    later = balancer.stats(11.4)[A].ewma_latency
    assert later == pytest.approx(0.400 * math.exp(-1.0))  # one time constant on


def test_faster_replies_pull_the_estimate_down_by_the_time_between_them():
    balancer = Balancer(decay=10.0)
    reply(balancer, A, 0.100, -0.100)  # observed at 0.0
    reply(balancer, A, 0.010, 9.990)  # observed at 10.0: one time constant later
    expected = 0.100 * math.exp(-1.0) + 0.010 * (1 - math.exp(-1.0))
    assert balancer.stats(10.0)[A].ewma_latency == pytest.approx(expected)


def test_a_pending_call_is_a_lower_bound_on_the_estimate():
    balancer = Balancer()
    reply(balancer, A, 0.001, 0.0)
    balancer.begin(A, 1.0)  # sent at 1.0, no answer yet
    assert balancer.load(A, 1.5) == pytest.approx(0.5 * 2)  # waited 0.5 s, and one more would make two


def test_a_new_server_starts_at_the_median_of_the_others():
    balancer = Balancer()
    for address, latency in ((A, 0.001), (B, 0.003), (C, 0.100)):
        reply(balancer, address, latency, 0.0)
    balancer.update([A, B, C, D], 0.0 + 0.100)
    assert balancer.stats(0.100)[D].ewma_latency == pytest.approx(0.003, rel=0.01)


def test_a_cold_start_spreads_calls_over_servers_with_nothing_pending():
    balancer = Balancer()
    rng = random.Random(5)
    picked = []
    for _ in range(2):
        address = balancer.pick([A, B], 0.0, rng)
        picked.append(address)
        balancer.begin(address, 0.0)
    assert sorted(picked) == [A, B]  # the second pick avoids the one with a call pending
    assert balancer.load(A, 0.0) == PENALTY + 1


def test_avoid_is_a_preference_and_strict_refuses():
    balancer = Balancer()
    rng = random.Random(2)
    assert {balancer.pick([A, B], 0.0, rng, avoid={A}) for _ in range(20)} == {B}
    assert balancer.pick([A], 0.0, rng, avoid={A}) == A
    assert balancer.pick([A], 0.0, rng, avoid={A}, strict=True) is None


def test_costs_are_only_what_was_measured():
    balancer = Balancer()
    balancer.update([A, B], 0.0)
    assert balancer.stats(0.0)[A].ewma_latency is None  # nothing measured: no number made up
    assert balancer.stats(0.0)[A].pending == 0


# --------------------------------------------------------------------------- ejection


def test_five_failures_in_a_row_eject_for_thirty_seconds():
    balancer = Balancer()
    balancer.update([A, B, C, D], 0.0)
    fail(balancer, A, 1.0, times=4)
    assert balancer.ejected() == frozenset()
    fail(balancer, A, 1.0, how=Outcome.TIMEOUT)
    assert balancer.ejected() == {A}
    assert balancer.stats(1.0)[A].ejected_until == pytest.approx(1.0 + EJECT_BASE)
    rng = random.Random(1)
    assert A not in {balancer.pick([A, B, C, D], 2.0, rng) for _ in range(100)}


def test_a_success_resets_the_count():
    balancer = Balancer()
    balancer.update([A, B], 0.0)
    fail(balancer, A, 0.0, times=4)
    reply(balancer, A, 0.001, 0.0)
    fail(balancer, A, 0.0, times=4)
    assert balancer.ejected() == frozenset()
    assert balancer.stats(0.0)[A].failures == 4


def test_an_error_reply_is_not_a_failure():
    balancer = Balancer()
    balancer.update([A, B], 0.0)
    for _ in range(10):
        reply(balancer, A, 0.001, 0.0)  # RemoteError replies count as answers
    assert balancer.stats(0.0)[A].failures == 0


def test_never_more_than_half_are_ejected():
    balancer = Balancer()
    balancer.update([A, B, C, D], 0.0)
    for address in (A, B, C):
        fail(balancer, address, 0.0, times=5)
    assert balancer.ejected() == {A, B}
    fail(balancer, C, 0.0, times=10)
    assert balancer.ejected() == {A, B}
    assert balancer.stats(0.0)[C].failures == 15


def test_one_server_is_never_ejected():
    balancer = Balancer()
    balancer.update([A], 0.0)
    fail(balancer, A, 0.0, times=20)
    assert balancer.ejected() == frozenset()


def test_the_probe_when_time_is_up_and_longer_ejections_after_it_fails():
    balancer = Balancer()
    balancer.update([A, B, C, D], 0.0)
    rng = random.Random(4)
    fail(balancer, A, 0.0, times=5)
    assert balancer.pick([A, B, C, D], EJECT_BASE - 0.1, rng) != A
    probe = balancer.pick([A, B, C, D], EJECT_BASE, rng)
    assert probe == A  # one probe call when its time is up
    ticket = balancer.begin(A, EJECT_BASE)
    assert A not in {balancer.pick([A, B, C, D], EJECT_BASE, rng) for _ in range(100)}  # only one
    balancer.end(ticket, Outcome.TIMEOUT, EJECT_BASE + 1)
    assert balancer.stats(EJECT_BASE + 1)[A].ejected_until == pytest.approx(EJECT_BASE + 1 + 2 * EJECT_BASE)
    # the third ejection, and so on, up to the cap
    now = EJECT_BASE + 1 + 2 * EJECT_BASE
    for times in range(3, 15):
        assert balancer.pick([A, B, C, D], now, rng) == A
        balancer.end(balancer.begin(A, now), Outcome.FAILED, now)
        until = balancer.stats(now)[A].ejected_until
        assert until == pytest.approx(now + min(times * EJECT_BASE, EJECT_MAX))
        now = until


def test_a_probe_that_answers_brings_the_server_back():
    balancer = Balancer()
    balancer.update([A, B], 0.0)
    rng = random.Random(4)
    fail(balancer, A, 0.0, times=5)
    assert balancer.pick([A, B], EJECT_BASE, rng) == A
    reply(balancer, A, 0.002, EJECT_BASE)
    assert balancer.ejected() == frozenset()
    stats = balancer.stats(EJECT_BASE + 1)[A]
    assert (stats.ejected_until, stats.failures, stats.ejections) == (None, 0, 1)
    # back long enough, its past ejection is forgotten: the next one is the first again
    fail(balancer, A, EJECT_BASE + 100, times=5)
    assert balancer.stats(EJECT_BASE + 100)[A].ejected_until == pytest.approx(EJECT_BASE + 100 + EJECT_BASE)


def test_ejection_off_never_ejects():
    balancer = Balancer(eject=False)
    balancer.update([A, B, C, D], 0.0)
    fail(balancer, A, 0.0, times=50)
    assert balancer.ejected() == frozenset()


def test_servers_that_leave_the_list_are_forgotten():
    balancer = Balancer()
    balancer.update([A, B, C, D], 0.0)
    fail(balancer, A, 0.0, times=5)
    balancer.update([B, C, D], 1.0)
    assert A not in balancer.stats(1.0) and balancer.ejected() == frozenset()


# --------------------------------------------------------------------------- real servers


class Node:
    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name, self.delay = name, delay
        self.calls = 0
        self.unavailable = False

    async def whoami(self):
        self.calls += 1
        if self.unavailable:
            raise geerpc.Unavailable("going away")
        if self.delay:
            await asyncio.sleep(self.delay)
        return self.name


@pytest.fixture
async def nodes():
    servers: list[geerpc.Server] = []

    async def make(*delays: float, port: int = 0) -> list[Node]:
        made = []
        for delay in delays:
            node = Node(f"n{len(servers)}", delay)
            server = geerpc.Server()
            server.register(node, name="Node")
            await server.start("127.0.0.1", port)
            node.address, node.server = server.address, server  # type: ignore[attr-defined]
            servers.append(server)
            made.append(node)
        return made

    yield make
    for server in servers:
        await server.stop(grace=0.2)


async def calls(xc: XClient, count: int, concurrency: int, timeout: float = 2.0) -> collections.Counter[str]:
    """``count`` calls of Node.whoami, ``concurrency`` at a time; who answered, and errors."""
    results: collections.Counter[str] = collections.Counter()
    queue = iter(range(count))

    async def caller() -> None:
        for _ in queue:
            try:
                results[await xc.call("Node.whoami", timeout=timeout)] += 1
            except geerpc.GeeRPCError as exc:
                results[type(exc).__name__] += 1

    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return results


async def test_least_loaded_routes_around_a_slow_server(nodes):
    made = await nodes(0, 0, 0, 2.0)  # Linkerd's test: one server adds 2 s
    slow = made[3]
    async with XClient([n.address for n in made], SelectMode.LEAST_LOADED) as xc:
        results = await calls(xc, 300, concurrency=6, timeout=1.0)
    assert sum(results[n.name] for n in made[:3]) >= 294, results
    assert slow.calls <= 6  # only the first calls, before it had answered nothing for long


async def test_random_does_not(nodes):
    made = await nodes(0, 0, 0, 0.3)
    async with XClient([n.address for n in made], SelectMode.RANDOM) as xc:
        await calls(xc, 120, concurrency=6)
    assert made[3].calls >= 15  # a quarter of them, give or take


async def test_a_dead_server_is_ejected_and_calls_go_on(nodes):
    made = await nodes(0, 0, 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"tcp@127.0.0.1:{sock.getsockname()[1]}"
    async with XClient([dead] + [n.address for n in made], SelectMode.LEAST_LOADED) as xc:
        results = await calls(xc, 200, concurrency=4)
        assert sum(results.values()) == sum(results[n.name] for n in made) == 200  # failover: no call failed
        stats = xc.stats()[dead]
        assert stats.ejected_until is not None and stats.ejections == 1
        assert all(xc.stats()[n.address].ejected_until is None for n in made)


async def test_a_flapping_server_is_ejected_probed_and_let_back(nodes):
    steady = await nodes(0, 0, 0)
    (flapper,) = await nodes(0)
    addresses = [n.address for n in steady] + [flapper.address]
    async with XClient(addresses, SelectMode.LEAST_LOADED) as xc:
        xc._balancer = Balancer(eject_base=0.3)  # a short ejection, so the test need not wait 30 s
        await calls(xc, 40, concurrency=4)
        flapper.unavailable = True  # stopping: answers Unavailable, and the calls fail over
        results = await calls(xc, 100, concurrency=4)
        assert results["Unavailable"] == 0
        assert xc.stats()[flapper.address].ejections == 1
        calls_while_ejected = flapper.calls
        flapper.unavailable = False  # back up
        await calls(xc, 40, concurrency=4)
        assert flapper.calls == calls_while_ejected  # still ejected: not called at all

        async def back() -> bool:
            await calls(xc, 10, concurrency=2)
            return xc.stats()[flapper.address].ejected_until is None

        await eventually(back, timeout=5, what="the probe let it back")
        before = flapper.calls
        await calls(xc, 200, concurrency=4)
        assert flapper.calls > before


async def test_a_server_that_goes_down_and_comes_back_on_its_port(nodes):
    steady = await nodes(0, 0, 0)
    (flapper,) = await nodes(0)
    port = int(flapper.address.rpartition(":")[2])
    addresses = [n.address for n in steady] + [flapper.address]
    async with XClient(addresses, SelectMode.LEAST_LOADED) as xc:
        xc._balancer = Balancer(eject_base=0.3)  # a short ejection, so the test need not wait 30 s
        await calls(xc, 40, concurrency=4)
        for _ in range(2):  # down (connections dropped, then refused), then up again on its port
            await flapper.server.stop(grace=0.1)
            results = await calls(xc, 100, concurrency=4)
            assert sum(results[n.name] for n in steady) == 100, results  # failover: nothing failed
            assert xc.stats()[flapper.address].ejected_until is not None
            (back,) = await nodes(0, port=port)

            async def answered(node: Node = back) -> bool:
                await calls(xc, 10, concurrency=2)
                return node.calls > 0

            await eventually(answered, timeout=5, what="the restarted server was probed and let back")
            flapper = back
        assert xc.stats()[flapper.address].ejections == 2  # ejected twice: each longer than the last


async def test_broadcast_ignores_ejection(nodes):
    made = await nodes(0, 0, 0, 0)
    async with XClient([n.address for n in made], SelectMode.LEAST_LOADED) as xc:
        made[0].unavailable = True
        await calls(xc, 60, concurrency=3)
        assert xc.stats()[made[0].address].ejected_until is not None
        made[0].unavailable = False
        before = [n.calls for n in made]
        await xc.broadcast("Node.whoami", timeout=2)
        assert [n.calls - b for n, b in zip(made, before)] == [1, 1, 1, 1]


async def test_stats_count_pending_calls(nodes):
    made = await nodes(0.3, 0.3)
    async with XClient([n.address for n in made], SelectMode.LEAST_LOADED) as xc:
        task = asyncio.ensure_future(asyncio.gather(*(xc.call("Node.whoami", timeout=2) for _ in range(4))))
        await eventually(lambda: sum(s.pending for s in xc.stats().values()) == 4, what="4 calls pending")
        await task
        assert sum(s.pending for s in xc.stats().values()) == 0
        assert all(s.ewma_latency is not None and s.ewma_latency >= 0.29 for s in xc.stats().values())


async def test_eject_needs_least_loaded():
    with pytest.raises(ValueError, match="eject=True needs SelectMode.LEAST_LOADED"):
        XClient(["tcp@127.0.0.1:1"], SelectMode.RANDOM, eject=True)
    with pytest.raises(ValueError, match="eject=True needs SelectMode.LEAST_LOADED"):
        XClient(["tcp@127.0.0.1:1"], SelectMode.ROUND_ROBIN, eject=True)
    with pytest.raises(TypeError, match="eject must be True, False or None"):
        XClient(["tcp@127.0.0.1:1"], SelectMode.LEAST_LOADED, eject="yes")  # type: ignore[arg-type]
    async with XClient(["tcp@127.0.0.1:1"], SelectMode.RANDOM, eject=False):
        pass
    async with XClient(["tcp@127.0.0.1:1"], SelectMode.LEAST_LOADED, eject=False) as xc:
        assert xc._balancer is not None and not xc._balancer.eject
