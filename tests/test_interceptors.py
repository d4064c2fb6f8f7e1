"""Interceptors on both sides, over real sockets: order, refusals, results, deadlines,
``def`` handlers, the inline fast path and its fallback, and XClient's once-per-attempt."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from conftest import eventually

import geerpc
from geerpc import protocol as p
from geerpc.interceptors import Resume, awaits_only_proceed, check_interceptors
from geerpc.xclient import SelectMode, XClient


class Svc:
    def __init__(self) -> None:
        self.ran: list[str] = []
        self.gate = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def add(self, a, b):  # no await: inline
        self.ran.append("add")
        return a + b

    async def later(self, a):  # awaits: a task
        await asyncio.sleep(0)
        self.ran.append("later")
        return a

    def mul(self, a, b):  # plain def: a worker thread
        self.ran.append(f"mul on {threading.current_thread().name}")
        return a * b

    async def wait(self):
        try:
            await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return "released"

    def block(self, seconds):
        time.sleep(seconds)
        return seconds

    async def whoami(self):
        return dict(geerpc.current_call().metadata)


def recorder(name: str, log: list):
    async def interceptor(call, proceed):
        log.append(f"{name} in {call.service_method}")
        result = await proceed()
        log.append(f"{name} out")
        return result
    interceptor.__name__ = name
    return interceptor


async def serve(*interceptors, service: Svc | None = None) -> tuple[geerpc.Server, Svc]:
    service = service or Svc()
    server = geerpc.Server(interceptors=list(interceptors))
    server.register(service)
    await server.start("127.0.0.1", 0)
    return server, service


# --------------------------------------------------------------------------- server side


@pytest.mark.parametrize("method, args, result", [("Svc.add", (1, 2), 3), ("Svc.later", (7,), 7),
                                                   ("Svc.mul", (2, 3), 6)])
async def test_server_interceptors_run_outermost_first_around_every_kind_of_handler(method, args, result):
    log: list[str] = []
    server, service = await serve(recorder("a", log), recorder("b", log), recorder("c", log))
    try:
        async with await geerpc.dial(server.address) as client:
            assert await client.call(method, *args) == result
        assert log == [f"a in {method}", f"b in {method}", f"c in {method}", "c out", "b out", "a out"]
        assert len(service.ran) == 1
    finally:
        await server.stop()


async def test_interceptors_run_on_the_loop_and_a_def_handler_on_its_thread():
    threads: list[str] = []

    async def where(call, proceed):
        threads.append(threading.current_thread().name)
        return await proceed()

    server, service = await serve(where)
    try:
        async with await geerpc.dial(server.address) as client:
            assert await client.call("Svc.mul", 4, 5) == 20
        assert threads == [threading.current_thread().name]  # the test's loop runs the server too
        assert service.ran[0].startswith("mul on geerpc-handler")
    finally:
        await server.stop()


@pytest.mark.parametrize("error, cls, code", [
    (geerpc.PermissionDenied("tenant acme may not"), geerpc.PermissionDenied, 8),
    (geerpc.Unauthenticated("no token"), geerpc.Unauthenticated, 7),
    (geerpc.InvalidArguments("the interceptor says no"), geerpc.InvalidArguments, 3),
])
@pytest.mark.parametrize("method", ["Svc.add", "Svc.later", "Svc.mul"])
async def test_a_refusing_interceptor_answers_with_its_own_error_and_the_handler_does_not_run(error, cls, code,
                                                                                            method):
    async def refuse(call, proceed):
        raise error

    server, service = await serve(refuse)
    try:
        async with await geerpc.dial(server.address) as client:
            with pytest.raises(cls) as caught:
                await client.call(method, 1, 2) if method != "Svc.later" else await client.call(method, 1)
            assert caught.value.type == type(error).__name__ and str(caught.value) == str(error)
            assert caught.value.code == code and caught.value.received
        assert service.ran == []
    finally:
        await server.stop()


async def test_the_new_codes_are_on_the_wire():
    async def refuse(call, proceed):
        raise geerpc.Unauthenticated("who are you")

    server, _ = await serve(refuse)
    try:
        from _raw import Raw

        raw = await Raw.handshake(server.address)
        try:
            await raw.send(p.encode_request(1, "Svc.add", [1, 2], {}, None))
            assert await raw.read_response() == p.Response(1, (7, "Unauthenticated", "who are you"), None)
        finally:
            await raw.close()
    finally:
        await server.stop()


async def test_an_interceptor_raising_anything_else_answers_as_the_handler_would(caplog):
    async def broken(call, proceed):
        raise KeyError("missing")

    server, service = await serve(broken)
    try:
        async with await geerpc.dial(server.address) as client:
            with pytest.raises(geerpc.RemoteError) as caught:
                await client.call("Svc.add", 1, 2)
            assert isinstance(caught.value, KeyError) and caught.value.type == "KeyError"
            assert caught.value.code == 1
        assert service.ran == []
    finally:
        await server.stop()


async def test_an_interceptor_may_replace_the_result_and_set_reply_metadata():
    async def wrap(call, proceed):
        result = await proceed()
        call.reply_metadata["wrapped"] = "yes"
        return {"value": result}

    server, _ = await serve(wrap)
    try:
        async with await geerpc.dial(server.address) as client:
            reply = await client.invoke("Svc.add", (1, 2))
            assert reply.result == {"value": 3} and dict(reply.metadata) == {"wrapped": "yes"}
            assert await client.call("Svc.mul", 2, 2) == {"value": 4}
    finally:
        await server.stop()


async def test_an_interceptor_sees_the_callers_metadata_and_arguments():
    seen = []

    async def look(call, proceed):
        seen.append((dict(call.metadata), call.args, call.kwargs))
        return await proceed()

    server, _ = await serve(look)
    try:
        async with await geerpc.dial(server.address) as client:
            await client.call("Svc.add", 1, b=2, metadata={"tenant": "acme"})
        assert seen == [({"tenant": "acme"}, [1], {"b": 2})]
    finally:
        await server.stop()


async def test_an_error_from_another_server_is_passed_on_as_the_handlers_error():
    """A RemoteError that arrived in a reply is not this server's answer: a handler that
    lets B's PermissionDenied through answers APPLICATION, not PERMISSION_DENIED."""
    async def refuse(call, proceed):
        raise geerpc.PermissionDenied("B says no")

    b, _ = await serve(refuse)

    class Front:
        def __init__(self) -> None:
            self.client: geerpc.Client | None = None

        async def relay(self):
            assert self.client is not None
            return await self.client.call("Svc.add", 1, 2)

    front = Front()
    a = geerpc.Server()
    a.register(front)
    await a.start("127.0.0.1", 0)
    try:
        front.client = await geerpc.dial(b.address)
        async with await geerpc.dial(a.address) as client:
            with pytest.raises(geerpc.RemoteError) as caught:
                await client.call("Front.relay")
            assert not isinstance(caught.value, geerpc.PermissionDenied)
            assert caught.value.type == "PermissionDenied" and caught.value.code == 1
        await front.client.close()
    finally:
        await a.stop()
        await b.stop()


