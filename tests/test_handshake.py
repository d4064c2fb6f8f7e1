"""Both handshakes without sockets or an event loop: Option line, HTTP CONNECT switch, HTTP answers."""

from __future__ import annotations

import pytest

import geerpc
from geerpc import http
from geerpc import protocol as p
from geerpc.handshake import ClientHandshake, ClientStep, ServerHandshake, Step, agree

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



def test_option_whole_hands_on_the_frames_after_it():
    step = ServerHandshake(route).feed(OPTION + FRAME)
    assert step.option == p.Option() and step.rest == FRAME and step.close is None and step.write == b""


def test_option_byte_by_byte():
    step, written, rest = feed_bytewise(ServerHandshake(route), OPTION + FRAME)
    assert step.option is not None and written == b""
    assert step.rest + rest == FRAME


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_connect_switch_then_option_in_one_chunk(newline):
    data = b"CONNECT /_geerpc_ HTTP/1.0" + newline * 2 + OPTION + FRAME
    step = ServerHandshake(route).feed(data)
    assert step.write == http.CONNECTED and step.option is not None and step.rest == FRAME


def test_connect_switch_byte_by_byte():
    step, written, rest = feed_bytewise(ServerHandshake(route), b"CONNECT /_geeprc_ HTTP/1.0\n\n" + OPTION + FRAME)
    assert written == http.CONNECTED and step.option is not None and step.rest + rest == FRAME


def test_plain_http_request_is_answered_and_closed():
    step = ServerHandshake(route).feed(b"GET /debug/geerpc HTTP/1.0\r\n\r\n")
    assert step.write.startswith(b"HTTP/1.0 200 OK") and step.write.endswith(b"GET /debug/geerpc")
    assert step.close is not None and not step.abort and not step.protocol_error


def test_malformed_request_line_is_400_before_the_head_ends():
    handshake = ServerHandshake(route)
    assert handshake.feed(b"GET /x HTTP/1.0").close is None  # no newline yet: nothing to judge
    step = handshake.feed(b"x\r\n")  # "HTTP/1.0x": the line is complete and bad
    assert step.write.startswith(b"HTTP/1.0 400") and step.protocol_error and step.close is not None


def test_a_second_http_request_after_connect_is_not_http():
    step = ServerHandshake(route).feed(b"CONNECT /_geerpc_ HTTP/1.0\r\n\r\nGET / HTTP/1.0\r\n\r\n")
    assert step.write == http.CONNECTED and step.abort and step.protocol_error


@pytest.mark.parametrize("data", [b"\x00garbage", b"hello", b"\x96\x00\x01", b"[1,2]\n"])
def test_anything_else_first_is_aborted(data):
    step = ServerHandshake(route).feed(data)
    assert step.abort and step.protocol_error and step.write == b""


def test_unknown_codec_is_refused_with_a_reason():
    line = b'{"MagicNumber":3927900,"CodecType":"application/gob"}\n'
    step = ServerHandshake(route).feed(line)
    refusal = p.decode_option(step.write.strip())
    assert "application/gob" in (refusal.error or "") and step.close is not None and not step.abort


def test_wrong_magic_and_overlong_option_are_aborted():
    assert ServerHandshake(route).feed(b'{"MagicNumber":1}\n').abort
    handshake = ServerHandshake(route)
    assert handshake.feed(b"{" + b" " * 500).close is None
    assert handshake.feed(b" " * 600).abort  # past 1024 bytes without a newline


def test_empty_feed_is_a_no_op():
    handshake = ServerHandshake(route)
    assert handshake.feed(b"") == Step()
    assert handshake.feed(OPTION).option is not None


# ------------------------------------------------------------------ the client's side

ADDRESS = "http@example:1"
MINE = p.Option(handle_timeout=5_000_000_000)
ACK = p.encode_option(p.Option(max_frame_size=1 << 20))
REPLY = p.frame(b"\x93\x01\xc0\x03")  # whatever follows the ack: handed on unread


def client(via_http: bool = True) -> ClientHandshake:
    handshake = ClientHandshake(ADDRESS, MINE, via_http=via_http)
    handshake.start()
    return handshake


def client_bytewise(handshake: ClientHandshake, data: bytes) -> tuple[ClientStep, bytes, bytes]:
    """Feed one byte at a time until the handshake ends: (last step, all writes, bytes not fed)."""
    written = b""
    for i in range(len(data)):
        step = handshake.feed(data[i : i + 1])
        written += step.write
        if step.option is not None or step.error is not None:
            return step, written, data[i + 1 :]
    raise AssertionError("client handshake never finished")


