"""Hostile calls against a real server on 127.0.0.1: what a cancelled, hung-up or
odd request leaves behind, and odd Option values (HOSTILE.md rows 38 and 43).

Each test checks the reply or the close expected, then that the server still serves.
Nothing here sleeps to wait for something to happen (see ``conftest.eventually``).
"""

from __future__ import annotations

import asyncio
import json
import gc
import logging
import tracemalloc
import weakref

import pytest
from _garbage import alive, garbage, leaves_no_garbage
from _raw import Raw, assert_serving, option, raw_connection, request, serving
from conftest import Arith, eventually

from geerpc import protocol as p

BLOB = 8 * 1024 * 1024


class Holder:
    """A handler that holds its (large) argument until it is cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def hold(self, blob):
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return len(blob)


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize("how", ["cancel", "eof"])
@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_cancelled_call_frees_its_arguments_without_the_cyclic_gc(how, timeout):
    """Row 38. The check: with the cyclic GC disabled, the memory tracemalloc traces
    must fall back below the level before the call once the handler is cancelled.
    An 8 MiB argument dwarfs everything else a call allocates, and freed by reference
    counting alone it is gone the moment the task is; kept by a reference cycle
    (task -> CancelledError -> traceback -> frame -> task) it would stay until a
    ``gc.collect()`` that never comes. The request frame is built before tracing
    starts, so only what the server allocates is counted."""
    holder = Holder()
    async with serving(Arith(), holder) as server:
        frame = request(1, "Holder.hold", b"x" * BLOB, timeout=timeout)
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            raw = await Raw.handshake(server.address)
            try:
                base = _traced()
                await raw.send(frame)
                async with asyncio.timeout(5):
                    await holder.started.wait()
                assert _traced() > base + BLOB  # the argument is resident while the call runs
                if how == "cancel":
                    await raw.send(p.encode_cancel(1))
                else:
                    raw.writer.write_eof()
                async with asyncio.timeout(5):
                    await holder.cancelled.wait()
                await eventually(lambda: _traced() < base + BLOB // 2, what="the argument freed")
            finally:
                await raw.close()
        finally:
            tracemalloc.stop()
            gc.enable()
        await assert_serving(server)


@pytest.mark.parametrize("running", [None, "Holder.hold", "Arith.block", "aborted"])
async def test_a_closed_connection_is_freed_without_the_cyclic_gc(running):
    """Row 38, for the connection itself. A connection and its parts refer to one
    another (its calls call it back); left so once it closes, each closed connection
    is a cycle that only a full collection frees, and a server whose clients come
    and go holds thousands of them, with their buffers, between collections. Once
    nothing of it runs, it must be freed by reference counting alone: with nothing
    running, with an ``async def`` call that the hang-up cancels, and with a ``def``
    call still running on a worker thread when the client goes; and when the server
    aborts it. So must its transport, a cycle of asyncio's own (``tcp.release``:
    Python 3.12 clears it in close() but not in abort(), 3.11 never)."""
    holder = Holder()
    async with serving(Arith(), holder) as server:
        gc.collect()
        gc.disable()
        try:
            raw = await Raw.handshake(server.address)
            await raw.send(request(1, "Arith.add", 1, 2))
            assert (await raw.read_response(timeout=5)).result == 3
            if running == "Holder.hold":
                await raw.send(request(2, running, b"x"))
                async with asyncio.timeout(5):
                    await holder.started.wait()
            elif running == "Arith.block":
                await raw.send(request(2, running, 0.2))
                await eventually(lambda: any(c.running for c in server._connections), what="the def call running")
            (connection,) = server._connections
            gone = weakref.ref(connection)
            transport = weakref.ref(connection._transport)  # asyncio's own cycle
            if running == "aborted":  # by the server (eviction, a protocol error)
                connection.abort()
            del connection
            await raw.close()
            await eventually(lambda: gone() is None, timeout=5, what="the closed connection freed")
            await eventually(lambda: transport() is None, timeout=5, what="its transport freed")
        finally:
            gc.enable()
        await assert_serving(server)


async def _fail(client, how: str, arith: Arith) -> None:
    import geerpc

    if how == "remote error":
        with pytest.raises(geerpc.RemoteError):
            await client.call("Arith.fail", "no", timeout=5)
    elif how == "not found":
        with pytest.raises(geerpc.MethodNotFound):
            await client.call("Arith.nope", timeout=5)
    elif how == "client timeout":
        with pytest.raises(geerpc.CallTimeout):
            await client.call("Arith.sleep", 5, timeout=0.02)
    elif how == "def timeout":  # the server's handle timeout gives up on a def handler on its worker
        with pytest.raises(geerpc.CallTimeout):
            await client.call("Arith.block", 0.1, timeout=5)
    else:
        arith.started.clear()
        task = asyncio.ensure_future(client.call("Arith.sleep", 5, timeout=5))
        async with asyncio.timeout(5):
            await arith.started.wait()  # the handler runs: the cancel reaches the server
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("how", ["remote error", "not found", "client timeout", "def timeout", "cancel"])
async def test_failed_calls_leave_no_reference_cycles(how):
    """Row 38, for calls that fail: the soak's clients grew between Python's full
    collections, by the failed calls kept as cycles (an error's traceback holds the
    frame that awaited it, whose future holds the error), and its server by each
    timed-out ``def`` call (a timer handle that has run keeps its call). A process
    whose calls often fail must free them by reference counting alone."""
    import geerpc

    def delivered() -> bool:  # every abandoned def call ended on its worker and was dropped
        pool = server._workers
        return pool._idle._value == len(pool._threads) and not pool._outcomes and not pool._wake_pending

    async def settled() -> None:
        if how == "def timeout":
            await eventually(delivered, what="the timed-out def calls ended on their workers")
        assert await client.call("Arith.add", 1, 2) == 3

    arith = Arith()
    async with serving(arith, handle_timeout=0.02 if how == "def timeout" else None) as server:
        async with await geerpc.dial(server.address) as client:
            await leaves_no_garbage(lambda: _fail(client, how, arith), settled=settled)


@pytest.mark.parametrize("how", ["closed client", "lost with calls pending"])
async def test_calls_failed_by_a_lost_connection_leave_no_reference_cycles(how):
    """A connection's ConnectionClosed is handed to every call pending on it and to
    every later call: one object raised again and again would gather every raise's
    frames in its traceback (growing as long as the client lives) and make a cycle
    through each frame that holds the connection. Each call gets a copy."""
    import geerpc

    async with serving(Arith()) as server:
        client = await geerpc.dial(server.address)
        try:
            gc.collect()
            gc.disable()
            old = alive()
            try:
                errors: list[BaseException] = []
                if how == "closed client":
                    await client.close()
                    for _ in range(3):
                        try:
                            await client.call("Arith.add", 1, 2)
                        except geerpc.ConnectionClosed as exc:
                            errors.append(exc)
                else:
                    calls = [asyncio.ensure_future(client.call("Arith.sleep", 30)) for _ in range(3)]
                    await eventually(lambda: any(c.running for c in server._connections), what="the calls running")
                    for connection in list(server._connections):
                        connection.abort()
                    errors = await asyncio.gather(*calls, return_exceptions=True)
                    assert all(isinstance(e, geerpc.ConnectionClosed) for e in errors), errors
                assert len({id(e) for e in errors}) == 3  # a copy each
                del errors
                assert garbage(old) == []
            finally:
                gc.enable()
        finally:
            await client.close()


class Counting:
    async def count(self, n):
        for i in range(n):
            yield i


@pytest.mark.parametrize("how", ["failed dial", "failover", "stream failover"])
async def test_failed_dials_and_failovers_leave_no_reference_cycles(how):
    """A server that is down: dialing it fails (each time), and an XClient fails over
    from it to another, for a call or a stream. None may leave the dial's error in a cycle."""
    import socket

    import geerpc
    from geerpc.xclient import SelectMode, XClient

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        down = f"tcp@127.0.0.1:{probe.getsockname()[1]}"  # closed when the block ends: refused
    async with serving(Arith(), Counting()) as server:
        xclient = XClient([down, server.address], SelectMode.ROUND_ROBIN)

        async def fail() -> None:
            if how == "failed dial":
                with pytest.raises(geerpc.ConnectError):
                    await geerpc.dial(down, connect_timeout=5)
            elif how == "failover":  # round robin: one of two calls tries the server that is down first
                for _ in range(2):
                    assert await xclient.call("Arith.add", 1, 2, timeout=5) == 3
            else:
                for _ in range(2):
                    assert [i async for i in xclient.stream("Counting.count", 2, timeout=5)] == [0, 1]
        try:
            await leaves_no_garbage(fail)
        finally:
            await xclient.close()


