"""Hostile peers against a real server on 127.0.0.1 (and a hostile server against the client).

One test per hostile input or fault that concerns a single connection. Each checks the
reply or the close expected, then that the server still serves: a fresh
``geerpc.dial`` + ``Arith.add`` works and, where it matters, a client that was already
connected is unaffected. Raw bytes go through ``asyncio.open_connection``; nothing
here sleeps to wait for something to happen (see ``conftest.eventually``).

Attacks on what all clients share, in the style of HOSTILE.md: one row each, with the
test that reproduces it at a scale that runs in seconds (``bench/bench_hostile.py``
runs the heavy versions).

| # | Input / event | Expected safe behaviour | Test |
|---|---|---|---|
| B1 | A 16 MiB frame of nested empty arrays; a map of a million keys | Refused after at most ``max_elements`` elements (a map or array header over it before its body): "request too large", memory and time bounded by the limit; others served meanwhile | test_decoding.py, test_budget.py::test_amplification_is_answered_and_others_are_served_meanwhile |
| B1b | Such frames back to back on several connections, each within the limits | Large frames take turns at the server's decode gate (at most half the loop once they queue, one a turn, in order on each connection); small frames never wait | test_gate.py |
| B2 | Requests for large replies from a peer that never reads; large arguments to handlers that wait | What the connection holds stays within ``connection_budget`` (plus one request or reply crossing it): no call starts and nothing is read at the budget, results are parked unencoded, replies wait while the transport is paused | test_budget.py, test_client_that_never_reads_replies_is_not_buffered_without_bound (below) |
| B3 | Idle sockets (handshaken, or never sending the Option) from one address, more than its share | That address's longest idle connection is evicted for each new one; a busy address at its cap is refused with the reason; others always get in; idle timeout on by default | test_connection_slots.py |
| B4 | Large arguments, then a Cancel or a hang-up | The arguments are freed without the cyclic GC | test_hostile_calls.py::test_cancelled_call_frees_its_arguments_without_the_cyclic_gc |
| B5 | One peer holding every registry watch slot | A per-address watch cap: real watchers keep getting changes at once | test_announced_addresses.py::test_one_peer_cannot_take_every_watch_slot |
| B6 | The registry restarts, or is down for a while | Every live server listed again within 10 s with the defaults | test_registry_restart.py |
| B7 | A server stopped with its socket open (SIGSTOP); calls that keep timing out | Keepalive pings: pending calls fail with ConnectionClosed; the XClient dials afresh after three timeouts in a row | test_keepalive.py, test_xclient.py::test_a_connection_whose_calls_keep_timing_out_is_dialed_afresh |
| B8 | A service object with builtin bases (dict, Exception), or a class, module or builtin registered | Only methods of the user's own classes are exposed; the others are refused with a message | test_service.py |
| B9 | HandleTimeout of 2^1024 ns, `1.0`, UTF-16 Options; a Cancel then the same seq at once | A refusal naming the field (or a silent close for non-UTF-8), counted, no traceback; the reused seq is served | test_hostile_calls.py |
| B10 | Announced addresses that turn clients against their host (unix@ from afar, `tcp@0:1`, numeric tricks, scope ids) | Refused by the registry and by RegistryDiscovery | test_announced_addresses.py |
| B11 | Hours of connections, calls, failures, failovers and discoveries coming and going (`bench/soak.py`) | What each leaves is freed by reference counting, with the cyclic GC off: closed connections (geerpc's and aiohttp's, on both sides), failed and timed-out calls, failovers of calls and streams; memory stays flat | test_hostile_calls.py, test_httpconn.py (both through `tests/_garbage.py`; HTTPS too), test_tls.py (a closed TLS connection, both sides, with the socket transport beneath) |

Call context (metadata and interceptors):

| # | Input / event | Expected safe behaviour | Test |
|---|---|---|---|
| C1 | Request metadata over 64 entries or 8 KiB, keys with upper case or spaces, values that are not str or bin, metadata that is not a map | InvalidArguments naming the rule; the handler does not run; the connection stays open | test_context.py::test_a_server_answers_bad_metadata_invalid_arguments_and_keeps_the_connection |
| C2 | A 7-element request from a client whose Option said nothing of metadata; nil as the seventh element | Served (nil is no metadata) | test_context.py::test_a_seven_element_request_from_a_client_that_did_not_negotiate_is_served, test_a_nil_metadata_element_is_no_metadata |
| C3 | `"Metadata": 1.0`, `true`, `-1`, 2^63, a string in the Option | A refusal line naming the field | test_context.py::test_a_bad_metadata_field_in_the_option_is_refused_by_name |
| C4 | A server answering with reply metadata that breaks the rules (bad keys, 1,000 entries) | That call fails with a RemoteError saying so; the connection serves the next call | test_context.py::test_a_server_sending_bad_reply_metadata_fails_that_call_only |
| C5 | A handler setting 100,000 reply metadata entries | SerializationError instead of a huge reply | test_context.py::test_a_handler_setting_too_much_reply_metadata_gets_an_error_not_a_huge_reply |
| C6 | An interceptor raising SystemExit, KeyboardInterrupt or GeneratorExit | Answered as the handler's error; the server serves on | test_interceptors.py::test_an_interceptor_raising_a_base_exception_is_answered_and_the_server_lives |
| C7 | An old server (no Metadata in its acknowledgement) called with metadata | NotSupported before anything is sent; calls without metadata work | test_context.py::test_an_old_server_gets_no_metadata_and_the_caller_a_clear_error |
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct

import pytest
from _raw import (
    ACK,
    Raw,
    assert_serving,
    dial_when_possible,
    fake_server,
    option,
    pack,
    raw_connection,
    read_request,
    request,
    serving,
)
from conftest import eventually

import geerpc
from geerpc import protocol as p
from geerpc.protocol import frame

# --------------------------------------------------------------------------- services


class CustomError(Exception):
    pass


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


EXCEPTIONS = {
    "ValueError": lambda: ValueError("bad value"),
    "CustomError": lambda: CustomError("custom trouble"),
    "Unprintable": Unprintable,
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": lambda: SystemExit(3),
    "GeneratorExit": GeneratorExit,
}

UNENCODABLE = {
    "set": lambda: {1, 2},
    "object": object,
    "int_over_2_64": lambda: 2**64,
    "self_referencing_list": lambda: _self_referencing_list(),
}


def _self_referencing_list() -> list:
    items: list = []
    items.append(items)
    return items


class Hostile:
    """Handlers for the three ways the server runs a call: inline (async def without
    await), as a task (async def that awaits) and on a worker thread (plain def)."""

    def __init__(self) -> None:
        self.calls = 0
        self.blobs = 0

    async def touch(self, a, *, c=0):  # inline
        self.calls += 1
        return a + c

    async def touch_task(self, a, *, c=0):
        self.calls += 1
        await asyncio.sleep(0)
        return a + c

    def touch_sync(self, a, *, c=0):
        self.calls += 1
        return a + c

    async def size(self, value):
        return len(value)

    async def typed(self, a: int):
        return a + 1  # a str makes this raise TypeError inside the handler

    async def raise_inline(self, kind):
        raise EXCEPTIONS[kind]()

    async def raise_task(self, kind):
        await asyncio.sleep(0)
        raise EXCEPTIONS[kind]()

    def raise_sync(self, kind):
        raise EXCEPTIONS[kind]()

    async def raise_long(self, n):
        raise ValueError("x" * n)

    async def raise_cancelled(self):
        await asyncio.sleep(0)
        raise asyncio.CancelledError()  # the handler's own, not a cancellation of the call

    async def unencodable(self, kind):
        return UNENCODABLE[kind]()

    async def unencodable_task(self, kind):
        await asyncio.sleep(0)
        return UNENCODABLE[kind]()

    async def int_keys(self):
        return {1: "one", 2: "two"}

    async def blob(self, n):  # inline
        self.blobs += 1
        return b"x" * n

    async def blob_task(self, n):
        self.blobs += 1
        await asyncio.sleep(0)
        return b"x" * n

    def blob_sync(self, n):
        self.blobs += 1
        return b"x" * n


class Gate:
    """Handlers that block until the test releases them; counts how many run at once."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started = 0
        self.running = 0
        self.peak = 0

    async def wait(self, i):
        self.started += 1
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            await self.release.wait()
        finally:
            self.running -= 1
        return i


