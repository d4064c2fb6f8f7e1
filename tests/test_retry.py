"""Retries and hedged calls: Retry's checks, the budget and the running percentile on
a fake clock, then XClient over real servers on loopback (retry after an attempt's
timeout, after Unavailable, never after other errors or for calls not marked
idempotent; the budget exhausted; a hedge that wins, its loser cancelled on its server).

Hostile conditions covered here: a cluster where every server fails sees at most
``1 + budget`` times its load (the budget); a server that hangs gets the Cancel of
an attempt that timed out or lost a hedge, so its handler stops.
"""

from __future__ import annotations

import asyncio
import math
import random

import pytest

import geerpc
from geerpc.sync import SyncXClient
from geerpc.xclient import Retry, SelectMode, XClient
from geerpc.xclient.retry import RESERVE, LatencyWindow, RetryBudget, attempt_share, check_hedge_after

# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"attempts": 0}, ValueError, "attempts=.*at least 1"),
    ({"attempts": -2}, ValueError, "attempts=.*at least 1"),
    ({"attempts": 2.0}, TypeError, "attempts=.*int"),
    ({"attempts": True}, TypeError, "attempts=.*int"),
    ({"backoff": -0.1}, ValueError, "backoff=.*zero or a positive"),
    ({"backoff": math.nan}, ValueError, "backoff=.*NaN"),
    ({"backoff": "1"}, TypeError, "backoff=.*number"),
    ({"backoff": 2.0, "max_backoff": 1.0}, ValueError, "max_backoff=.*at least backoff"),
    ({"budget": 1.5}, ValueError, "budget=.*between 0 and 1"),
    ({"budget": -0.1}, ValueError, "budget=.*between 0 and 1"),
    ({"attempt_timeout": 0}, ValueError, "attempt_timeout=.*positive"),
])
def test_bad_retry_arguments_are_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        Retry(**kwargs)


def test_good_retry_arguments():
    assert Retry(attempts=1, backoff=0, budget=0).attempts == 1
    assert Retry(budget=1).budget == 1


@pytest.mark.parametrize(("value", "error", "match"), [
    (0, ValueError, "positive"), (-1, ValueError, "positive"), (math.inf, ValueError, "finite"),
    ("p99", ValueError, "'p95'"), ("", ValueError, "'p95'"), (True, TypeError, "number"),
    ([0.1], TypeError, "number"),
])
def test_bad_hedge_after_is_refused(value, error, match):
    with pytest.raises(error, match=match):
        check_hedge_after(value)
    with pytest.raises(error, match=match):
        XClient(["tcp@127.0.0.1:1"], hedge_after=value)


def test_retry_must_be_a_retry():
    with pytest.raises(TypeError, match="retry must be a geerpc.xclient.Retry"):
        XClient(["tcp@127.0.0.1:1"], retry=3)  # type: ignore[arg-type]


async def test_idempotent_must_be_a_bool():
    async with XClient(["tcp@127.0.0.1:1"]) as xc:
        with pytest.raises(TypeError, match="idempotent must be True or False"):
            await xc.call("Node.whoami", idempotent=1)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="idempotent must be True or False"):
            await xc.invoke("Node.whoami", idempotent="yes")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- arithmetic


def test_the_budget_is_a_share_of_recent_calls():
    budget = RetryBudget(0.1, window=10.0, reserve=0)
    assert not budget.try_spend(0.0)  # no calls yet: nothing to spend
    for _ in range(20):
        budget.record_call(0.5)
    assert budget.try_spend(1.0) and budget.try_spend(1.0)
    assert not budget.try_spend(1.0)  # 2 of 20 spent
    budget.refund(1.0)
    assert budget.try_spend(1.0)
    assert budget.usage(9.9) == (20, 2)
    assert budget.usage(10.6) == (0, 2)  # the calls' slice has left the window
    assert not budget.try_spend(10.6)
    assert budget.usage(11.5) == (0, 0)


def test_the_reserve_lets_a_few_calls_retry():
    budget = RetryBudget(0.1, window=10.0)
    assert budget.reserve == RESERVE
    budget.record_call(0.0)
    assert all(budget.try_spend(0.0) for _ in range(RESERVE))
    assert not budget.try_spend(0.0)
    assert budget.try_spend(10.5)  # a new window


def test_a_budget_of_zero_never_spends():
    budget = RetryBudget(0.0)
    for _ in range(100):
        budget.record_call(0.0)
    assert not budget.try_spend(0.0)