@pytest.mark.parametrize("how", ["remote error", "timeout"])
@pytest.mark.parametrize("kind", ["xclient", "least-loaded", "retry", "hedge", "broadcast", "sync", "sync-x"])
async def test_failed_xclient_and_blocking_calls_leave_no_reference_cycles(kind, how):
    """As above, through an XClient (its attempts, retries, hedges and broadcasts hold
    their copies' errors) and the blocking clients (whose future holds the error)."""
    import geerpc
    from geerpc.sync import SyncClient, SyncXClient
    from geerpc.xclient import Retry, SelectMode, XClient

    method, args, timeout = ("Arith.fail", ("no",), 5.0) if how == "remote error" else ("Arith.sleep", (5,), 0.05)
    async with serving(Arith()) as first, serving(Arith()) as second:
        addresses = [first.address, second.address]
        if kind in ("sync", "sync-x"):
            # made on a thread: a SyncClient dials at once, and this loop is the servers'
            blocking = await asyncio.to_thread(*((SyncClient, first.address) if kind == "sync"
                                                 else (SyncXClient, addresses)))

            async def fail() -> None:
                with pytest.raises((geerpc.RemoteError, geerpc.CallTimeout)):
                    await asyncio.to_thread(blocking.call, method, *args, timeout=timeout)
        else:
            options = {"least-loaded": {"mode": SelectMode.LEAST_LOADED},
                       "retry": {"retry": Retry(attempts=2, budget=1.0)},
                       "hedge": {"retry": Retry(attempts=2, budget=1.0), "hedge_after": 5.0}}.get(kind, {})
            xclient = XClient(addresses, **options)

            async def fail() -> None:
                with pytest.raises((geerpc.RemoteError, geerpc.CallTimeout)):
                    if kind == "broadcast":
                        await xclient.broadcast(method, *args, timeout=timeout)
                    else:
                        await xclient.call(method, *args, timeout=timeout, idempotent=True)
        try:
            await leaves_no_garbage(fail)
        finally:
            if kind in ("sync", "sync-x"):
                await asyncio.to_thread(blocking.close)
            else:
                await xclient.close()