def error_of(step: ClientStep) -> str:
    assert step.error is not None and isinstance(step.error, geerpc.HandshakeError)
    assert step.option is None and step.write == b""
    return str(step.error)


def test_client_over_tcp_starts_with_the_option_line():
    assert ClientHandshake(ADDRESS, MINE, via_http=False).start() == p.encode_option(MINE)


def test_client_via_http_starts_with_connect_to_geerpcs_own_spelling():
    assert ClientHandshake(ADDRESS, MINE, via_http=True).start() == b"CONNECT /_geeprc_ HTTP/1.0\r\n\r\n"
    assert http.connect_request() == b"CONNECT /_geeprc_ HTTP/1.0\r\n\r\n"


def test_client_over_tcp_ack_whole_hands_on_the_replies_after_it():
    step = client(via_http=False).feed(ACK + REPLY)
    assert step == ClientStep(option=p.decode_option(ACK), rest=REPLY)


def test_client_over_tcp_ack_byte_by_byte():
    step, written, unfed = client_bytewise(client(via_http=False), ACK + REPLY)
    assert step.option == p.decode_option(ACK) and written == b"" and step.rest + unfed == REPLY


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["bare LF", "CRLF"])
def test_client_sends_the_option_only_once_connect_is_answered_200(newline):
    handshake = client()
    assert handshake.feed(b"HTTP/1.0 200 Connected to Gee RPC" + newline) == ClientStep()
    assert handshake.feed(newline) == ClientStep(write=p.encode_option(MINE))
    assert handshake.feed(ACK + REPLY) == ClientStep(option=p.decode_option(ACK), rest=REPLY)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["bare LF", "CRLF"])
def test_client_via_http_whole_answer_and_ack_in_one_chunk(newline):
    step = client().feed(b"HTTP/1.0 200 Connected to Gee RPC" + newline * 2 + ACK + REPLY)
    assert step == ClientStep(write=p.encode_option(MINE), option=p.decode_option(ACK), rest=REPLY)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["bare LF", "CRLF"])
def test_client_via_http_byte_by_byte(newline):
    answer = b"HTTP/1.0 200 Connected to Gee RPC" + newline * 2
    step, written, unfed = client_bytewise(client(), answer + ACK + REPLY)
    assert written == p.encode_option(MINE) and step.option == p.decode_option(ACK)
    assert step.rest + unfed == REPLY


def test_client_and_server_handshakes_talk_to_each_other():
    server, mine = ServerHandshake(route), ClientHandshake(ADDRESS, MINE, via_http=True)
    answer = server.feed(mine.start())
    assert answer.write == http.CONNECTED and answer.option is None
    step = mine.feed(answer.write)
    assert server.feed(step.write).option == MINE
    assert mine.feed(ACK).option == p.decode_option(ACK)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte by byte"])
def test_client_via_http_404_is_a_connect_error(split):
    answer = b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n"
    step = client_bytewise(client(), answer)[0] if split else client().feed(answer)
    assert error_of(step) == (f"{ADDRESS} answered CONNECT with 404 Not Found: "
                              f"an HTTP server, but not a geerpc or GeeRPC RPC port")


@pytest.mark.parametrize("answer", [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"\n\n", b"HTTP/1.0 20 OK\n\n",
                                    b"HTTP/1.0 200 OK\r\nBad header line\r\n\r\n", b'{"MagicNumber":3927900}\n\n'])
def test_client_via_http_garbage_is_a_bad_answer(answer):
    message = error_of(client().feed(answer))
    assert message.startswith(f"{ADDRESS}: bad answer to CONNECT (malformed HTTP: ") and message.endswith(")")


@pytest.mark.parametrize("split", [False, True], ids=["whole", "byte by byte"])
def test_client_via_http_head_over_max_head_is_a_bad_answer(split):
    answer = b"HTTP/1.0 200 OK\r\nX-Big: " + b"a" * http.MAX_HEAD
    step = client_bytewise(client(), answer)[0] if split else client().feed(answer)
    assert error_of(step) == (f"{ADDRESS}: bad answer to CONNECT "
                              f"(malformed HTTP: head longer than {http.MAX_HEAD} bytes)")