async def test_a_deadline_stops_an_intercepted_call():
    async def passthrough(call, proceed):
        return await proceed()

    server, service = await serve(passthrough)
    try:
        async with await geerpc.dial(server.address) as client:
            with pytest.raises(geerpc.CallTimeout):
                await client.call("Svc.wait", timeout=0.2)
            await eventually(service.cancelled.is_set, what="the handler to be cancelled")
    finally:
        await server.stop()


async def test_a_deadline_answers_an_intercepted_def_handler_that_runs_on():
    async def passthrough(call, proceed):
        return await proceed()

    server, _ = await serve(passthrough)
    try:
        async with await geerpc.dial(server.address, handle_timeout=0.2) as client:
            with pytest.raises(geerpc.CallTimeout, match="did not finish within 0.2 s on the server"):
                await client.call("Svc.block", 1.0)
            assert await client.call("Svc.add", 1, 1) == 2
    finally:
        await server.stop(grace=2.0)


async def test_a_client_cancelling_an_intercepted_call_cancels_the_handler():
    async def slow_interceptor(call, proceed):
        await asyncio.sleep(0)
        return await proceed()

    server, service = await serve(slow_interceptor)
    try:
        async with await geerpc.dial(server.address) as client:
            task = asyncio.ensure_future(client.call("Svc.wait"))
            await eventually(lambda: server.snapshot().calls_in_flight == 1, what="the call to run")
            task.cancel()
            await eventually(service.cancelled.is_set, what="the handler to be cancelled")
            assert await client.call("Svc.add", 2, 2) == 4
    finally:
        await server.stop()


# --------------------------------------------------------------------------- the inline path


def test_awaits_only_proceed_reads_the_bytecode():
    async def passthrough(call, proceed):
        return await proceed()

    async def twice(call, proceed):
        await proceed()
        return await proceed()

    async def sleeps(call, proceed):
        await asyncio.sleep(0)
        return await proceed()

    async def with_async_with(call, proceed):
        async with asyncio.timeout(1):
            return await proceed()

    async def rebinds(call, proceed):
        proceed = asyncio.sleep
        return await proceed()

    async def other_name(call, go):
        return await go()

    async def calls_with_args(call, proceed):
        return await proceed(1)

    class Obj:
        async def __call__(self, call, proceed):
            try:
                return await proceed()
            finally:
                pass

        async def method(self, call, proceed):
            return await proceed()

    assert awaits_only_proceed(passthrough) and awaits_only_proceed(twice)
    assert awaits_only_proceed(other_name) and awaits_only_proceed(Obj()) and awaits_only_proceed(Obj().method)
    assert not awaits_only_proceed(sleeps)
    assert not awaits_only_proceed(with_async_with)
    assert not awaits_only_proceed(rebinds)
    assert not awaits_only_proceed(calls_with_args)