def _option_text(**fields) -> str:
    return option(**fields).decode()


@pytest.mark.parametrize("line,refusal", [
    (option(HandleTimeout=2**1024), "HandleTimeout must be an integer from 0 to 9223372036854775807, not 1797"),
    (option(HandleTimeout=2**63), "HandleTimeout must be an integer from 0 to 9223372036854775807, not 9223"),
    (option(ConnectTimeout=2**1024), "ConnectTimeout must be an integer"),
    (option(MaxFrameSize=2**1024), "MaxFrameSize must be an integer"),
    (_option_text(HandleTimeout=5).encode("utf-16-le"), None),
    (_option_text(HandleTimeout=5).encode("utf-32"), None),
    (option().replace(b'"HandleTimeout": 0', b'"HandleTimeout": 1.0'), "HandleTimeout must be an integer "
     "from 0 to 9223372036854775807, not 1.0"),
    (option().replace(b'"HandleTimeout": 0', b'"HandleTimeout": 1e+10'), "not 10000000000.0"),
], ids=["handle-2^1024", "handle-2^63", "connect-2^1024", "frame-2^1024", "utf-16", "utf-32", "1.0", "1e+10"])
async def test_odd_option_values_are_a_counted_protocol_error_without_traceback(line, refusal, caplog):
    """Row 43: the connection is closed before any call, the close is counted as the
    peer's protocol error, and nothing is logged above DEBUG (no traceback). An Option
    that is ours but has a wrong field gets a refusal line saying which; bytes that are
    not UTF-8 JSON get nothing."""
    arith = Arith()
    async with serving(arith) as server:
        with caplog.at_level(logging.DEBUG, logger="geerpc"), caplog.at_level(logging.DEBUG, logger="asyncio"):
            async with raw_connection(server.address, handshake=False) as raw:
                await raw.send(line + request(1, "Arith.add", 1, 2))
                answer = await raw.read_until_closed()
                if refusal is None:
                    assert answer == b""
                else:
                    assert answer.endswith(b"\n") and refusal in json.loads(answer)["Error"]
            await eventually(lambda: server.protocol_errors == 1, what="the protocol error counted")
        assert [r for r in caplog.records if r.levelno > logging.DEBUG] == []
        assert arith.calls == 0
        await assert_serving(server)


