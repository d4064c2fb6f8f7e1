"""Streams: a generator method on the server, ``async for`` on the client.

Attacks and faults for this layer, one test each (HOSTILE.md's style):

| row | what a peer does | what must hold |
|---|---|---|
| S1 | a consumer that reads nothing | the server's generator stops at the window; memory stays bounded on both sides |
| S2 | a client that grants more credit than the server keeps | the credit is clamped to MAX_WINDOW_ITEMS / MAX_WINDOW_BYTES |
| S3 | a CREDIT for a seq that is no stream | ignored; the connection stays |
| S4 | a malformed CREDIT or STREAM (bad seq, window 0, wrong length) | the connection is closed, nothing runs |
| S5 | a STREAM for a unary method, a REQUEST for a generator | InvalidArguments, nothing runs, the connection stays |
| S6 | a stream abandoned (break, aclose, cancelled task, timeout) | Cancel sent; the generator's finally runs; the slot is free |
| S7 | a peer that vanishes mid-stream | the consumer gets ConnectionClosed, never a hang |
| S8 | an item that cannot be encoded, or is over the frame limit | the stream ends with SerializationError; the connection stays |
| S9 | streams at max_in_flight | the next call waits for a slot, as calls do |
| S10 | a server older than streams | NotSupported before anything is sent |
"""

from __future__ import annotations

import asyncio
import gc
import json
import threading

import msgpack
import pytest

import geerpc
from geerpc import protocol as p
from geerpc.errors import CallTimeout, ConnectionClosed, InvalidArguments, NotSupported, RemoteError, Unavailable

from _raw import option, pack, raw_connection, serving
from conftest import eventually, eventually_sync


class Feed:
    def __init__(self) -> None:
        self.produced = 0
        self.closed: list[str] = []
        self.seen: list[object] = []
        self.release = asyncio.Event()

    async def count(self, n):
        for i in range(n):
            self.produced += 1
            yield i

    async def forever(self, size=0):
        i = 0
        try:
            while True:
                self.produced += 1
                yield "x" * size if size else i
                i += 1
        finally:
            self.closed.append("forever")

    async def stuck(self):
        try:
            yield "first"
            await self.release.wait()
            yield "second"
        finally:
            self.closed.append("stuck")

    def lines(self, n):
        try:
            for i in range(n):
                self.produced += 1
                yield f"line {i}"
        finally:
            self.closed.append("lines")

    async def fails_after(self, n):
        for i in range(n):
            yield i
        raise ValueError(f"broke after {n}")

    async def unsendable(self):
        yield 1
        yield object()

    async def big(self, size):
        yield b"x" * size

    async def who(self):
        call = geerpc.current_call()
        self.seen.append((call.streaming, dict(call.metadata)))
        call.reply_metadata["ended"] = "yes"
        yield call.service_method

    def who_sync(self):
        yield geerpc.current_call().service_method

    async def add(self, a, b):
        return a + b


@pytest.fixture
async def feed_server():
    feed = Feed()
    async with serving(feed) as server:
        yield feed, server


@pytest.fixture
async def feed_client(feed_server):
    feed, server = feed_server
    client = await geerpc.dial(server.address)
    yield feed, server, client
    await client.close()


async def test_async_generator_streams_every_item_in_order(feed_client) -> None:
    _, _, client = feed_client
    async with client.stream("Feed.count", 500) as items:
        assert [item async for item in items] == list(range(500))
    async with client.stream("Feed.count", 0) as items:
        assert [item async for item in items] == []
    assert await client.call("Feed.add", 1, 2) == 3  # the connection serves calls as before


async def test_plain_generator_streams_on_worker_threads(feed_client) -> None:
    feed, _, client = feed_client
    async for item in client.stream("Feed.lines", 3):  # async for alone opens it
        assert item.startswith("line ")
    async with client.stream("Feed.who_sync") as items:
        assert [item async for item in items] == ["Feed.who_sync"]
    await eventually(lambda: "lines" in feed.closed, what="the generator's finally ran")


async def test_metadata_context_and_reply_metadata(feed_client) -> None:
    feed, _, client = feed_client
    async with client.stream("Feed.who", metadata={"tenant": "acme"}) as items:
        assert [item async for item in items] == ["Feed.who"]
    assert feed.seen == [(True, {"tenant": "acme"})]
    assert items.metadata["ended"] == "yes"