def test_attempts_share_the_time_left():
    assert attempt_share(0.9, 2, None) == pytest.approx(0.3)
    assert attempt_share(0.6, 0, None) == pytest.approx(0.6)  # the last attempt gets all of it
    assert attempt_share(0.9, 2, 0.1) == pytest.approx(0.1)
    assert attempt_share(0.05, 2, 0.1) == pytest.approx(0.05)
    assert attempt_share(None, 2, None) is None
    assert attempt_share(None, 2, 0.2) == 0.2


def test_backoff_grows_with_jitter():
    delays = Retry(backoff=0.1, max_backoff=0.3).backoffs(random.Random(1))
    assert delays is not None
    for n, step in ((1, 0.1), (2, 0.2), (3, 0.3), (4, 0.3)):
        assert step / 2 <= delays.delay(n) <= step
    assert Retry(backoff=0).backoffs(random.Random(1)) is None


def test_the_running_95th_percentile():
    window = LatencyWindow(size=100, every=10, least=20)
    for _ in range(19):
        window.record(0.001)
    assert window.value is None
    window.record(0.001)
    assert window.value == 0.001
    for i in range(100):
        window.record(0.010 if i % 10 == 0 else 0.002)  # a tenth of them slow
    assert window.value == 0.010
    for _ in range(100):
        window.record(0.002)
    assert window.value == 0.002  # only the last 100 count


# --------------------------------------------------------------------------- real servers


class Node:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self.mode = "ok"  # "ok", "hang", "slow", "unavailable", "fail"
        self.cancelled = asyncio.Event()
        self.started = asyncio.Event()

    async def whoami(self, **kwargs):
        self.calls += 1
        self.started.set()
        if self.mode == "unavailable":
            raise geerpc.Unavailable("stopping")
        if self.mode == "fail":
            raise ValueError(f"{self.name} failed")
        if self.mode in ("hang", "slow"):
            try:
                await asyncio.sleep(60 if self.mode == "hang" else 0.5)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        return [self.name, kwargs]


@pytest.fixture
async def nodes():
    servers: list[geerpc.Server] = []

    async def make(count: int) -> list[Node]:
        made = []
        for _ in range(count):
            node = Node(f"n{len(servers)}")
            server = geerpc.Server()
            server.register(node, name="Node")
            await server.start("127.0.0.1", 0)
            node.address = server.address  # type: ignore[attr-defined]
            servers.append(server)
            made.append(node)
        return made

    yield make
    for server in servers:
        await server.stop(grace=0.2)


async def warm(xc: XClient, count: int = 20) -> None:
    """Calls that succeed, so the budget has calls to take a share of."""
    for _ in range(count):
        await xc.call("Node.whoami", timeout=2)


async def test_idempotent_is_not_sent_to_the_server(nodes):
    made = await nodes(1)
    async with XClient([made[0].address], retry=Retry()) as xc:
        assert await xc.call("Node.whoami", timeout=2, idempotent=True, x=1) == ["n0", {"x": 1}]
        reply = await xc.invoke("Node.whoami", (), {"idempotent": 5}, timeout=2, idempotent=True)
        assert reply.result == ["n0", {"idempotent": 5}]  # the remote method's own argument
    async with XClient([made[0].address]) as xc:  # the plain path too
        assert await xc.call("Node.whoami", timeout=2, idempotent=True) == ["n0", {}]


async def test_a_timed_out_attempt_is_retried_on_another_server(nodes):
    hanging, fine = await nodes(2)
    async with XClient([hanging.address, fine.address], SelectMode.ROUND_ROBIN,
                       retry=Retry(attempts=2, backoff=0.01, budget=1.0)) as xc:
        await warm(xc)
        hanging.mode = "hang"
        loop = asyncio.get_running_loop()
        for _ in range(2):  # one of them starts on the hanging server
            start = loop.time()
            name, _ = await xc.call("Node.whoami", timeout=1.0, idempotent=True)
            assert name == "n1"
            assert loop.time() - start < 0.9
        async with asyncio.timeout(2):
            await hanging.cancelled.wait()  # the timed-out attempt was cancelled on its server


async def test_calls_not_marked_idempotent_are_never_retried(nodes):
    hanging, fine = await nodes(2)
    async with XClient([hanging.address, fine.address], SelectMode.ROUND_ROBIN,
                       retry=Retry(attempts=3, budget=1.0)) as xc:
        await warm(xc)
        hanging.mode = "hang"
        outcomes = []
        for _ in range(2):
            try:
                outcomes.append((await xc.call("Node.whoami", timeout=0.3))[0])
            except geerpc.CallTimeout:
                outcomes.append("timeout")
        assert sorted(outcomes) == ["n1", "timeout"]


