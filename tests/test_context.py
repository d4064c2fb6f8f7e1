"""Calls that carry context: metadata both ways, CallContext, and deadlines that follow
the call, over real sockets (interceptors are in test_interceptors.py)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from _raw import Raw, option, pack

import geerpc
from geerpc import protocol as p
from geerpc.context import CallContext, outgoing_deadline
from geerpc.deadline import Deadline
from geerpc.metadata import MAX_ENTRIES, MAX_SIZE


class Context:
    """Handlers that report what ``current_call()`` says, in each kind of handler."""

    def __init__(self) -> None:
        self.calls = 0

    async def seen(self):  # no await: runs inline
        call = geerpc.current_call()
        self.calls += 1
        return {"method": call.service_method, "metadata": dict(call.metadata), "peer": call.peer,
                "left": call.time_remaining(), "deadline": call.deadline}

    async def seen_later(self):  # awaits: runs in a task
        await asyncio.sleep(0)
        return await self.seen()

    def seen_in_thread(self):  # a plain def: runs on a worker thread
        call = geerpc.current_call()
        return {"method": call.service_method, "metadata": dict(call.metadata),
                "left": call.time_remaining(), "thread": threading.current_thread().name}

    async def tag(self, value):
        geerpc.current_call().reply_metadata["served-by"] = value
        geerpc.current_call().reply_metadata["raw-bin"] = b"\x00\xff"
        return value

    def tag_in_thread(self, value):
        geerpc.current_call().reply_metadata["served-by"] = value
        return value

    async def tag_and_fail(self):
        geerpc.current_call().reply_metadata["why"] = "because"
        raise ValueError("no")

    async def bad_reply_metadata(self):
        geerpc.current_call().reply_metadata["Not-Lowercase"] = "x"
        return 1

    async def add(self, a, b):
        self.calls += 1
        return a + b


async def start(*services, **options) -> geerpc.Server:
    server = geerpc.Server(**options)
    for service in services:
        server.register(service)
    await server.start("127.0.0.1", 0)
    return server


@pytest.fixture
async def ctx_server():
    service = Context()
    server = await start(service)
    server.service_object = service
    yield server
    await server.stop(grace=1.0)


@pytest.fixture
async def ctx_client(ctx_server):
    client = await geerpc.dial(ctx_server.address)
    yield client
    await client.close()


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("method", ["Context.seen", "Context.seen_later"])
async def test_metadata_reaches_the_handler_str_and_bytes(ctx_client, method):
    seen = await ctx_client.call(method, metadata={"tenant": "acme", "blob-bin": b"\x00\x01"})
    assert seen["metadata"] == {"tenant": "acme", "blob-bin": b"\x00\x01"}
    assert seen["method"] == method
    host, _, port = seen["peer"].rpartition(":")
    assert host == "127.0.0.1" and int(port) > 0


async def test_metadata_reaches_a_def_handler_on_its_worker_thread(ctx_client):
    seen = await ctx_client.call("Context.seen_in_thread", metadata={"k": "v"})
    assert seen["metadata"] == {"k": "v"} and seen["method"] == "Context.seen_in_thread"
    assert seen["thread"].startswith("geerpc-handler")


async def test_no_metadata_is_an_empty_read_only_mapping(ctx_client):
    seen = await ctx_client.call("Context.seen")
    assert seen["metadata"] == {} and seen["left"] is None and seen["deadline"] is None


async def test_the_handler_cannot_change_the_metadata_it_was_sent():
    call = CallContext("S.m", {"a": "1"}, None, "x", [], {})
    with pytest.raises(TypeError):
        call.metadata["a"] = "2"  # type: ignore[index]


async def test_reply_metadata_comes_back_with_invoke(ctx_client):
    reply = await ctx_client.invoke("Context.tag", args=("a",))
    assert isinstance(reply, geerpc.Reply)
    assert reply.result == "a"
    assert dict(reply.metadata) == {"served-by": "a", "raw-bin": b"\x00\xff"}
    # call() gives the result alone
    assert await ctx_client.call("Context.tag", "b") == "b"


async def test_reply_metadata_from_a_def_handler(ctx_client):
    reply = await ctx_client.invoke("Context.tag_in_thread", ("t",))
    assert reply.result == "t" and dict(reply.metadata) == {"served-by": "t"}


async def test_a_reply_without_metadata_has_an_empty_mapping(ctx_client):
    reply = await ctx_client.invoke("Context.add", (1, 2))
    assert reply == geerpc.Reply(3, {}) and dict(reply.metadata) == {}


async def test_invoke_passes_remote_kwargs_named_timeout_and_metadata(ctx_server, ctx_client):
    class Named:
        async def f(self, timeout, metadata):
            return [timeout, metadata]

    ctx_server.register(Named())
    reply = await ctx_client.invoke("Named.f", kwargs={"timeout": 1, "metadata": "m"}, timeout=5)
    assert reply.result == [1, "m"]


async def test_an_error_carries_the_reply_metadata_set_before_it(ctx_client):
    with pytest.raises(geerpc.RemoteError) as caught:
        await ctx_client.call("Context.tag_and_fail")
    assert isinstance(caught.value, ValueError)
    assert dict(caught.value.metadata) == {"why": "because"}


async def test_reply_metadata_that_breaks_the_rules_is_an_internal_error(ctx_client, caplog):
    with pytest.raises(geerpc.RemoteError) as caught:
        await ctx_client.call("Context.bad_reply_metadata")
    assert caught.value.type == "SerializationError"
    assert "reply metadata of Context.bad_reply_metadata" in str(caught.value)
    assert await ctx_client.call("Context.add", 1, 1) == 2


@pytest.mark.parametrize("metadata, words", [
    ({f"k{i}": "v" for i in range(MAX_ENTRIES + 1)}, "65 entries"),
    ({"big": "x" * MAX_SIZE}, "over the limit of 8192"),
    ({"Upper": "v"}, "not lowercase ASCII"),
    ({"sp ace": "v"}, "not lowercase ASCII"),
    ({"": "v"}, "empty"),
    ({"geerpc-deadline": "1"}, "reserved"),
    ({"n": 1}, "must be str or bytes, not int"),
    ({"n": None}, "must be str or bytes, not NoneType"),
    ({1: "v"}, "keys must be str"),
    ([("a", "b")], "must be a mapping"),
])
async def test_metadata_that_breaks_the_rules_is_refused_before_sending(ctx_server, ctx_client, metadata, words):
    service = ctx_server.service_object
    with pytest.raises(ValueError, match=words):
        await ctx_client.call("Context.add", 1, 2, metadata=metadata)
    with pytest.raises(ValueError, match=words):
        await ctx_client.invoke("Context.add", (1, 2), metadata=metadata)
    assert service.calls == 0  # nothing reached the server
    assert await ctx_client.call("Context.add", 1, 2) == 3


async def test_metadata_at_the_limits_is_fine(ctx_client):
    most = {f"k{i:02d}": "v" for i in range(MAX_ENTRIES)}
    assert (await ctx_client.call("Context.seen", metadata=most))["metadata"] == most
    key = "k"
    full = {key: "x" * (MAX_SIZE - len(key))}
    assert (await ctx_client.call("Context.seen", metadata=full))["metadata"] == full
    assert (await ctx_client.call("Context.seen", metadata={"t": "é" * 10}))["metadata"] == {"t": "é" * 10}


async def _metadata_raw(address: str) -> Raw:
    raw = await Raw.open(address)
    await raw.send(option(Metadata=1))
    ack = await raw.read_ack()
    assert ack.get("Metadata") == 1, ack
    return raw


@pytest.mark.parametrize("metadata, words", [
    ({f"k{i}": "v" for i in range(MAX_ENTRIES + 1)}, "65 entries"),
    ({"k": "x" * MAX_SIZE}, "over the limit"),
    ({"K": "v"}, "not lowercase"),
    ({"k": 1}, "must be str or bytes"),
    ([1, 2], "must be a map"),
])
async def test_a_server_answers_bad_metadata_invalid_arguments_and_keeps_the_connection(ctx_server, metadata,
                                                                                      words):
    raw = await _metadata_raw(ctx_server.address)
    try:
        body = pack([0, 1, "Context.add", None, [1, 2], {}, metadata])
        await raw.send(len(body).to_bytes(4, "big") + body)
        seq, error, _, _ = await raw.read_response()
        assert seq == 1 and error is not None and error[0] == p.ErrorCode.INVALID_ARGUMENT, error
        assert error[1] == "InvalidArguments" and words in error[2]
        assert ctx_server.service_object.calls == 0
        await raw.send(p.encode_request(2, "Context.add", [2, 3], {}, None, {"ok": "1"}))
        assert await raw.read_response() == p.Response(2, None, 5)
    finally:
        await raw.close()


async def test_a_nil_metadata_element_is_no_metadata(ctx_server):
    raw = await _metadata_raw(ctx_server.address)
    try:
        body = pack([0, 1, "Context.seen", None, [], {}, None])
        await raw.send(len(body).to_bytes(4, "big") + body)
        response = await raw.read_response()
        assert response.error is None and response.result["metadata"] == {}
    finally:
        await raw.close()


# --------------------------------------------------------------------------- old peers


async def test_an_old_client_gets_four_element_replies_even_with_reply_metadata(ctx_server):
    raw = await Raw.handshake(ctx_server.address)  # its Option says nothing of metadata
    try:
        await raw.send(p.encode_request(1, "Context.tag", ["x"], {}, None))
        frame = await raw.read_frame()
        assert frame == pack([1, 1, None, "x"])
    finally:
        await raw.close()


async def test_an_old_server_gets_no_metadata_and_the_caller_a_clear_error():
    """A server that does not echo Metadata (an older geerpc): calls without metadata
    work; a call with metadata raises NotSupported before anything is sent."""
    received: list[bytes] = []

    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b'{"MagicNumber":3927900,"CodecType":"application/msgpack","ConnectTimeout":0,'
                     b'"HandleTimeout":0}\n')
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(header, "big"))
                received.append(body)
                message = p.decode_request(body)
                assert isinstance(message, p.Request) and len(message) == 6 and message.metadata is None
                writer.write(p.encode_response(message.seq, sum(message.args)))
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    listener = await asyncio.start_server(old_server, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        client = await geerpc.dial(f"tcp@127.0.0.1:{port}")
        try:
            assert await client.call("A.add", 1, 2) == 3
            with pytest.raises(geerpc.NotSupported, match="does not take call metadata"):
                await client.call("A.add", 1, 2, metadata={"k": "v"})
            assert len(received) == 1
            assert (await client.invoke("A.add", (2, 2))).result == 4
        finally:
            await client.close()
    finally:
        listener.close()
        await listener.wait_closed()


# --------------------------------------------------------------------------- current_call


def test_current_call_outside_a_call_raises():
    with pytest.raises(RuntimeError, match="only available inside a handler"):
        geerpc.current_call()


async def test_current_call_outside_a_call_in_a_task_raises(ctx_client):
    await ctx_client.call("Context.seen")
    with pytest.raises(RuntimeError):
        geerpc.current_call()  # the handler's context did not leak into the caller


async def test_the_deadline_and_time_remaining_in_each_kind_of_handler(ctx_client):
    before = time.monotonic()
    for method in ("Context.seen", "Context.seen_later", "Context.seen_in_thread"):
        seen = await ctx_client.call(method, timeout=5)
        assert 3.0 < seen["left"] <= 5.0, (method, seen)
    seen = await ctx_client.call("Context.seen", timeout=5)
    assert before < seen["deadline"] <= time.monotonic() + 5


async def test_the_servers_handle_timeout_is_in_the_deadline():
    service = Context()
    server = await start(service, handle_timeout=2.0)
    try:
        async with await geerpc.dial(server.address) as client:
            seen = await client.call("Context.seen")
            assert 1.0 < seen["left"] <= 2.0
            seen = await client.call("Context.seen", timeout=30)
            assert seen["left"] <= 2.0
    finally:
        await server.stop()


def test_time_remaining_takes_now():
    call = CallContext("S.m", None, 100.0, "p", [], {})
    assert call.time_remaining(now=99.5) == 0.5
    assert call.time_remaining(now=101.0) == 0.0
    assert CallContext("S.m", None, None, "p", [], {}).time_remaining(now=1.0) is None


# --------------------------------------------------------------------------- deadlines follow the call


def test_outgoing_deadline_sans_io():
    from geerpc.context import CURRENT

    assert outgoing_deadline(None, 10.0, "B.f") is None  # not serving a call
    own = Deadline(15.0, 5.0)
    assert outgoing_deadline(own, 10.0, "B.f") is own
    token = CURRENT.set(CallContext("A.g", None, 12.0, "p", [], {}))
    try:
        assert outgoing_deadline(None, 10.0, "B.f") == Deadline(12.0, 2.0)  # inherited
        assert outgoing_deadline(own, 10.0, "B.f") == Deadline(12.0, 2.0)  # the smaller
        sooner = Deadline(11.0, 1.0)
        assert outgoing_deadline(sooner, 10.0, "B.f") is sooner
        with pytest.raises(geerpc.CallTimeout, match="the deadline of A.g, the call being served, has passed"):
            outgoing_deadline(None, 12.0, "B.f")
    finally:
        CURRENT.reset(token)
    token = CURRENT.set(CallContext("A.g", None, None, "p", [], {}))
    try:
        assert outgoing_deadline(own, 10.0, "B.f") is own  # serving a call without a deadline
    finally:
        CURRENT.reset(token)


class Front:
    """Server A: calls server B from its handlers, with each kind of client."""

    def __init__(self, b_address: str) -> None:
        self.b_address = b_address
        self.client: geerpc.Client | None = None
        self.sync: geerpc.SyncClient | None = None
        self.xclient = None
        self.outcome: dict[str, object] = {}

    async def via_client(self, timeout=None):
        assert self.client is not None
        mine = geerpc.current_call().time_remaining()
        theirs = await self.client.call("Context.seen", timeout=timeout)
        return [mine, theirs["left"]]

    async def via_xclient(self):
        mine = geerpc.current_call().time_remaining()
        theirs = await self.xclient.call("Context.seen")
        return [mine, theirs["left"]]

    def via_sync(self):
        assert self.sync is not None
        mine = geerpc.current_call().time_remaining()
        theirs = self.sync.call("Context.seen_in_thread")
        return [mine, theirs["left"]]

    def late(self):
        """Runs on past its deadline (a thread cannot be stopped), then tries to call B."""
        assert self.sync is not None
        call = geerpc.current_call()
        give_up = time.monotonic() + 5
        while call.time_remaining() > 0 and time.monotonic() < give_up:
            time.sleep(0.005)
        try:
            self.sync.call("Context.add", 1, 2)
        except geerpc.CallTimeout as exc:
            self.outcome["late"] = str(exc)
        else:
            self.outcome["late"] = "called"


@pytest.fixture
async def two_hops():
    back = Context()
    b = await start(back)
    front = Front(b.address)
    a = await start(front)
    from geerpc.xclient import XClient

    front.client = await geerpc.dial(b.address)
    front.sync = await asyncio.to_thread(geerpc.SyncClient, b.address)
    front.xclient = XClient([b.address])
    client = await geerpc.dial(a.address)
    try:
        yield client, front, back
    finally:
        await client.close()
        await front.client.close()
        await front.xclient.close()
        await asyncio.to_thread(front.sync.close)
        await a.stop(grace=1.0)
        await b.stop(grace=1.0)


@pytest.mark.parametrize("method", ["Front.via_client", "Front.via_xclient", "Front.via_sync"])
async def test_b_sees_the_time_a_had_left(two_hops, method):
    client, _, _ = two_hops
    mine, theirs = await client.call(method, timeout=3)
    assert mine is not None and theirs is not None
    assert 0 < theirs <= mine <= 3


async def test_an_explicit_timeout_inside_a_handler_gets_the_smaller(two_hops):
    client, _, _ = two_hops
    mine, _ = await client.call("Front.via_client", timeout=3)
    longer = await client.call("Front.via_client", 30, timeout=3)
    assert longer[1] <= 3
    shorter = await client.call("Front.via_client", 0.5, timeout=3)
    assert shorter[1] <= 0.5 < mine


async def test_without_a_deadline_nothing_is_inherited(two_hops):
    client, _, _ = two_hops
    mine, theirs = await client.call("Front.via_client")
    assert mine is None and theirs is None


async def test_a_handler_past_its_deadline_cannot_start_a_call(two_hops):
    client, front, back = two_hops
    with pytest.raises(geerpc.CallTimeout):
        await client.call("Front.late", timeout=0.2)

    await _until(lambda: "late" in front.outcome)
    assert "the call being served, has passed" in str(front.outcome["late"])
    assert back.calls == 0  # nothing reached B


async def _until(condition) -> None:
    from conftest import eventually

    await eventually(condition, what="the late handler to finish")


# --------------------------------------------------------------------------- hostile peers (rows C1-C6 of test_hostile.py)


async def test_a_seven_element_request_from_a_client_that_did_not_negotiate_is_served(ctx_server):
    raw = await Raw.handshake(ctx_server.address)
    try:
        await raw.send(p.encode_request(1, "Context.seen", [], {}, None, {"k": "v"}))
        response = await raw.read_response()
        assert response.error is None and response.result["metadata"] == {"k": "v"}
    finally:
        await raw.close()


@pytest.mark.parametrize("value", ["1.0", "true", "-1", "9223372036854775808", '"yes"'])
async def test_a_bad_metadata_field_in_the_option_is_refused_by_name(ctx_server, value):
    raw = await Raw.open(ctx_server.address)
    try:
        line = option()[:-2] + b', "Metadata": ' + value.encode() + b"}\n"
        await raw.send(line)
        ack = await raw.read_ack()
        assert "Metadata must be an integer" in ack["Error"]
    finally:
        await raw.close()


async def test_a_server_sending_bad_reply_metadata_fails_that_call_only():
    from _raw import fake_server

    async def behaviour(reader, writer):
        await reader.readline()
        writer.write(b'{"MagicNumber":3927900,"CodecType":"application/msgpack","ConnectTimeout":0,'
                     b'"HandleTimeout":0,"Metadata":1}\n')
        while True:
            header = await reader.readexactly(4)
            message = p.decode_request(await reader.readexactly(int.from_bytes(header, "big")))
            if message.service_method == "A.bad":
                body = pack([1, message.seq, None, 1, {"Bad Key": "x" * 10}])
            elif message.service_method == "A.huge":
                body = pack([1, message.seq, None, 1, {f"k{i}": "v" for i in range(1000)}])
            else:
                body = pack([1, message.seq, None, 2, {"ok": b"\x00"}])
            writer.write(len(body).to_bytes(4, "big") + body)

    async with fake_server(behaviour) as address:
        async with await geerpc.dial(address) as client:
            for method in ("A.bad", "A.huge"):
                with pytest.raises(geerpc.RemoteError, match="reply's metadata breaks the rules"):
                    await client.invoke(method)
            reply = await client.invoke("A.good")
            assert reply == geerpc.Reply(2, {"ok": b"\x00"})
            assert await client.call("A.good") == 2  # call() drops the metadata


async def test_a_handler_setting_too_much_reply_metadata_gets_an_error_not_a_huge_reply(ctx_server, ctx_client):
    class Bomb:
        async def f(self):
            for i in range(100_000):
                geerpc.current_call().reply_metadata[f"k{i}"] = "v" * 100
            return "done"

    ctx_server.register(Bomb())
    with pytest.raises(geerpc.RemoteError, match="100000 entries, over the limit of 64") as caught:
        await ctx_client.invoke("Bomb.f")
    assert caught.value.type == "SerializationError"