async def test_window_holds_the_generator_still_until_items_are_read(feed_client) -> None:
    """S1: with a window of 8 and nothing read, the generator yields 8 items and waits."""
    feed, server, client = feed_client
    async with client.stream("Feed.forever", window_items=8) as items:
        await eventually(lambda: feed.produced >= 8, what="the first window")
        assert await client.call("Feed.add", 1, 1) == 2  # a round trip: the server had its chance
        assert feed.produced == 8
        assert len(items._items) == 8
        for expected in range(4):  # half a window read: credit goes back
            assert await items.__anext__() == expected
        await eventually(lambda: feed.produced >= 12, what="the credit returned")
        assert await client.call("Feed.add", 1, 1) == 2
        assert feed.produced == 12
    await eventually(lambda: "forever" in feed.closed, what="GeneratorExit at the yield")


async def test_byte_window_bounds_large_items(feed_client) -> None:
    """S1: items of 600 bytes in a 1024-byte window: two go (the second overshoots), then none."""
    feed, _, client = feed_client
    async with client.stream("Feed.forever", 600, window_items=64, window_bytes=1024) as items:
        await eventually(lambda: feed.produced >= 2, what="the first items")
        assert await client.call("Feed.add", 1, 1) == 2
        assert feed.produced == 2
        held = sum(size for _, size in items._items)
        assert held <= 1024 + 700
        connection = server_connections(feed_client[1])[0]
        unsent = connection._outbox.size + connection._transport.get_write_buffer_size()
        assert unsent < 2 * 1024  # nothing piles up on the server either
        assert connection.bytes_held < 8 * 1024  # its reservation is its window, not a 16th of the budget


def server_connections(server: geerpc.Server) -> list:
    return list(server._connections)


@pytest.mark.parametrize("how", ["break", "aclose", "cancel"])
async def test_leaving_early_closes_the_generator_and_frees_the_slot(feed_client, how) -> None:
    """S6: however the consumer leaves, the server's generator sees GeneratorExit."""
    feed, server, client = feed_client
    if how == "break":
        async with client.stream("Feed.forever") as items:
            async for item in items:
                if item == 3:
                    break
    elif how == "aclose":
        items = client.stream("Feed.forever")
        assert await items.__anext__() == 0
        await items.aclose()
        await items.aclose()  # idempotent
        with pytest.raises(StopAsyncIteration):
            await items.__anext__()
    else:
        started = asyncio.Event()

        async def consume() -> None:
            async with client.stream("Feed.stuck") as items:
                async for _ in items:
                    started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    name = "stuck" if how == "cancel" else "forever"
    await eventually(lambda: name in feed.closed, what="the generator closed")
    await eventually(lambda: all(c.running == 0 for c in server_connections(server)), what="the slot freed")


async def test_dropped_stream_is_cancelled_when_collected(feed_client) -> None:
    feed, server, client = feed_client
    items = client.stream("Feed.forever")
    assert await items.__anext__() == 0
    del items
    gc.collect()
    await eventually(lambda: "forever" in feed.closed, what="the generator closed")


async def test_timeout_bounds_the_whole_stream(feed_client) -> None:
    feed, _, client = feed_client
    got = []
    with pytest.raises(CallTimeout):
        async with client.stream("Feed.stuck", timeout=0.2) as items:
            async for item in items:
                got.append(item)
    assert got == ["first"]
    await eventually(lambda: "stuck" in feed.closed, what="the server closed the generator at the deadline")


async def test_generator_error_arrives_where_it_happened(feed_client) -> None:
    _, _, client = feed_client
    got = []
    with pytest.raises(ValueError, match="broke after 3") as raised:
        async with client.stream("Feed.fails_after", 3) as items:
            async for item in items:
                got.append(item)
    assert got == [0, 1, 2]
    assert isinstance(raised.value, RemoteError)


async def test_unsendable_item_ends_the_stream_and_keeps_the_connection(feed_client) -> None:
    """S8."""
    _, _, client = feed_client
    got = []
    with pytest.raises(RemoteError, match="cannot be encoded") as raised:
        async with client.stream("Feed.unsendable") as items:
            async for item in items:
                got.append(item)
    assert got == [1] and raised.value.type == "SerializationError"
    assert await client.call("Feed.add", 2, 2) == 4


@pytest.fixture
async def small_frames():
    feed = Feed()
    async with serving(feed, max_frame_size=4096) as server:
        client = await geerpc.dial(server.address)
        yield client
        await client.close()