async def test_passthrough_interceptors_keep_the_inline_path():
    async def passthrough(call, proceed):
        return await proceed()

    async def sleeps(call, proceed):
        await asyncio.sleep(0)
        return await proceed()

    fast, _ = await serve(passthrough)
    slow, _ = await serve(passthrough, sleeps)
    try:
        assert fast.inline_interceptors and not slow.inline_interceptors
    finally:
        await fast.stop()
        await slow.stop()


async def test_a_chain_thought_inline_that_suspends_carries_on_in_a_task():
    """If an inline chain suspends after all, it goes on where it stopped, under its deadline."""
    log: list[str] = []

    async def sleeps(call, proceed):
        log.append("before")
        await asyncio.sleep(0.01)
        log.append("after")
        return await proceed()

    async def hangs(call, proceed):
        await asyncio.Event().wait()
        return await proceed()

    for interceptor in (sleeps, hangs):
        server, service = await serve(interceptor)
        server.inline_interceptors = True  # as if the bytecode had fooled us
        try:
            async with await geerpc.dial(server.address) as client:
                if interceptor is sleeps:
                    assert await client.call("Svc.add", 1, 2) == 3
                    assert log == ["before", "after"] and service.ran == ["add"]
                else:
                    with pytest.raises(geerpc.CallTimeout):
                        await client.call("Svc.add", 1, 2, timeout=0.2)
                    assert service.ran == []
                    await eventually(lambda: server.snapshot().calls_in_flight == 0, what="the call to end")
        finally:
            await server.stop()


async def test_resume_relays_sends_throws_and_close():
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    steps: list[str] = []

    async def body():
        steps.append("start")
        value = await future
        steps.append(f"got {value}")
        return value * 2

    coroutine = body()
    yielded = coroutine.send(None)
    assert yielded is future and steps == ["start"]

    async def resumed():
        return await Resume(coroutine, yielded)

    task = asyncio.ensure_future(resumed())
    await asyncio.sleep(0)
    future.set_result(21)
    assert await task == 42 and steps == ["start", "got 21"]

    # a cancel reaches the coroutine where it waits
    future2 = loop.create_future()
    cancelled = asyncio.Event()

    async def waits():
        try:
            await future2
        except asyncio.CancelledError:
            cancelled.set()
            raise

    coroutine2 = waits()
    task2 = asyncio.ensure_future(_await(Resume(coroutine2, coroutine2.send(None))))
    await asyncio.sleep(0)
    task2.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task2
    assert cancelled.is_set()

    # close() closes the coroutine where it stopped
    coroutine3 = waits()
    future2 = loop.create_future()
    coroutine3.send(None)
    Resume(coroutine3, None).close()
    assert coroutine3.cr_frame is None


async def _await(awaitable):
    return await awaitable


# --------------------------------------------------------------------------- client side


async def test_client_interceptors_run_outermost_first_and_may_change_the_call():
    log: list[str] = []

    async def tenant(call, proceed):
        log.append(f"tenant {call.service_method} to {call.address}")
        call.metadata["tenant"] = "acme"
        reply = await proceed()
        log.append("tenant back")
        return reply

    async def upper(call, proceed):
        log.append(f"upper sees {dict(call.metadata)}")
        call.metadata["tenant"] = call.metadata["tenant"].upper()
        return await proceed()

    server, _ = await serve()
    try:
        async with await geerpc.dial(server.address, interceptors=[tenant, upper]) as client:
            assert await client.call("Svc.whoami") == {"tenant": "ACME"}
            reply = await client.invoke("Svc.whoami", metadata={"user": "u"})
            assert reply.result == {"tenant": "ACME", "user": "u"}
        assert log[:3] == [f"tenant Svc.whoami to {server.address}", "upper sees {'tenant': 'acme'}",
                           "tenant back"]
    finally:
        await server.stop()


async def test_a_client_interceptor_may_change_args_and_timeout():
    seen = []

    async def change(call, proceed):
        seen.append(call.timeout)
        if call.service_method == "Svc.add":
            call.args = [10, 20]
        call.timeout = 0.2
        return await proceed()

    server, _ = await serve()
    try:
        async with await geerpc.dial(server.address, interceptors=[change]) as client:
            assert await client.call("Svc.add", 1, 2, timeout=5) == 30
            assert 4 < seen[0] <= 5
            with pytest.raises(geerpc.CallTimeout, match="after 0.2 s"):
                await client.call("Svc.wait", timeout=30)
    finally:
        await server.stop()