@pytest.mark.parametrize("via_http", [False, True], ids=["tcp", "http"])
def test_client_refusal_option_is_a_connect_error(via_http):
    handshake = client(via_http)
    if via_http:
        handshake.feed(http.CONNECTED)
    assert error_of(handshake.feed(b'{"Error":"too many connections"}\n' + REPLY)) == (
        f"{ADDRESS} refused the connection: too many connections")


@pytest.mark.parametrize(("answer", "reason"), [
    (b'{"MagicNumber":1}\n', "invalid magic number"),
    (b"[]\n", "Option must be a JSON object"),
    (b"A" * 5000, "Option line longer than"),
])
def test_client_bad_option_line_is_not_a_geerpc_server(answer, reason):
    message = error_of(client(via_http=False).feed(answer))
    assert message.startswith(f"{ADDRESS}: not a geerpc server (") and reason in message


def test_client_after_an_error_every_feed_returns_the_same_error():
    handshake = client()
    first = handshake.feed(b"HTTP/1.0 403 Forbidden\r\n\r\n")
    assert handshake.feed(ACK) is first and first.error is not None


def test_client_feed_after_the_ack_raises():
    handshake = client(via_http=False)
    assert handshake.feed(ACK).option is not None
    with pytest.raises(RuntimeError, match="done"):
        handshake.feed(REPLY)


def test_client_start_twice_or_feed_before_start_raises():
    handshake = ClientHandshake(ADDRESS, MINE, via_http=True)
    with pytest.raises(RuntimeError, match="before start"):
        handshake.feed(b"HTTP/1.0 200 OK\r\n\r\n")
    handshake.start()
    with pytest.raises(RuntimeError, match="twice"):
        handshake.start()


# -- agree: a connection's terms from the client's Option and the server's own --------

SERVER = {"frame_limit": 16 << 20, "handle_timeout": None, "max_frame_size": 16 << 20}


def test_agree_with_a_plain_geerpc_client_changes_nothing_and_announces_the_servers_terms():
    agreed = agree(p.Option(), **SERVER)
    assert (agreed.frame_limit, agreed.handle_timeout, agreed.keepalive, agreed.metadata) == (16 << 20, None, None, False)
    assert agreed.ack == p.Option(handle_timeout=0, max_frame_size=16 << 20)


@pytest.mark.parametrize(("client", "ours", "want"), [
    (0, 8 << 20, 8 << 20),  # the client says nothing: ours
    (4 << 20, 8 << 20, 4 << 20),  # the smaller applies
    (32 << 20, 8 << 20, 8 << 20),
    (1, 8 << 20, 1024),  # a frame limit below 1 KiB is taken as 1 KiB
])
def test_agree_takes_the_smaller_reply_frame_limit(client, ours, want):
    agreed = agree(p.Option(max_frame_size=client), **{**SERVER, "frame_limit": ours})
    assert agreed.frame_limit == want
    assert agreed.ack.max_frame_size == SERVER["max_frame_size"]  # the answer states the request limit


@pytest.mark.parametrize(("client_ns", "ours", "want"), [
    (0, None, None), (0, 2.0, 2.0), (1_500_000_000, None, 1.5), (1_500_000_000, 2.0, 1.5), (3_000_000_000, 2.0, 2.0),
])
def test_agree_takes_the_smaller_handle_timeout_and_tells_the_client(client_ns, ours, want):
    agreed = agree(p.Option(handle_timeout=client_ns), **{**SERVER, "handle_timeout": ours})
    assert agreed.handle_timeout == want
    assert agreed.ack.handle_timeout == (0 if want is None else int(want * 1e9))


def test_agree_never_announces_a_handle_timeout_of_zero_for_a_tiny_one():
    # 0 on the wire means "none": a sub-nanosecond limit still goes out as 1 ns
    assert agree(p.Option(), **{**SERVER, "handle_timeout": 1e-12}).ack.handle_timeout == 1


def test_agree_echoes_keepalive_and_acknowledges_metadata_and_streams_only_when_asked():
    agreed = agree(p.Option(keepalive=20_000_000_000, metadata=1, streams=1), **SERVER)
    assert (agreed.keepalive, agreed.metadata) == (20.0, True)
    assert (agreed.ack.keepalive, agreed.ack.metadata, agreed.ack.streams) == (20_000_000_000, 1, 1)
    plain = agree(p.Option(metadata=0, streams=0), **SERVER)
    assert (plain.ack.keepalive, plain.ack.metadata, plain.ack.streams, plain.metadata) == (0, 0, 0, False)