async def test_item_over_the_frame_limit(small_frames) -> None:
    """S8: the server's own limit."""
    with pytest.raises(RemoteError, match="over the 4096-byte frame limit"):
        async with small_frames.stream("Feed.big", 8192) as items:
            async for _ in items:
                pass
    assert await small_frames.call("Feed.add", 2, 2) == 4


async def test_wrong_kind_of_call_is_refused_before_anything_runs(feed_client) -> None:
    """S5."""
    feed, _, client = feed_client
    with pytest.raises(InvalidArguments, match="call it with stream"):
        await client.call("Feed.count", 3)
    with pytest.raises(InvalidArguments, match="call it with call"):
        async with client.stream("Feed.add", 1, 2) as items:
            async for _ in items:
                pass
    assert feed.produced == 0
    with pytest.raises(geerpc.MethodNotFound):
        async with client.stream("Feed.nope") as items:
            await items.__anext__()


async def test_streams_count_against_max_in_flight() -> None:
    """S9: with one slot, a second stream waits until the first one ends."""
    feed = Feed()
    async with serving(feed, max_in_flight=1) as server:
        client = await geerpc.dial(server.address)
        try:
            first = client.stream("Feed.stuck")
            assert await first.__anext__() == "first"
            second = client.stream("Feed.count", 2)
            waiting = asyncio.ensure_future(second.__anext__())
            await eventually(lambda: server_connections(server)[0].held == 1, what="the second held")
            assert not waiting.done()
            await first.aclose()
            assert await waiting == 0
            await second.aclose()
        finally:
            await client.close()


async def test_server_stop_ends_open_streams_unavailable() -> None:
    feed = Feed()
    server = geerpc.Server()
    server.register(feed)
    address = await server.start("127.0.0.1", 0)
    client = await geerpc.dial(address)
    try:
        items = client.stream("Feed.stuck")
        assert await items.__anext__() == "first"
        await server.stop(grace=0.1)
        with pytest.raises(Unavailable):
            await items.__anext__()
        assert "stuck" in feed.closed
    finally:
        await client.close()


async def test_interceptors_see_the_stream_open_and_close() -> None:
    events: list[str] = []

    async def server_side(call, proceed):
        events.append(f"server open {call.streaming}")
        try:
            return await proceed()
        finally:
            events.append("server close")

    async def client_side(call, proceed):
        events.append(f"client open {call.streaming}")
        call.metadata["tenant"] = "t1"
        reply = await proceed()
        events.append("client close")
        return reply

    feed = Feed()
    async with serving(feed, interceptors=[server_side]) as server:
        client = await geerpc.dial(server.address, interceptors=[client_side])
        try:
            async with client.stream("Feed.who") as items:
                assert [item async for item in items] == ["Feed.who"]
            await eventually(lambda: "client close" in events, what="the client interceptor returned")
            assert feed.seen == [(True, {"tenant": "t1"})]
            assert events == ["client open True", "server open True", "server close", "client close"]
        finally:
            await client.close()


async def test_auth_applies_to_streams() -> None:
    feed = Feed()
    async with serving(feed, auth=geerpc.BearerTokens({"s3cret": "alice"})) as server:
        anonymous = await geerpc.dial(server.address)
        allowed = await geerpc.dial(server.address, token="s3cret")
        try:
            with pytest.raises(geerpc.Unauthenticated):
                async with anonymous.stream("Feed.count", 2) as items:
                    await items.__anext__()
            assert feed.produced == 0
            async with allowed.stream("Feed.count", 2) as items:
                assert [item async for item in items] == [0, 1]
        finally:
            await anonymous.close()
            await allowed.close()


async def test_deadline_follows_into_a_stream_made_inside_a_handler(feed_server) -> None:
    feed, server = feed_server

    class Relay:
        async def relay(self):
            client = await geerpc.dial(server.address)
            try:
                async with client.stream("Feed.stuck") as items:
                    return [item async for item in items]
            finally:
                await client.close()

    async with serving(Relay()) as relay_server:
        client = await geerpc.dial(relay_server.address)
        try:
            with pytest.raises(CallTimeout):
                await client.call("Relay.relay", timeout=0.3)
        finally:
            await client.close()
    await eventually(lambda: "stuck" in feed.closed, what="the inner stream ended at the outer deadline")


# --------------------------------------------------------------------------- wire