async def test_a_client_interceptor_that_raises_sends_nothing():
    async def refuse(call, proceed):
        raise PermissionError("not from here")

    server, service = await serve()
    try:
        async with await geerpc.dial(server.address, interceptors=[refuse]) as client:
            with pytest.raises(PermissionError):
                await client.call("Svc.add", 1, 2)
        assert service.ran == []
    finally:
        await server.stop()


async def test_a_client_interceptor_may_retry():
    async def twice(call, proceed):
        await proceed()
        return await proceed()

    server, service = await serve()
    try:
        async with await geerpc.dial(server.address, interceptors=[twice]) as client:
            assert await client.call("Svc.add", 1, 2) == 3
        assert service.ran == ["add", "add"]
    finally:
        await server.stop()


async def test_a_client_interceptor_must_return_a_reply():
    async def wrong(call, proceed):
        return (await proceed()).result

    server, _ = await serve()
    try:
        async with await geerpc.dial(server.address, interceptors=[wrong]) as client:
            with pytest.raises(TypeError, match="returned int, not a geerpc.Reply"):
                await client.call("Svc.add", 1, 2)
    finally:
        await server.stop()


def test_interceptors_must_be_async_callables():
    def plain(call, proceed):
        return proceed()

    with pytest.raises(TypeError, match="must be an async callable"):
        geerpc.Server(interceptors=[plain])
    with pytest.raises(TypeError, match="must be a list"):
        check_interceptors(plain, "server")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be an async callable"):
        XClient(["tcp@127.0.0.1:1"], interceptors=[print])


async def test_dial_refuses_a_plain_function_as_an_interceptor():
    with pytest.raises(TypeError, match="client interceptor"):
        await geerpc.dial("tcp@127.0.0.1:1", interceptors=[lambda call, proceed: proceed()])


async def test_sync_client_runs_its_interceptors():
    async def tenant(call, proceed):
        call.metadata["tenant"] = "sync"
        return await proceed()

    server, _ = await serve()
    try:
        def work():
            with geerpc.SyncClient(server.address, interceptors=[tenant]) as client:
                return client.call("Svc.whoami"), client.invoke("Svc.whoami", metadata={"a": "b"}).result

        plain, full = await asyncio.to_thread(work)
        assert plain == {"tenant": "sync"} and full == {"tenant": "sync", "a": "b"}
    finally:
        await server.stop()


async def test_xclient_interceptors_run_once_per_attempt():
    attempts: list[str] = []

    async def note(call, proceed):
        attempts.append(call.address)
        call.metadata["attempt"] = str(len(attempts))
        return await proceed()

    server, _ = await serve()
    dead = geerpc.Server()
    await dead.start("127.0.0.1", 0)
    dead_address = dead.address
    await dead.stop()
    try:
        async with XClient([dead_address, server.address], SelectMode.ROUND_ROBIN, interceptors=[note]) as xc:
            for _ in range(2):
                attempts.clear()
                result = await xc.call("Svc.whoami", timeout=5)
                assert attempts[-1] == server.address and result == {"attempt": str(len(attempts))}
            # at least one of the two round-robin calls tried the dead server first
            reply = await xc.invoke("Svc.whoami", metadata={"x": "y"})
            assert reply.result["x"] == "y"
    finally:
        await server.stop()


async def test_xclient_broadcast_runs_the_interceptors_once_per_server():
    attempts: list[str] = []

    async def note(call, proceed):
        attempts.append(call.address)
        return await proceed()

    one, _ = await serve()
    two, _ = await serve()
    try:
        async with XClient([one.address, two.address], interceptors=[note]) as xc:
            assert await xc.broadcast("Svc.add", 1, 2, metadata={"k": "v"}) == 3
        assert sorted(attempts) == sorted([one.address, two.address])
    finally:
        await one.stop()
        await two.stop()


@pytest.mark.parametrize("error", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
async def test_an_interceptor_raising_a_base_exception_is_answered_and_the_server_lives(error):
    async def bad(call, proceed):
        if call.service_method == "Svc.add":
            raise error
        return await proceed()

    server, _ = await serve(bad)
    try:
        async with await geerpc.dial(server.address) as client:
            with pytest.raises(geerpc.RemoteError) as caught:
                await client.call("Svc.add", 1, 2)
            assert caught.value.type == type(error).__name__
            assert await client.call("Svc.mul", 2, 2) == 4
    finally:
        await server.stop()
