"""The server handshake without sockets: Option line, HTTP CONNECT switch, HTTP answers."""

from __future__ import annotations

import pytest

from geerpc import http
from geerpc import protocol as p
from geerpc.handshake import ServerHandshake

OPTION = p.encode_option(p.Option())
FRAME = p.encode_request(1, "Arith.add", [1, 2], {}, None)


def route(request: http.Request) -> bytes | None:
    if request.method == "CONNECT":
        return None
    return http.response(200, "OK", f"{request.method} {request.path}")


def feed_bytewise(handshake: ServerHandshake, data: bytes):
    written = b""
    for i in range(len(data)):
        step = handshake.feed(data[i : i + 1])
        written += step.write
        if step.option is not None or step.close is not None:
            return step, written, data[i + 1 :]
    raise AssertionError("handshake never finished")


# Async tests: aiohttp's HTTP parser, used for the HTTP variants, wants a running loop.


async def test_option_whole_hands_on_the_frames_after_it():
    step = ServerHandshake(route).feed(OPTION + FRAME)
    assert step.option == p.Option() and step.rest == FRAME and step.close is None and step.write == b""


async def test_option_byte_by_byte():
    step, written, rest = feed_bytewise(ServerHandshake(route), OPTION + FRAME)
    assert step.option is not None and written == b""
    assert step.rest + rest == FRAME


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
async def test_connect_switch_then_option_in_one_chunk(newline):
    data = b"CONNECT /_geerpc_ HTTP/1.0" + newline * 2 + OPTION + FRAME
    step = ServerHandshake(route).feed(data)
    assert step.write == http.CONNECTED and step.option is not None and step.rest == FRAME


async def test_connect_switch_byte_by_byte():
    step, written, rest = feed_bytewise(ServerHandshake(route), b"CONNECT /_geeprc_ HTTP/1.0\n\n" + OPTION + FRAME)
    assert written == http.CONNECTED and step.option is not None and step.rest + rest == FRAME


async def test_plain_http_request_is_answered_and_closed():
    step = ServerHandshake(route).feed(b"GET /debug/geerpc HTTP/1.0\r\n\r\n")
    assert step.write.startswith(b"HTTP/1.0 200 OK") and step.write.endswith(b"GET /debug/geerpc")
    assert step.close is not None and not step.abort and not step.protocol_error


async def test_malformed_request_line_is_400_before_the_head_ends():
    handshake = ServerHandshake(route)
    assert handshake.feed(b"GET /x HTTP/1.0").close is None  # no newline yet: nothing to judge
    step = handshake.feed(b"x\r\n")  # "HTTP/1.0x": the line is complete and bad
    assert step.write.startswith(b"HTTP/1.0 400") and step.protocol_error and step.close is not None


async def test_a_second_http_request_after_connect_is_not_http():
    step = ServerHandshake(route).feed(b"CONNECT /_geerpc_ HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    assert step.write == http.CONNECTED and step.abort and step.protocol_error


@pytest.mark.parametrize("data", [b"\x00garbage", b"hello", b"\x96\x00\x01", b"[1,2]\n"])
async def test_anything_else_first_is_aborted(data):
    step = ServerHandshake(route).feed(data)
    assert step.abort and step.protocol_error and step.write == b""


async def test_unknown_codec_is_refused_with_a_reason():
    line = b'{"MagicNumber":3927900,"CodecType":"application/gob"}\n'
    step = ServerHandshake(route).feed(line)
    refusal = p.decode_option(step.write.strip())
    assert "application/gob" in (refusal.error or "") and step.close is not None and not step.abort


async def test_wrong_magic_and_overlong_option_are_aborted():
    assert ServerHandshake(route).feed(b'{"MagicNumber":1}\n').abort
    handshake = ServerHandshake(route)
    assert handshake.feed(b"{" + b" " * 500).close is None
    assert handshake.feed(b" " * 600).abort  # past 1024 bytes without a newline