async def test_credit_clamped_unknown_ignored_malformed_closes(feed_server) -> None:
    """S2, S3, S4 over a raw connection."""
    feed, server = feed_server
    async with raw_connection(server.address) as raw:
        await raw.send(p.encode_credit(99, 5, 5))  # S3: no such stream
        await raw.send(p.encode_stream_open(1, "Feed.forever", [], {}, None, None, 2**40, 2**40))
        frames = [p.decode_item(await raw.read_frame()) for _ in range(p.MAX_WINDOW_ITEMS)]
        assert frames[0] == (1, 0) and frames[-1] == (1, p.MAX_WINDOW_ITEMS - 1)
        await eventually(lambda: feed.produced >= p.MAX_WINDOW_ITEMS, what="a full window")
        await raw.send(p.encode_request(2, "Feed.add", [1, 2], {}, None))
        reply = await raw.read_response()
        assert reply.result == 3
        assert feed.produced == p.MAX_WINDOW_ITEMS  # S2: clamped, not 2**40
        await raw.send(p.encode_cancel(1))
        await eventually(lambda: "forever" in feed.closed, what="the cancel closed it")
    for bad in ([7, 1, -1, 5], [7, 0, 1, 1], [7, 1, 1], [5, 1, "Feed.count", None, [3], {}, None, 0, 10],
                [5, 1, "Feed.count", None, [3], {}, None, 10]):
        async with raw_connection(server.address) as raw:
            body = pack(bad)
            await raw.send(len(body).to_bytes(4, "big") + body)
            assert await raw.read_until_closed() == b"", bad
    assert feed.produced == p.MAX_WINDOW_ITEMS  # nothing else ran


async def _fake_server(ack: dict, after_request: bytes | None) -> tuple[asyncio.Server, str, list[bytes]]:
    """A server that answers the Option with ``ack``, records what follows, and may answer one frame."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(json.dumps(ack).encode() + b"\n")
        try:
            header = await reader.readexactly(4)
            received.append(await reader.readexactly(int.from_bytes(header, "big")))
            if after_request is not None:
                writer.write(after_request)
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"tcp@127.0.0.1:{port}", received


async def test_peer_lost_mid_stream_ends_it_with_connection_closed() -> None:
    """S7: one item, then the server goes."""
    ack = {"MagicNumber": p.MAGIC_NUMBER, "CodecType": p.CODEC_TYPE, "Metadata": 1, "Streams": 1}
    server, address, received = await _fake_server(ack, p.encode_item(1, "only"))
    try:
        client = await geerpc.dial(address)
        try:
            got = []
            with pytest.raises(ConnectionClosed):
                async with client.stream("Feed.count", 5, timeout=5) as items:
                    async for item in items:
                        got.append(item)
            assert got == ["only"]
            assert msgpack.unpackb(received[0])[0] == p.MsgType.STREAM
        finally:
            await client.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_server_older_than_streams_gets_nothing() -> None:
    """S10: no Streams in the ack: NotSupported, and no frame is sent."""
    ack = {"MagicNumber": p.MAGIC_NUMBER, "CodecType": p.CODEC_TYPE, "Metadata": 1}
    server, address, received = await _fake_server(ack, None)
    try:
        client = await geerpc.dial(address)
        try:
            with pytest.raises(NotSupported, match="does not take streams"):
                async with client.stream("Feed.count", 5) as items:
                    await items.__anext__()
        finally:
            await client.close()
        assert received == []
    finally:
        server.close()
        await server.wait_closed()


async def test_bad_windows_are_refused_at_once(feed_client) -> None:
    _, _, client = feed_client
    with pytest.raises(ValueError, match="window_items"):
        client.stream("Feed.count", 1, window_items=0)
    with pytest.raises(ValueError, match="window_bytes"):
        client.stream("Feed.count", 1, window_bytes=10)


def test_option_negotiates_streams() -> None:
    line = p.encode_option(p.Option(streams=1))
    assert b'"Streams":1' in line
    assert p.decode_option(line).streams == 1
    assert p.decode_option(p.encode_option(p.Option())).streams == 0
    with pytest.raises(p.BadOption, match="Streams"):
        p.decode_option(option(Streams=True))


def test_blocking_client_streams(feed_thread) -> None:
    """The server runs on a loop of its own thread; the test's thread blocks on the client."""
    feed, address = feed_thread
    with geerpc.SyncClient(address) as client:
        assert list(client.stream("Feed.count", 5)) == [0, 1, 2, 3, 4]
        for item in client.stream("Feed.forever"):
            if item == 2:
                break
        eventually_sync(lambda: "forever" in feed.closed, what="the generator closed")
        with pytest.raises(InvalidArguments):
            list(client.stream("Feed.add", 1, 2))
        assert client.call("Feed.add", 1, 2) == 3


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_slow_consumer_of_a_gigabyte_keeps_both_processes_flat() -> None:
    """S1 across processes: 1 MiB items of a 1 GiB stream, read one every 50 ms; the server
    produces only what the window allows, and neither process grows by more than a few windows."""
    import os
    import subprocess
    import sys as _sys
    from pathlib import Path

    here = Path(__file__).parent
    process = subprocess.Popen([_sys.executable, str(here / "stream_service.py")], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, cwd=here)
    try:
        assert process.stdout is not None
        address = await asyncio.get_running_loop().run_in_executor(None, process.stdout.readline)
        client = await geerpc.dial(address.strip())
        try:
            async with client.stream("Feed.gigabyte", window_bytes=1024 * 1024) as items:
                first = await items.__anext__()
                server_start, client_start = _rss_kib(process.pid), _rss_kib(os.getpid())
                read = 1
                async for item in items:
                    assert len(item) == len(first)
                    read += 1
                    await asyncio.sleep(0.05)  # the slow consumer itself, not a wait for readiness
                    if read == 40:
                        break
                produced = await client.call("Feed.produced_count")
                assert produced <= read + 3  # the window: about one 1 MiB item ahead, never 1 GiB
                server_growth = _rss_kib(process.pid) - server_start
                client_growth = _rss_kib(os.getpid()) - client_start
                assert server_growth < 32 * 1024, f"server grew {server_growth} KiB"
                assert client_growth < 32 * 1024, f"client grew {client_growth} KiB"
        finally:
            await client.close()
    finally:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.close()
        process.wait(10)
        process.stdout.close()