async def test_a_remote_error_is_never_retried(nodes):
    made = await nodes(3)
    async with XClient([n.address for n in made], retry=Retry(attempts=3, budget=1.0)) as xc:
        await warm(xc)
        for node in made:
            node.mode, node.calls = "fail", 0
        with pytest.raises(ValueError, match="failed"):
            await xc.call("Node.whoami", timeout=2, idempotent=True)
        assert sum(n.calls for n in made) == 1


async def test_unavailable_is_retried_when_failover_is_off(nodes):
    stopping, fine = await nodes(2)
    async with XClient([stopping.address, fine.address], SelectMode.ROUND_ROBIN, failover=False,
                       retry=Retry(attempts=2, backoff=0.01, budget=1.0)) as xc:
        await warm(xc)
        stopping.mode = "unavailable"
        assert [(await xc.call("Node.whoami", timeout=2, idempotent=True))[0] for _ in range(4)] == ["n1"] * 4
        with pytest.raises(geerpc.Unavailable):  # not idempotent: failover is off, so it fails
            for _ in range(2):
                await xc.call("Node.whoami", timeout=2)


async def test_failover_spends_no_budget(nodes):
    with __import__("socket").socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"tcp@127.0.0.1:{sock.getsockname()[1]}"
    (fine,) = await nodes(1)
    async with XClient([dead, fine.address], SelectMode.ROUND_ROBIN, retry=Retry(budget=0.0)) as xc:
        for _ in range(6):  # a budget of zero, and still every call gets through
            assert (await xc.call("Node.whoami", timeout=2, idempotent=True))[0] == "n0"


async def test_the_budget_caps_retries_when_everything_fails(nodes):
    made = await nodes(3)
    async with XClient([n.address for n in made], failover=False,
                       retry=Retry(attempts=3, backoff=0, budget=0.1)) as xc:
        await warm(xc, 30)
        for node in made:
            node.mode, node.calls = "unavailable", 0
        failed = 0
        for _ in range(30):
            try:
                await xc.call("Node.whoami", timeout=2, idempotent=True)
            except geerpc.Unavailable:
                failed += 1
        assert failed == 30
        sent = sum(n.calls for n in made)
        # 30 calls, and as retries at most a tenth of the 60 made in the window and the
        # reserve: not 90
        assert 30 <= sent <= 30 + 6 + RESERVE, sent


async def test_a_hedge_wins_and_the_slow_copy_is_cancelled_on_its_server(nodes):
    slow, fast = await nodes(2)
    async with XClient([slow.address, fast.address], SelectMode.ROUND_ROBIN, hedge_after=0.05,
                       retry=Retry(budget=1.0)) as xc:
        await warm(xc)
        slow.mode = "slow"
        loop = asyncio.get_running_loop()
        for _ in range(2):  # one of them starts on the slow server
            start = loop.time()
            assert (await xc.call("Node.whoami", timeout=2, idempotent=True))[0] == "n1"
            assert loop.time() - start < 0.4
        async with asyncio.timeout(2):
            await slow.cancelled.wait()  # the cancel reached the losing copy's handler


async def test_a_hedge_goes_to_another_server(nodes):
    slow, fast = await nodes(2)
    async with XClient([slow.address, fast.address], SelectMode.RANDOM, hedge_after=0.05,
                       retry=Retry(budget=1.0)) as xc:
        await warm(xc)
        slow.mode = "slow"
        loop = asyncio.get_running_loop()
        for _ in range(10):  # about half start on the slow server; each hedge goes to the other
            start = loop.time()
            assert (await xc.call("Node.whoami", timeout=2, idempotent=True))[0] == "n1"
            assert loop.time() - start < 0.4


async def test_no_hedge_without_budget(nodes):
    slow, fast = await nodes(2)
    async with XClient([slow.address, fast.address], SelectMode.ROUND_ROBIN, hedge_after=0.05,
                       retry=Retry(budget=0.0)) as xc:
        await warm(xc)
        slow.mode = "slow"
        names = sorted([(await xc.call("Node.whoami", timeout=2, idempotent=True))[0] for _ in range(2)])
        assert names == ["n0", "n1"]  # the slow server answered its call: nobody hedged it