@pytest.mark.parametrize("started", [True, False], ids=["running", "not-yet-started"])
async def test_cancelled_seq_can_be_reused_at_once_for_an_async_handler(started):
    """A Cancel followed at once by a request with the same seq: the new call is
    served (the cancelled task may not have ended yet), and it is no protocol error."""
    arith = Arith()
    async with serving(arith) as server:
        async with raw_connection(server.address) as raw:
            first = request(1, "Arith.sleep", 30)
            if started:
                await raw.send(first)
                async with asyncio.timeout(5):
                    await arith.started.wait()
                first = b""
            await raw.send(first + p.encode_cancel(1) + request(1, "Arith.add", 1, 2))
            assert await raw.read_response() == p.Response(1, None, 3)
            await raw.send(request(1, "Arith.sleep", 0))  # and once more, on a task
            assert await raw.read_response() == p.Response(1, None, 0)
        assert server.protocol_errors == 0
        await assert_serving(server)


class Counted:
    """One handler per way the server runs a call, each counting its starts."""

    def __init__(self) -> None:
        self.starts = 0

    async def inline(self, x):
        self.starts += 1
        return x

    async def task(self, x):
        self.starts += 1
        await asyncio.sleep(0)
        return x

    def thread(self, x):
        self.starts += 1
        return x


@pytest.mark.parametrize("handle_timeout", [None, 5.0])
@pytest.mark.parametrize("method", ["inline", "task", "thread"])
async def test_request_timeout_zero_means_no_deadline(method, handle_timeout):
    """A request's timeout of 0 means no deadline, as HandleTimeout 0 in the Option:
    the call runs and is answered normally (only a handle timeout would bound it)."""
    counted = Counted()
    async with serving(Arith(), counted, handle_timeout=handle_timeout) as server:
        async with raw_connection(server.address) as raw:
            for seq, timeout in ((1, 0), (2, 0.0)):
                await raw.send(request(seq, f"Counted.{method}", seq, timeout=timeout))
                assert await raw.read_response() == p.Response(seq, None, seq)
        assert counted.starts == 2
        await assert_serving(server)


async def test_a_call_answered_timeout_before_it_ran_never_starts_its_handler():
    """With a timeout of 10 µs most deadlines pass between the read that carried 200
    requests and the first step of their tasks: those calls are answered TIMEOUT, and
    none of their handlers started."""
    method = "task"
    counted = Counted()
    async with serving(Arith(), counted) as server:
        async with raw_connection(server.address) as raw:
            frames = b"".join(request(seq, f"Counted.{method}", seq, timeout=1e-5) for seq in range(1, 201))
            await raw.send(frames)
            replies = [await raw.read_response() for _ in range(200)]
        assert {r.error[0] for r in replies if r.error} <= {p.ErrorCode.TIMEOUT}
        assert counted.starts == sum(1 for r in replies if r.error is None)
        await assert_serving(server)


@pytest.mark.parametrize("server_limit,client_ns,effective_ns", [
    (2.0, 5_000_000_000, 2_000_000_000),
    (2.0, 1_000_000_000, 1_000_000_000),
    (2.0, 0, 2_000_000_000),
    (None, 0, 0),
    (None, 3, 3),
])
async def test_the_ack_states_the_handle_timeout_in_effect(server_limit, client_ns, effective_ns):
    """The server's acknowledgement carries the smaller of the two HandleTimeouts
    (0 = none), not the client's value echoed back."""
    async with serving(Arith(), handle_timeout=server_limit) as server:
        async with raw_connection(server.address, handshake=False) as raw:
            await raw.send(option(HandleTimeout=client_ns))
            ack = await raw.read_ack()
            assert ack["HandleTimeout"] == effective_ns