@pytest.fixture
def hostile() -> Hostile:
    return Hostile()


@pytest.fixture
def hserver(server: geerpc.Server, hostile: Hostile) -> geerpc.Server:
    server.register(hostile)
    return server


async def unaffected(client: geerpc.Client) -> None:
    async with asyncio.timeout(2):
        assert await client.call("Arith.add", 20, 22) == 42


def elapsed_since(start: float) -> float:
    return asyncio.get_running_loop().time() - start


def now() -> float:
    return asyncio.get_running_loop().time()


# --------------------------------------------------------------------------- Option rows (1, 2)


async def test_garbage_instead_of_option_closes_and_counts(server, client, arith):
    async with raw_connection(server.address, handshake=False) as raw:
        await raw.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage-not-an-option\n")
        assert await raw.read_until_closed() == b""
    assert server.protocol_errors == 1
    assert arith.calls == 0
    await unaffected(client)
    await assert_serving(server)


@pytest.mark.parametrize("magic", [1, 3927901, "3927900", 3927900.0, None, True])
async def test_wrong_magic_closes_without_reply(server, client, magic):
    async with raw_connection(server.address, handshake=False) as raw:
        await raw.send(option(MagicNumber=magic) + request(1, "Arith.add", 1, 2))
        assert await raw.read_until_closed() == b""
    assert server.protocol_errors == 1
    await unaffected(client)
    await assert_serving(server)


async def test_unknown_codec_refused_with_error_line_naming_the_codec(server, arith):
    async with raw_connection(server.address, handshake=False) as raw:
        await raw.send(option(CodecType="application/gob"))
        answer = await raw.read_until_closed()
    assert answer.endswith(b"\n") and answer.count(b"\n") == 1
    refusal = json.loads(answer)
    assert list(refusal) == ["Error"]
    assert "application/gob" in refusal["Error"]
    assert arith.calls == 0
    await assert_serving(server)


async def test_overlong_option_without_newline_closes_at_the_limit(arith):
    # Handshake timeout far away: the close must come from the size limit, not a timer.
    async with serving(arith, handshake_timeout=30) as srv, \
            raw_connection(srv.address, handshake=False) as raw:
        await raw.send(b'{"MagicNumber":3927900,"CodecType":"' + b"a" * (p.MAX_OPTION_SIZE - 40))
        start = now()
        await raw.send(b"a" * 100)  # now past the limit, and still no newline
        assert await raw.read_until_closed(timeout=2) == b""
        assert elapsed_since(start) < 2
        assert srv.protocol_errors == 1
        await assert_serving(srv)


