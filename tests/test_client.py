"""Client behaviour against a real server on loopback (or a scripted fake one): calls, timeouts,
cancellation, loss."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from _raw import ACK, fake_server, read_message

import geerpc
from conftest import PYTHON, ROOT, subprocess_env
from geerpc import protocol as p


async def test_positional_and_keyword_calls(client):
    assert await client.call("Arith.add", 1, 2) == 3
    assert await client.call("Arith.add", a=1, b=2) == 3
    assert await client.call("Arith.mul", 3, 4) == 12  # a plain def method


async def test_values_round_trip(client):
    value = {"s": "héllo", "b": b"\x00\xff", "n": [1, 2.5, None, True], "big": 2**63, "neg": -(2**63)}
    assert await client.call("Arith.echo", value) == value


async def test_calls_run_concurrently_and_replies_match_by_seq(client, arith):
    slow = asyncio.ensure_future(client.call("Arith.sleep", 30))
    await arith.started.wait()
    # the slow call is in flight; fast ones on the same connection are not held up
    results = await asyncio.gather(*(client.call("Arith.add", i, i) for i in range(100)))
    assert results == [2 * i for i in range(100)]
    assert not slow.done()
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow


async def test_blocking_plain_method_does_not_stall_other_calls(client):
    blocked = asyncio.ensure_future(client.call("Arith.block", 1.0))
    async with asyncio.timeout(0.8):  # much less than the blocking call takes
        for _ in range(20):
            assert await client.call("Arith.add", 1, 1) == 2
    assert not blocked.done()
    assert await blocked == 1.0


async def test_call_timeout_removes_pending_and_late_reply_is_dropped():
    received: list[p.Request | p.Cancel] = []
    late_reply_sent = asyncio.Event()

    async def server(reader, writer):  # answers the first call only after the client gave up
        await reader.readline()
        writer.write(ACK)
        received.append(await read_message(reader))  # the call that times out
        received.append(await read_message(reader))  # and the Cancel sent when it did
        writer.write(p.encode_response(received[0].seq, "late"))
        await writer.drain()
        late_reply_sent.set()
        while True:  # then echo every later call
            request = await read_message(reader)
            received.append(request)
            writer.write(p.encode_response(request.seq, request.args[0]))

    async with fake_server(server) as address:
        async with await geerpc.dial(address, connect_timeout=2) as client:
            with pytest.raises(geerpc.CallTimeout) as info:
                await client.call("S.slow", "first", timeout=0.05)
            assert isinstance(info.value, TimeoutError)
            assert client.pending == 0  # forgotten at once, before any reply
            async with asyncio.timeout(2):
                await late_reply_sent.wait()
                # The late reply is ahead of the next replies on the stream: the client
                # reads it, finds no call waiting for seq 1 and drops it.
                assert await client.call("S.echo", "second") == "second"
                assert await client.call("S.echo", "third") == "third"
            assert not client.closed and client.pending == 0
    assert [(type(m), m.seq) for m in received] == [(p.Request, 1), (p.Cancel, 1), (p.Request, 2), (p.Request, 3)]


async def test_caller_deadline_reaches_server_and_cancels_handler(client, arith):
    with pytest.raises(geerpc.CallTimeout):
        await client.call("Arith.sleep", 30, timeout=0.1)
    async with asyncio.timeout(2):
        await arith.cancelled.wait()


async def test_server_handle_timeout_replies_with_call_timeout(arith):
    server = geerpc.Server(handle_timeout=0.1)
    server.register(arith)
    async with server:
        await server.start("127.0.0.1", 0)
        async with await geerpc.dial(server.address) as client:
            with pytest.raises(geerpc.CallTimeout, match="did not finish within 0.1"):
                await client.call("Arith.sleep", 30)  # no client timeout: the server's applies
            assert arith.cancelled.is_set()
            assert await client.call("Arith.add", 1, 1) == 2


async def test_client_handle_timeout_option_is_honoured(server, arith):
    async with await geerpc.dial(server.address, handle_timeout=0.1) as client:
        with pytest.raises(geerpc.CallTimeout, match="within 0.1"):
            await client.call("Arith.sleep", 30)
        assert arith.cancelled.is_set()


async def test_external_cancel_removes_pending_and_cancels_handler(client, arith):
    task = asyncio.ensure_future(client.call("Arith.sleep", 30))
    await arith.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.pending == 0
    async with asyncio.timeout(2):
        await arith.cancelled.wait()
    assert await client.call("Arith.add", 1, 2) == 3


async def test_enclosing_asyncio_timeout_cancels_call(client, arith):
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.call("Arith.sleep", 30)
    assert client.pending == 0
    async with asyncio.timeout(2):
        await arith.cancelled.wait()
    assert await client.call("Arith.add", 1, 2) == 3


async def test_remote_errors_keep_connection_usable(client):
    with pytest.raises(geerpc.RemoteError) as info:
        await client.call("Arith.fail", "boom")
    assert info.value.type == "ValueError" and str(info.value) == "boom"
    with pytest.raises(geerpc.ServiceNotFound, match="Nope"):
        await client.call("Nope.add", 1, 2)
    with pytest.raises(geerpc.MethodNotFound, match="nope"):
        await client.call("Arith.nope")
    with pytest.raises(geerpc.InvalidArguments, match="missing a required argument"):
        await client.call("Arith.add", 1)
    with pytest.raises(geerpc.InvalidArguments, match="unexpected keyword"):
        await client.call("Arith.add", 1, 2, c=3)
    assert await client.call("Arith.add", 1, 2) == 3


async def test_unencodable_arguments_raise_type_error_locally(client):
    with pytest.raises(TypeError, match="cannot be encoded"):
        await client.call("Arith.echo", {1, 2})
    with pytest.raises(ValueError, match="timeout"):
        await client.call("Arith.add", 1, 2, timeout=0)
    assert await client.call("Arith.add", 1, 2) == 3


async def test_request_over_frame_limit_is_refused_locally(server):
    async with await geerpc.dial(server.address) as client:
        client.max_frame_size = 1000
        with pytest.raises(ValueError, match="frame limit"):
            await client.call("Arith.echo", b"x" * 2000)
        assert await client.call("Arith.add", 1, 2) == 3


async def test_dial_errors():
    with pytest.raises(geerpc.ConnectError, match="unknown protocol"):
        await geerpc.dial("bogus@1.2.3.4:5")
    with pytest.raises(geerpc.ConnectError):
        await geerpc.dial("tcp@127.0.0.1")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(geerpc.ConnectError) as info:
        await geerpc.dial(f"tcp@127.0.0.1:{port}")
    assert isinstance(info.value, ConnectionError)


async def test_connect_timeout_covers_the_handshake():
    # a listener that accepts and never answers the Option
    accepted: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda r, w: accepted.append(w), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(geerpc.ConnectTimeout) as info:
            await geerpc.dial(f"tcp@127.0.0.1:{port}", connect_timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert loop.time() - start < 2
    finally:
        for writer in accepted:
            writer.close()
        silent.close()
        await silent.wait_closed()


async def test_unix_socket(tmp_path, arith):
    path = tmp_path / "geerpc.sock"
    server = geerpc.Server()
    server.register(arith)
    async with server:
        address = await server.start(f"unix@{path}")
        assert address == f"unix@{path}"
        async with await geerpc.dial(address) as client:
            assert await client.call("Arith.add", 1, 2) == 3
    assert not path.exists()


async def test_close_fails_pending_calls_and_later_calls(server, arith):
    client = await geerpc.dial(server.address)
    pending = asyncio.ensure_future(client.call("Arith.sleep", 30))
    await arith.started.wait()
    await client.close()
    with pytest.raises(geerpc.ConnectionClosed):
        await pending
    assert client.closed
    with pytest.raises(geerpc.ConnectionClosed):
        await client.call("Arith.add", 1, 2)
    await client.close()  # idempotent


async def test_server_stop_fails_pending_calls_promptly(arith):
    server = geerpc.Server()
    server.register(arith)
    await server.start("127.0.0.1", 0)
    async with await geerpc.dial(server.address) as client:
        pending = asyncio.ensure_future(client.call("Arith.sleep", 30, timeout=20))
        await arith.started.wait()
        await server.stop(grace=0.05)
        with pytest.raises(geerpc.Unavailable, match="server stopped before Arith.sleep finished"):
            async with asyncio.timeout(2):
                await pending


async def test_server_killed_mid_call_fails_pending_calls_promptly():
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(ROOT / "tests" / "serve_arith.py"), stdout=asyncio.subprocess.PIPE, env=subprocess_env())
    try:
        assert proc.stdout is not None
        address = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        client = await geerpc.dial(address)
        async with client:
            calls = [asyncio.ensure_future(client.call("Arith.sleep", 30, timeout=20)) for _ in range(5)]
            assert await client.call("Arith.add", 1, 2) == 3  # the sleeps are in flight now
            proc.kill()
            loop = asyncio.get_running_loop()
            start = loop.time()
            for call in calls:
                with pytest.raises(geerpc.ConnectionClosed):
                    await call
            assert loop.time() - start < 2  # at once, not at the 20 s timeout
            assert client.closed
            with pytest.raises(geerpc.ConnectionClosed):
                await client.call("Arith.add", 1, 2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def test_dial_error_names_the_os_reason():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(geerpc.ConnectError, match="Connection refused"):
        await geerpc.dial(f"tcp@127.0.0.1:{port}")
    with pytest.raises(geerpc.ConnectError) as info:  # resolution fails without any network
        await geerpc.dial("tcp@no-such-host.invalid:1", connect_timeout=5)
    assert "Unknown error" not in str(info.value)


async def test_a_closed_connection_is_freed_without_the_cyclic_gc(server):
    """A client that dials and closes often (reconnects, an XClient replacing its
    connections) must not leave each closed connection, or its transport (a cycle of
    asyncio's own on Python 3.11), for the next full collection."""
    import gc
    import weakref

    from conftest import eventually

    gc.collect()
    gc.disable()
    try:
        client = await geerpc.dial(server.address)
        assert await client.call("Arith.add", 1, 2) == 3
        connection = weakref.ref(client._conn)
        transport = weakref.ref(client._conn.transport)
        await client.close()
        del client
        await eventually(lambda: connection() is None, what="the closed connection freed")
        await eventually(lambda: transport() is None, what="its transport freed")
    finally:
        gc.enable()