async def test_xclient_streams_from_one_server_and_fails_over_before_the_first_item() -> None:
    from geerpc.xclient import SelectMode, XClient

    feed = Feed()
    async with serving(feed) as good:
        stopping = geerpc.Server()
        stopping.register(Feed())
        dead = await stopping.start("127.0.0.1", 0)
        await stopping.stop()  # its port refuses: a connection failure, before anything was sent
        xc = XClient([dead, good.address], SelectMode.ROUND_ROBIN)
        try:
            for _ in range(2):  # whichever comes first, the stream reaches the live server
                assert [item async for item in xc.stream("Feed.count", 3, timeout=5)] == [0, 1, 2]
            async for item in xc.stream("Feed.forever"):
                if item == 2:
                    break
            await eventually(lambda: "forever" in feed.closed, what="the generator closed after break")
            with pytest.raises(ValueError, match="broke after 1"):
                async for _ in xc.stream("Feed.fails_after", 1):  # after the first item: no failover
                    pass
        finally:
            await xc.close()


def test_blocking_xclient_streams(feed_thread) -> None:
    feed, address = feed_thread
    with geerpc.SyncXClient([address]) as xc:
        assert list(xc.stream("Feed.count", 4)) == [0, 1, 2, 3]
        assert list(xc.stream("Feed.count", 0)) == []
        for item in xc.stream("Feed.forever"):
            if item == 1:
                break
        eventually_sync(lambda: "forever" in feed.closed, what="the generator closed")


@pytest.fixture
def feed_thread():
    """A Feed server on a loop of its own thread, for the blocking clients."""
    feed = Feed()
    loop = asyncio.new_event_loop()
    ready: list[str] = []
    stop = asyncio.Event()

    async def serve() -> None:
        real = geerpc.Server()
        real.register(feed)
        ready.append(await real.start("127.0.0.1", 0))
        await stop.wait()
        await real.stop(grace=0.5)

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),))
    thread.start()
    try:
        eventually_sync(lambda: ready, what="the server started")
        yield feed, ready[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


async def test_dropped_stream_with_interceptors_is_collected_too(feed_server) -> None:
    feed, server = feed_server
    seen: list[str] = []

    async def outer(call, proceed):
        try:
            return await proceed()
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    client = await geerpc.dial(server.address, interceptors=[outer])
    try:
        items = client.stream("Feed.forever")
        assert await items.__anext__() == 0
        del items
        gc.collect()
        await eventually(lambda: "forever" in feed.closed, what="the generator closed")
        await eventually(lambda: seen == ["cancelled"], what="the interceptor saw the stream end")
    finally:
        await client.close()