async def test_frames_glued_to_the_option_are_served(server):
    async with raw_connection(server.address, handshake=False) as raw:
        await raw.send(option() + request(1, "Arith.add", 1, 2) + request(2, "Arith.add", 3, 4))
        ack = await raw.read_ack()
        assert ack["MagicNumber"] == p.MAGIC_NUMBER
        assert ack["MaxFrameSize"] == server.max_frame_size
        responses = {r.seq: r for r in [await raw.read_response(), await raw.read_response()]}
    assert responses == {1: p.Response(1, None, 3), 2: p.Response(2, None, 7)}


async def test_option_sent_byte_by_byte_then_frames(server):
    async with raw_connection(server.address, handshake=False) as raw:
        data = option() + request(1, "Arith.add", 5, 6)
        for i in range(len(data)):
            await raw.send(data[i : i + 1])
        await raw.read_ack()
        assert await raw.read_response() == p.Response(1, None, 11)


async def test_option_that_never_arrives_closed_after_handshake_timeout(arith):
    async with serving(arith, handshake_timeout=0.3) as srv, \
            raw_connection(srv.address, handshake=False) as raw:
        start = now()
        assert await raw.read_until_closed(timeout=3) == b""
        assert 0.25 <= elapsed_since(start) < 2.5
        assert srv.protocol_errors == 1
        await assert_serving(srv)


async def test_half_an_option_then_silence_closed_after_handshake_timeout(arith):
    async with serving(arith, handshake_timeout=0.3) as srv, \
            raw_connection(srv.address, handshake=False) as raw:
        start = now()
        await raw.send(option()[:10])
        assert await raw.read_until_closed(timeout=3) == b""
        assert 0.25 <= elapsed_since(start) < 2.5
        await assert_serving(srv)


# --------------------------------------------------------------------------- framing rows (3, 4, 5, 10)


async def test_truncated_frame_then_eof_never_dispatched(server, arith):
    async with raw_connection(server.address) as raw:
        await raw.send(request(1, "Arith.add", 1, 2)[:-2])
        raw.writer.write_eof()
        assert await raw.read_until_closed() == b""
    assert arith.calls == 0
    await assert_serving(server)


async def test_slow_loris_half_frame_then_silence_closed_after_frame_timeout(arith):
    async with serving(arith, frame_timeout=0.3) as srv:
        async with raw_connection(srv.address) as raw:
            start = now()
            await raw.send(request(1, "Arith.add", 1, 2)[:6])
            assert await raw.read_until_closed(timeout=3) == b""
            assert 0.25 <= elapsed_since(start) < 2.5
        assert srv.protocol_errors == 1
        assert arith.calls == 0
        await assert_serving(srv)


async def test_slow_but_steady_frames_are_not_cut_by_frame_timeout(arith):
    # Every frame arrives whole within about 0.05 s, but each write ends mid-frame, so
    # some frame is always partly buffered. frame_timeout bounds one frame, not the stream.
    async with serving(arith, frame_timeout=0.5) as srv, raw_connection(srv.address) as raw:
        frames = [request(i, "Arith.add", i, 1) for i in range(1, 17)]
        await raw.send(frames[0][:5])
        for i in range(1, len(frames)):
            await asyncio.sleep(0.05)  # pacing is the input here (a slow client), not a wait
            await raw.send(frames[i - 1][5:] + frames[i][:5])
            assert await raw.read_response() == p.Response(i, None, i + 1)
        await raw.send(frames[-1][5:])
        assert await raw.read_response() == p.Response(16, None, 17)
        assert srv.protocol_errors == 0


async def test_length_prefix_4gib_closed_at_once(server, client):
    async with raw_connection(server.address) as raw:
        start = now()
        await raw.send(b"\xff\xff\xff\xff" + b"\x96\x00\x01")
        assert await raw.read_until_closed(timeout=2) == b""
        assert elapsed_since(start) < 2  # not the 30 s frame timeout: rejected on the length alone
    assert server.protocol_errors == 1
    await unaffected(client)
    await assert_serving(server)


async def test_frame_over_max_frame_size_closed(arith):
    async with serving(arith, max_frame_size=1024) as srv, raw_connection(srv.address) as raw:
        start = now()
        await raw.send((1025).to_bytes(4, "big"))  # the length alone is enough
        assert await raw.read_until_closed(timeout=2) == b""
        assert elapsed_since(start) < 2  # frame timeout is 30 s: rejected on the length alone
        assert srv.protocol_errors == 1
        await assert_serving(srv)


async def test_frame_of_exactly_max_frame_size_is_served(arith, hostile):
    async with serving(arith, hostile, max_frame_size=1024) as srv, raw_connection(srv.address) as raw:
        text = ""
        while len(data := request(1, "Hostile.size", text)) - 4 < 1024:
            text += "x"
        assert len(data) - 4 == 1024
        await raw.send(data)
        assert await raw.read_response() == p.Response(1, None, len(text))


async def test_zero_length_frame_closed(server, client):
    async with raw_connection(server.address) as raw:
        await raw.send(b"\x00\x00\x00\x00" + request(1, "Arith.add", 1, 2))
        assert await raw.read_until_closed() == b""
    assert server.protocol_errors == 1
    await unaffected(client)
    await assert_serving(server)