async def test_hedging_at_the_running_p95(nodes):
    slow, fast = await nodes(2)
    async with XClient([slow.address, fast.address], SelectMode.ROUND_ROBIN, hedge_after="p95") as xc:
        assert xc._policy is not None and xc._policy.hedge_delay() is None  # nothing measured yet
        await warm(xc, 40)
        hedge_delay = xc._policy.hedge_delay()
        assert hedge_delay is not None and hedge_delay < 0.2
        slow.mode = "slow"
        loop = asyncio.get_running_loop()
        for _ in range(2):
            start = loop.time()
            assert (await xc.call("Node.whoami", timeout=2, idempotent=True))[0] == "n1"
            assert loop.time() - start < 0.4


async def test_least_loaded_with_retries_and_hedges(nodes):
    made = await nodes(4)
    async with XClient([n.address for n in made], SelectMode.LEAST_LOADED, hedge_after=0.05,
                       retry=Retry(budget=0.5)) as xc:
        await warm(xc, 40)
        made[0].mode = "hang"
        results = await asyncio.gather(*(xc.call("Node.whoami", timeout=1, idempotent=True) for _ in range(40)))
        assert all(name != "n0" for name, _ in results)


def test_sync_xclient_passes_idempotent():
    async def serve() -> tuple[geerpc.Server, str]:
        server = geerpc.Server()
        server.register(Node("s0"), name="Node")
        await server.start("127.0.0.1", 0)
        return server, server.address

    loop = asyncio.new_event_loop()
    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        server, address = asyncio.run_coroutine_threadsafe(serve(), loop).result(5)
        with SyncXClient([address], SelectMode.LEAST_LOADED, retry=Retry()) as xc:
            assert xc.call("Node.whoami", timeout=2, idempotent=True, a=1) == ["s0", {"a": 1}]
            assert xc.invoke("Node.whoami", (), {"b": 2}, timeout=2, idempotent=True).result == ["s0", {"b": 2}]
            assert xc.stats()[address].pending == 0
            with pytest.raises(TypeError, match="idempotent"):
                xc.call("Node.whoami", timeout=2, idempotent=None)  # type: ignore[arg-type]
        asyncio.run_coroutine_threadsafe(server.stop(grace=0.2), loop).result(5)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def test_without_a_hedge_attempts_run_in_the_callers_own_task(nodes):
    """A retried call that does not hedge needs no task per call: its attempts are
    awaited in the caller's task (as a plain call is), so a call answered at once
    costs what a plain one does. A hedging call's attempts are tasks of their own."""
    made = await nodes(1)
    tasks: list[asyncio.Task | None] = []

    async def note_task(call, proceed):
        tasks.append(asyncio.current_task())
        return await proceed()

    async with XClient([made[0].address], retry=Retry(attempts=2, budget=1.0), interceptors=[note_task]) as xc:
        assert (await xc.call("Node.whoami", timeout=2, idempotent=True))[0] == "n0"
    async with XClient([made[0].address], retry=Retry(attempts=2, budget=1.0), hedge_after=5.0,
                       interceptors=[note_task]) as xc:
        assert (await xc.call("Node.whoami", timeout=2, idempotent=True))[0] == "n0"
    assert tasks[0] is asyncio.current_task()
    assert tasks[1] is not asyncio.current_task()


@pytest.mark.parametrize("hedge_after", [None, 5.0], ids=["in-turn", "hedged"])
async def test_a_retried_call_cancelled_by_its_caller_is_cancelled(nodes, hedge_after):
    """Cancelling the caller cancels the attempt out (and the handler on its server),
    and the caller sees CancelledError, not an error of the XClient's."""
    (node,) = await nodes(1)
    node.mode = "hang"
    async with XClient([node.address], retry=Retry(attempts=3, budget=1.0), hedge_after=hedge_after) as xc:
        call = asyncio.ensure_future(xc.call("Node.whoami", timeout=30, idempotent=True))
        async with asyncio.timeout(5):
            await node.started.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        async with asyncio.timeout(5):
            await node.cancelled.wait()


@pytest.mark.parametrize("hedge_after", [None, 5.0], ids=["in-turn", "hedged"])
async def test_a_retried_call_out_when_its_xclient_closes_fails_with_connection_closed(nodes, hedge_after):
    (node,) = await nodes(1)
    node.mode = "hang"
    xc = XClient([node.address], retry=Retry(attempts=3, budget=1.0), hedge_after=hedge_after)
    call = asyncio.ensure_future(xc.call("Node.whoami", timeout=30, idempotent=True))
    async with asyncio.timeout(5):
        await node.started.wait()
    await xc.close()
    with pytest.raises(geerpc.ConnectionClosed):
        async with asyncio.timeout(5):
            await call