# --------------------------------------------------------------------------- message rows (6, 7, 8, 9)


async def test_deeply_nested_request_gets_error_reply_and_connection_stays_usable(server, arith):
    nested = b"\x96\x00\x01\xa9Arith.add\xc0" + b"\x91" * 100_000 + b"\xc0" + b"\x80"
    async with raw_connection(server.address) as raw:
        await raw.send(frame(nested))
        response = await raw.read_response()
        assert response.seq == 1 and response.result is None
        assert response.error is not None
        assert response.error[:2] == (p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments")
        assert arith.calls == 0
        await raw.send(request(2, "Arith.add", 1, 2))
        assert await raw.read_response() == p.Response(2, None, 3)
    assert server.protocol_errors == 0


BAD_BODIES = {
    "negative_timeout": pack([0, 1, "Arith.add", -1, [1, 2], {}]),
    "nan_timeout": pack([0, 1, "Arith.add", float("nan"), [1, 2], {}]),
    "args_map": pack([0, 1, "Arith.add", None, {"a": 1}, {}]),
    "kwargs_array": pack([0, 1, "Arith.add", None, [1, 2], [3]]),
    "ext_type": pack([0, 1, "Arith.add", None, [1, __import__("msgpack").ExtType(5, b"x")], {}]),
    "int_map_key": pack([0, 1, "Arith.add", None, [1, 2], {1: 2}]),
    "huge_array_header": b"\x96\x00\x01\xa9Arith.add\xc0\xdd\xff\xff\xff\xff\x80",
    "huge_str_header": b"\x96\x00\x01\xa9Arith.add\xc0\x91\xdb\xff\xff\xff\xff\x80",
    "trailing_bytes": pack([0, 1, "Arith.add", None, [1, 2], {}]) + b"\xc0",
    "invalid_utf8": b"\x96\x00\x01\xa9Arith.ad\xff\xc0\x92\x01\x02\x80",
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
async def test_bad_request_with_known_seq_gets_error_reply(server, client, arith, name):
    async with raw_connection(server.address) as raw:
        await raw.send(frame(BAD_BODIES[name]) + request(2, "Arith.add", 1, 2))
        response = await raw.read_response()
        assert response.seq == 1
        assert response.error is not None and response.error[0] == p.ErrorCode.INVALID_ARGUMENT
        assert await raw.read_response() == p.Response(2, None, 3)
    assert arith.calls == 1  # only seq 2 ran
    assert server.protocol_errors == 0
    await unaffected(client)


WRONG_SHAPES = {
    "map": pack({"seq": 1, "service_method": "Arith.add"}),
    "three_elements": pack([0, 1, "Arith.add"]),
    "seq_string": pack([0, "1", "Arith.add", None, [1, 2], {}]),
    "seq_zero": pack([0, 0, "Arith.add", None, [1, 2], {}]),
    "seq_negative": pack([0, -5, "Arith.add", None, [1, 2], {}]),
    "seq_bool": pack([0, True, "Arith.add", None, [1, 2], {}]),
    "seq_2_64_minus_1": pack([0, 2**64 - 1, "Arith.add", None, [1, 2], {}]),
    "response_type": pack([1, 1, None, 3]),
    "unknown_type": pack([9, 1, "Arith.add", None, [1, 2], {}]),
    "empty_array": pack([]),
    "byte_c1": b"\xc1",
    "huge_top_level_array": b"\xdd\xff\xff\xff\xff",
}


@pytest.mark.parametrize("name", list(WRONG_SHAPES))
async def test_header_of_wrong_shape_closes_connection(server, client, arith, name):
    async with raw_connection(server.address) as raw:
        await raw.send(frame(WRONG_SHAPES[name]) + request(2, "Arith.add", 1, 2))
        assert await raw.read_until_closed() == b""  # no reply, not even for seq 2
    assert server.protocol_errors == 1
    assert arith.calls == 0
    await unaffected(client)
    await assert_serving(server)


async def test_duplicate_seq_in_flight_closes_connection(server, client, arith):
    async with raw_connection(server.address) as raw:
        await raw.send(request(1, "Arith.sleep", 30) + request(1, "Arith.sleep", 30))
        assert await raw.read_until_closed() == b""
    assert server.protocol_errors == 1
    await unaffected(client)
    await assert_serving(server)


async def test_seq_can_be_reused_after_its_call_finished(server):
    async with raw_connection(server.address) as raw:
        await raw.send(request(1, "Arith.add", 1, 2))
        assert await raw.read_response() == p.Response(1, None, 3)
        await raw.send(request(1, "Arith.add", 2, 2))
        assert await raw.read_response() == p.Response(1, None, 4)


# --------------------------------------------------------------------------- method names (13, 15)


async def test_10kb_method_name_gets_error_reply(server, client):
    async with raw_connection(server.address) as raw:
        await raw.send(request(1, "Arith." + "a" * 10_000) + request(2, "Arith.add", 1, 2))
        response = await raw.read_response()
        assert response.seq == 1 and response.error is not None
        assert response.error[:2] == (p.ErrorCode.NOT_FOUND, "MethodNotFound")
        assert len(response.error[2]) < 300  # the name is not echoed back whole
        assert await raw.read_response() == p.Response(2, None, 3)
    with pytest.raises(geerpc.MethodNotFound):
        await client.call("Arith." + "a" * 10_000)
    await unaffected(client)


UNREACHABLE = ["__init__", "__class__", "_secret", "Arith._secret", "Arith.__init__", "Arith.__class__",
               "Arith.add.__globals__", "Arith.__dict__", "Arith.__getattribute__", "Arith.add.__func__",
               "Arith._Arith__secret", "Arith.__reduce__", "Arith.__module__", "Arith", "", "NoDot",
               "a.b.c", ".add", "Arith.", "Arith..add", "arith.add", "Arith.add ", "Arith.mul.__call__"]


@pytest.mark.parametrize("name", UNREACHABLE)
async def test_private_and_dunder_names_are_unreachable_raw(server, arith, name):
    async with raw_connection(server.address) as raw:
        await raw.send(request(1, name, 1, 2) + request(2, "Arith.add", 1, 2))
        data = await raw.read_frame()
        response = p.decode_response(data)
        assert response.seq == 1
        assert response.result is None
        assert response.error is not None and response.error[0] == p.ErrorCode.NOT_FOUND
        assert response.error[1] in ("MethodNotFound", "ServiceNotFound")
        for leak in (b"<function", b"<bound", b"object at 0x", b"<class", b"'secret'", b"__builtins__"):
            assert leak not in data
        assert await raw.read_response() == p.Response(2, None, 3)
    assert arith.calls == 1


@pytest.mark.parametrize("name", UNREACHABLE)
async def test_private_and_dunder_names_are_unreachable_through_the_client(client, arith, name):
    with pytest.raises(geerpc.RemoteError) as info:
        await client.call(name, 1, 2)
    assert isinstance(info.value, (geerpc.MethodNotFound, geerpc.ServiceNotFound))
    assert "secret'" not in str(info.value).replace("_secret'", "")
    assert "<" not in str(info.value)
    assert arith.calls == 0
    await unaffected(client)


@pytest.mark.parametrize("name", [123, None, b"Arith.add", ["Arith", "add"]], ids=repr)
async def test_non_str_method_name_gets_error_reply(server, client, arith, name):
    async with raw_connection(server.address) as raw:
        await raw.send(frame(pack([0, 1, name, None, [1, 2], {}])) + request(2, "Arith.add", 1, 2))
        response = await raw.read_response()
        assert response.seq == 1 and response.error is not None
        assert response.error[:2] == (p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments")
        assert await raw.read_response() == p.Response(2, None, 3)
    with pytest.raises(geerpc.RemoteError):
        await client.call(name, 1, 2)
    assert arith.calls == 1
    await unaffected(client)


# --------------------------------------------------------------------------- arguments (14)

WRONG_ARGUMENTS = {
    "too_few": ([], {}),
    "too_many": ([1, 2], {}),
    "extra_kwarg": ([1], {"zz": 1}),
    "duplicate": ([1], {"a": 1}),
    "kw_only_positional": ([1, 2, 3], {}),
}


@pytest.mark.parametrize("method", ["touch", "touch_task", "touch_sync"])
@pytest.mark.parametrize("case", list(WRONG_ARGUMENTS))
async def test_wrong_arguments_are_invalid_arguments_and_handler_not_invoked(hserver, client, hostile, method,
                                                                            case):
    args, kwargs = WRONG_ARGUMENTS[case]
    with pytest.raises(geerpc.InvalidArguments) as info:
        async with asyncio.timeout(2):
            await client.call(f"Hostile.{method}", *args, **kwargs)
    assert info.value.type == "InvalidArguments"
    assert f"Hostile.{method}" in str(info.value)
    assert hostile.calls == 0
    assert await client.call(f"Hostile.{method}", 1, c=2) == 3
    assert hostile.calls == 1


@pytest.mark.parametrize("method", ["touch", "touch_task", "touch_sync"])
async def test_non_str_keyword_names_are_invalid_arguments(hserver, hostile, method):
    async with raw_connection(hserver.address) as raw:
        await raw.send(frame(pack([0, 1, f"Hostile.{method}", None, [1], {b"c": 1}])))
        response = await raw.read_response()
        assert response.seq == 1 and response.error is not None
        assert response.error[:2] == (p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments")
    assert hostile.calls == 0


async def test_wrong_argument_type_is_the_handlers_own_error(hserver, client):
    # Nothing checks annotations: the call binds, the handler runs and raises TypeError,
    # which is reported as the handler's error (not InvalidArguments: the method ran).
    with pytest.raises(geerpc.RemoteError) as info:
        await client.call("Hostile.typed", "one")
    assert not isinstance(info.value, geerpc.InvalidArguments)
    assert info.value.type == "TypeError"
    assert await client.call("Hostile.typed", 1) == 2


# --------------------------------------------------------------------------- handler errors (16, 17)


@pytest.mark.parametrize("path", ["raise_inline", "raise_task", "raise_sync"])
@pytest.mark.parametrize("kind", list(EXCEPTIONS))
async def test_handler_exception_becomes_remote_error(hserver, client, path, kind):
    with pytest.raises(geerpc.RemoteError) as info:
        async with asyncio.timeout(2):
            await client.call(f"Hostile.{path}", kind)
    error = info.value
    # a built-in's name makes the error that built-in too (a RemoteError still); others stay plain
    assert type(error) is geerpc.RemoteError or (kind == "ValueError" and isinstance(error, ValueError))
    assert error.type == kind
    assert "Traceback" not in str(error) and "File \"" not in str(error)
    expected = {"ValueError": "bad value", "CustomError": "custom trouble", "SystemExit": "3",
                "Unprintable": "<unprintable Unprintable>"}
    if kind in expected:
        assert str(error) == expected[kind]
    await unaffected(client)  # the same connection goes on
    await assert_serving(hserver)


async def test_handler_raising_cancelled_error_itself_gets_a_reply(hserver, client):
    # The call was not cancelled (nobody cancelled it): the handler raised
    # CancelledError itself, e.g. by awaiting a future someone else cancelled.
    # Its caller must get an answer, not wait forever.
    with pytest.raises(geerpc.RemoteError) as info:
        async with asyncio.timeout(2):
            await client.call("Hostile.raise_cancelled")
    assert info.value.type == "CancelledError"
    await unaffected(client)


# --------------------------------------------------------------------------- results (20)


@pytest.mark.parametrize("path", ["unencodable", "unencodable_task"])
@pytest.mark.parametrize("kind", list(UNENCODABLE))
async def test_unencodable_result_is_serialization_error(hserver, client, path, kind):
    with pytest.raises(geerpc.RemoteError) as info:
        async with asyncio.timeout(2):
            await client.call(f"Hostile.{path}", kind)
    assert info.value.type == "SerializationError"
    assert "Traceback" not in str(info.value)
    assert not client.closed
    await unaffected(client)


async def test_result_with_non_str_map_keys_does_not_break_the_connection(hserver, client):
    # The server refuses to send {1: "one"} (the client would refuse to decode int map
    # keys), so that one call fails, and the call in flight beside it and later ones go on.
    pending = asyncio.ensure_future(client.call("Arith.sleep", 0.2))
    try:
        async with asyncio.timeout(2):
            with pytest.raises(geerpc.RemoteError) as info:
                await client.call("Hostile.int_keys")
    finally:
        async with asyncio.timeout(2):
            (other,) = await asyncio.gather(pending, return_exceptions=True)
    assert type(info.value) is geerpc.RemoteError
    assert info.value.type == "SerializationError"
    assert str(info.value) == ("result of Hostile.int_keys cannot be encoded: "
                               "map keys must be str or bytes (got int) in the result")  # said by the server
    assert other == 0.2, other  # the call in flight beside it was not failed
    assert not client.closed
    await unaffected(client)


async def test_result_bigger_than_max_frame_size_is_an_error_reply(arith, hostile):
    async with serving(arith, hostile, max_frame_size=1024) as srv:
        async with raw_connection(srv.address) as raw:
            await raw.send(request(1, "Hostile.blob", 2000) + request(2, "Hostile.blob_task", 2000)
                           + request(3, "Hostile.blob_sync", 2000) + request(4, "Hostile.blob", 900))
            replies = {}
            for _ in range(4):
                data = await raw.read_frame()
                assert len(data) <= 1024
                response = p.decode_response(data)
                replies[response.seq] = response
            for seq in (1, 2, 3):
                assert replies[seq].error is not None
                assert replies[seq].error[:2] == (p.ErrorCode.INTERNAL, "SerializationError")
            assert replies[4] == p.Response(4, None, b"x" * 900)
        async with asyncio.timeout(5):
            client = await geerpc.dial(srv.address, max_frame_size=1024)
            try:
                with pytest.raises(geerpc.RemoteError) as info:
                    await client.call("Hostile.blob", 5000)
                assert info.value.type == "SerializationError"
                assert await client.call("Arith.add", 1, 2) == 3
            finally:
                await client.close()


async def test_error_message_bigger_than_max_frame_size_still_fits_the_limit(arith, hostile):
    # A handler's exception message is the handler's (or the caller's) doing; the
    # error reply must still respect the frame limit, or the peer drops the connection.
    async with serving(arith, hostile, max_frame_size=1024) as srv:
        async with raw_connection(srv.address) as raw:
            await raw.send(request(1, "Hostile.raise_long", 5000))
            data = await raw.read_frame()
            assert len(data) <= 1024
            response = p.decode_response(data)
            assert response.seq == 1 and response.error is not None and response.error[1] == "ValueError"
        async with asyncio.timeout(5):
            client = await geerpc.dial(srv.address, max_frame_size=1024)
            try:
                with pytest.raises(geerpc.RemoteError) as info:
                    await client.call("Hostile.raise_long", 5000)
                assert info.value.type == "ValueError"
                assert not client.closed
                assert await client.call("Arith.add", 1, 2) == 3
            finally:
                await client.close()


# --------------------------------------------------------------------------- flow control (12)


async def test_pipelined_flood_is_backpressured_at_max_in_flight(arith):
    gate = Gate()
    async with serving(arith, gate, max_in_flight=4) as srv, raw_connection(srv.address) as raw:
        await raw.send(b"".join(request(i, "Gate.wait", i) for i in range(1, 201)))
        await eventually(lambda: gate.started >= 4)
        await assert_serving(srv)  # a full round trip elsewhere: the server had time to over-admit
        assert gate.started == 4 and gate.running == 4
        (conn,) = [c for c in srv._connections if c.in_flight]
        assert conn.running == 4  # running: exactly the cap
        assert conn.held <= 16  # received and waiting: a bounded read-ahead, then reading stops
        assert conn._reading_paused
        gate.release.set()
        responses = [await raw.read_response() for _ in range(200)]
        assert sorted(r.seq for r in responses) == list(range(1, 201))
        assert all(r.error is None and r.result == r.seq for r in responses)  # none rejected
        assert gate.peak == 4
        assert gate.started == 200


@pytest.mark.parametrize("method", ["blob_task", "blob_sync", "blob"])
async def test_client_that_never_reads_replies_is_not_buffered_without_bound(arith, hostile, method):
    size, count, in_flight = 256 * 1024, 100, 4
    async with serving(arith, hostile, max_in_flight=in_flight) as srv, \
            raw_connection(srv.address, rcvbuf=4096) as raw:
        await raw.send(b"".join(request(i, f"Hostile.{method}", size) for i in range(1, count + 1)))
        def stalled() -> bool:  # nothing runs: the server waits for the peer to read
            return any(c.bytes_held > 64 * 1024 and not c.running for c in srv.snapshot().connections)

        await eventually(stalled, what="the server to stop starting calls for a peer that does not read")
        await assert_serving(srv)  # other clients are served meanwhile
        (conn,) = [c for c in srv.snapshot().connections if c.bytes_held > 64 * 1024]
        # What the server holds for this peer: about one write's worth past the
        # high-water mark plus the calls in flight, and the small requests held (each
        # charged its worst case), not the replies to every request.
        assert conn.bytes_held <= 64 * 1024 + (in_flight + 2) * (size + 64) + conn.held * 20_000, conn
        assert hostile.blobs < count // 2, hostile.blobs


# --------------------------------------------------------------------------- connections (11, 21, 22)


async def test_connection_flood_beyond_max_connections_refused_promptly(arith):
    # Refused only when every connection has a call in flight: idle ones are evicted
    # instead (tests/test_connection_slots.py).
    async with serving(arith, max_connections=3) as srv:
        clients = [await geerpc.dial(srv.address, connect_timeout=2) for _ in range(3)]
        busy = [asyncio.create_task(c.call("Arith.sleep", 30)) for c in clients]
        try:
            await eventually(lambda: sum(c.running for c in srv.snapshot().connections) == 3,
                             what="a call running on every connection")
            async with raw_connection(srv.address, handshake=False) as raw:
                start = now()
                answer = await raw.read_until_closed(timeout=2)
                assert elapsed_since(start) < 2  # handshake timeout is 10 s: refused at once
            assert "too many connections" in json.loads(answer)["Error"]
            with pytest.raises(geerpc.ConnectError):
                await geerpc.dial(srv.address, connect_timeout=2)
            for c in clients:
                assert await c.call("Arith.add", 1, 1) == 2  # the admitted ones are fine
        finally:
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
            for c in clients:
                await c.close()
        fresh = await dial_when_possible(srv.address)  # slots free again once they close
        try:
            assert await fresh.call("Arith.add", 1, 2) == 3
        finally:
            await fresh.close()


async def test_client_disconnect_mid_call_cancels_the_handler(server, client, arith):
    async with raw_connection(server.address) as raw:
        await raw.send(request(1, "Arith.sleep", 30))
        async with asyncio.timeout(2):
            await arith.started.wait()
    async with asyncio.timeout(2):
        await arith.cancelled.wait()
    await unaffected(client)
    await assert_serving(server)


async def test_client_reset_mid_call_cancels_the_handler(server, client, arith):
    raw = await Raw.handshake(server.address)
    await raw.send(request(1, "Arith.sleep", 30))
    async with asyncio.timeout(2):
        await arith.started.wait()
    sock = raw.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST
    await raw.close()
    async with asyncio.timeout(2):
        await arith.cancelled.wait()
    await unaffected(client)
    await assert_serving(server)


async def test_eof_from_client_cancels_its_calls_in_flight(server, client, arith):
    async with raw_connection(server.address) as raw:
        await raw.send(request(1, "Arith.sleep", 30))
        async with asyncio.timeout(2):
            await arith.started.wait()
        raw.writer.write_eof()
        async with asyncio.timeout(2):
            await arith.cancelled.wait()
        assert await raw.read_until_closed() == b""
    await unaffected(client)
    await assert_serving(server)


async def test_cancel_message_cancels_handler_without_reply(server, arith):
    async with raw_connection(server.address) as raw:
        await raw.send(request(1, "Arith.sleep", 30))
        async with asyncio.timeout(2):
            await arith.started.wait()
        await raw.send(p.encode_cancel(1))
        async with asyncio.timeout(2):
            await arith.cancelled.wait()
        await raw.send(request(2, "Arith.add", 1, 2))
        assert await raw.read_response() == p.Response(2, None, 3)  # nothing for seq 1 came first
        await raw.send(request(3, "Arith.add", 2, 2))
        assert await raw.read_response() == p.Response(3, None, 4)
    assert server.protocol_errors == 0


async def test_cancel_for_unknown_seq_is_ignored(server):
    async with raw_connection(server.address) as raw:
        await raw.send(p.encode_cancel(99) + p.encode_cancel(2**63 - 1) + request(1, "Arith.add", 1, 2))
        assert await raw.read_response() == p.Response(1, None, 3)
        await raw.send(p.encode_cancel(1))  # already answered: nothing to cancel
        await raw.send(request(2, "Arith.add", 2, 3))
        assert await raw.read_response() == p.Response(2, None, 5)
    assert server.protocol_errors == 0


# --------------------------------------------------------------------------- hostile server (26)


async def _ack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(ACK)
    await writer.drain()


async def _until_closed(reader: asyncio.StreamReader) -> None:
    await reader.read()


async def test_client_ignores_reply_with_unknown_seq():
    async def behaviour(reader, writer):
        await _ack(reader, writer)
        req = await read_request(reader)
        writer.write(p.encode_response(req.seq + 1000, "bogus") + p.encode_response(req.seq, 3))
        await _until_closed(reader)

    async with fake_server(behaviour) as address:
        client = await geerpc.dial(address, connect_timeout=2)
        try:
            async with asyncio.timeout(2):
                assert await client.call("Arith.add", 1, 2) == 3
            assert not client.closed
        finally:
            await client.close()


async def test_client_ignores_duplicate_reply():
    async def behaviour(reader, writer):
        await _ack(reader, writer)
        first = await read_request(reader)
        writer.write(p.encode_response(first.seq, "first") + p.encode_response(first.seq, "duplicate"))
        second = await read_request(reader)
        writer.write(p.encode_response(second.seq, "second"))
        await _until_closed(reader)

    async with fake_server(behaviour) as address:
        client = await geerpc.dial(address, connect_timeout=2)
        try:
            async with asyncio.timeout(2):
                assert await client.call("S.m") == "first"
                assert await client.call("S.m") == "second"
            assert not client.closed
        finally:
            await client.close()


async def test_undecodable_result_from_server_fails_only_that_call():
    async def behaviour(reader, writer):
        await _ack(reader, writer)
        first = await read_request(reader)
        writer.write(frame(pack([1, first.seq, None, {1: "int keys are not allowed"}])))
        second = await read_request(reader)
        writer.write(p.encode_response(second.seq, "fine"))
        await _until_closed(reader)

    async with fake_server(behaviour) as address:
        client = await geerpc.dial(address, connect_timeout=2)
        try:
            async with asyncio.timeout(2):
                with pytest.raises(geerpc.RemoteError) as info:
                    await client.call("S.m")
                assert info.value.type == "SerializationError"
                assert not client.closed
                assert await client.call("S.m") == "fine"
        finally:
            await client.close()


BAD_SERVER_FRAMES = {
    "oversize": (p.DEFAULT_MAX_FRAME_SIZE + 1).to_bytes(4, "big") + b"x" * 16,
    "length_4gib": b"\xff\xff\xff\xff",
    "length_zero": b"\x00\x00\x00\x00",
    "garbage_payload": frame(b"\xc1\xc1\xc1"),
    "wrong_shape": frame(pack([1, 1])),
    "bad_error_triple": frame(pack([1, 1, "boom", None])),
    "text": b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
}


@pytest.mark.parametrize("name", list(BAD_SERVER_FRAMES))
async def test_bad_frame_from_server_fails_pending_call_promptly(name):
    async def behaviour(reader, writer):
        await _ack(reader, writer)
        await read_request(reader)
        writer.write(BAD_SERVER_FRAMES[name])
        await _until_closed(reader)

    async with fake_server(behaviour) as address:
        client = await geerpc.dial(address, connect_timeout=2)
        try:
            start = now()
            with pytest.raises(geerpc.ConnectionClosed):
                async with asyncio.timeout(2):
                    await client.call("S.m", timeout=30)
            assert elapsed_since(start) < 1.5  # not at the call's 30 s timeout
            assert client.closed
            with pytest.raises(geerpc.ConnectionClosed):
                await client.call("S.m")
        finally:
            await client.close()


async def test_server_refusal_option_makes_dial_raise_connect_error():
    async def behaviour(reader, writer):
        await reader.readline()
        writer.write(b'{"Error":"go away"}\n')
        await writer.drain()

    async with fake_server(behaviour) as address:
        with pytest.raises(geerpc.ConnectError, match="go away"):
            await geerpc.dial(address, connect_timeout=2)


@pytest.mark.parametrize("banner", [b"SSH-2.0-OpenSSH_9.6\r\n", b"HTTP/1.1 400 Bad Request\r\n\r\n",
                                    b'{"MagicNumber":1}\n', b'{"MagicNumber":"3927900"}\n', b"[]\n",
                                    b"A" * 5000, b"\x00\xff\n"], ids=range(7))
async def test_non_geerpc_banner_makes_dial_raise_connect_error(banner):
    async def behaviour(reader, writer):
        writer.write(banner)
        await writer.drain()
        await _until_closed(reader)

    async with fake_server(behaviour) as address:
        start = now()
        with pytest.raises(geerpc.ConnectError):
            await geerpc.dial(address, connect_timeout=5)
        assert elapsed_since(start) < 2


async def test_server_closing_before_ack_makes_dial_raise_connect_error():
    async def behaviour(reader, writer):
        await reader.readline()

    async with fake_server(behaviour) as address:
        with pytest.raises(geerpc.ConnectError):
            await geerpc.dial(address, connect_timeout=2)


async def test_server_that_never_acks_makes_dial_time_out():
    async def behaviour(reader, writer):
        await _until_closed(reader)

    async with fake_server(behaviour) as address:
        start = now()
        with pytest.raises(geerpc.ConnectTimeout):
            await geerpc.dial(address, connect_timeout=0.3)
        assert 0.25 <= elapsed_since(start) < 1.5
