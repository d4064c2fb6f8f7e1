"""The sans-IO wire protocol: Option line, framing, request and response codecs.

No sockets, no event loop: bytes go in, messages or errors come out. Each decoder is
fed whole, byte by byte, glued to what follows, and split at every offset.
"""

from __future__ import annotations

import json
import os

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from geerpc import protocol as p
from geerpc.errors import ProtocolError
from geerpc.framing import _RELEASE_AFTER as RELEASE_AFTER


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def body(frame: bytes) -> bytes:
    """The payload of a whole frame (strip the 4-byte length)."""
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    return frame[4:]


def option_line(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def drain(decoder: p.FrameDecoder) -> list[bytes]:
    out = []
    while (payload := decoder.next_frame()) is not None:
        out.append(payload)
    return out


def feed_chunks(decoder: p.FrameDecoder, chunks: list[bytes]) -> list[bytes]:
    out = []
    for chunk in chunks:
        decoder.feed(chunk)
        out += drain(decoder)
    return out


REQUEST = p.encode_request(5, "Arith.add", [1, 2], {"c": 3}, 1.5)
CANCEL = p.encode_cancel(6)
RESPONSE = p.encode_response(7, {"sum": [1, 2]})


# --------------------------------------------------------------------------- OptionReader


def test_option_reader_whole_line():
    reader = p.OptionReader()
    line, rest = reader.feed(p.encode_option(p.Option()))
    assert line is not None and not line.endswith(b"\n")
    assert rest == b""
    assert p.decode_option(line) == p.Option()


def test_option_reader_byte_by_byte():
    data = p.encode_option(p.Option(handle_timeout=5))
    reader = p.OptionReader()
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) == (None, b"")
    line, rest = reader.feed(data[-1:])
    assert line == data[:-1]
    assert rest == b""
    assert p.decode_option(line).handle_timeout == 5


def test_option_reader_hands_on_frames_glued_to_the_line_exactly():
    data = p.encode_option(p.Option())
    frames = REQUEST + CANCEL
    line, rest = p.OptionReader().feed(data + frames)
    assert line == data[:-1]
    assert rest == frames


def test_option_reader_newline_in_a_later_chunk_with_frames():
    data = p.encode_option(p.Option())
    reader = p.OptionReader()
    assert reader.feed(data[:10]) == (None, b"")
    line, rest = reader.feed(data[10:] + REQUEST)
    assert line == data[:-1]
    assert rest == REQUEST


def test_option_reader_takes_nothing_past_the_first_newline():
    # A second line after the first belongs to whoever reads next: it is leftover.
    line, rest = p.OptionReader().feed(b'{"a":1}\n{"b":2}\n')
    assert line == b'{"a":1}'
    assert rest == b'{"b":2}\n'


def test_option_reader_accepts_line_of_exactly_the_limit():
    text = b"{" + b" " * (p.MAX_OPTION_SIZE - 3) + b"}"
    assert len(text) + 1 == p.MAX_OPTION_SIZE
    line, rest = p.OptionReader().feed(text + b"\n" + b"xyz")
    assert line == text
    assert rest == b"xyz"


def test_option_reader_rejects_line_one_over_the_limit_with_newline():
    text = b"{" + b" " * (p.MAX_OPTION_SIZE - 2) + b"}"
    with pytest.raises(ProtocolError):
        p.OptionReader().feed(text + b"\n")


def test_option_reader_rejects_overlong_line_as_soon_as_the_limit_passes():
    reader = p.OptionReader()
    for _ in range(p.MAX_OPTION_SIZE - 1):
        assert reader.feed(b"a") == (None, b"")
    with pytest.raises(ProtocolError):
        reader.feed(b"a")


def test_option_reader_rejects_overlong_chunk_without_newline():
    with pytest.raises(ProtocolError):
        p.OptionReader().feed(b"{" * 100_000)


def test_option_reader_rejects_newline_far_past_the_limit_in_one_chunk():
    with pytest.raises(ProtocolError):
        p.OptionReader().feed(b"x" * 5000 + b"\n")


def test_option_reader_custom_limit():
    reader = p.OptionReader(limit=8)
    with pytest.raises(ProtocolError):
        reader.feed(b"12345678")
    assert p.OptionReader(limit=8).feed(b"123456\nrest") == (b"123456", b"rest")


# --------------------------------------------------------------------------- decode_option


def test_encode_decode_option_round_trip():
    option = p.Option(connect_timeout=3_000_000_000, handle_timeout=7, max_frame_size=4096)
    line = p.encode_option(option)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.decode_option(line) == option
    assert json.loads(line) == {"MagicNumber": 3927900, "CodecType": "application/msgpack",
                                "ConnectTimeout": 3_000_000_000, "HandleTimeout": 7, "MaxFrameSize": 4096}


def test_decode_option_fills_defaults_for_missing_fields():
    option = p.decode_option(option_line(MagicNumber=p.MAGIC_NUMBER))
    assert option == p.Option(p.MAGIC_NUMBER, p.CODEC_TYPE, 0, 0, None, 0)


@pytest.mark.parametrize("line", [b"", b"{", b"{not json}", b"\xff\xfe{}", b"{\xff}", b"MAGIC 3927900",
                                  b"[" * 100_000, b'{"MagicNumber": 3927900'])
def test_decode_option_rejects_bad_json(line):
    with pytest.raises(ProtocolError):
        p.decode_option(line)


@pytest.mark.parametrize("line", [b"[]", b"[3927900]", b"3927900", b'"3927900"', b"null", b"true"])
def test_decode_option_rejects_non_object(line):
    with pytest.raises(ProtocolError):
        p.decode_option(line)


@pytest.mark.parametrize("magic", [None, 0, 1, 3927901, -3927900, "3927900", "0x3bef5c", 3927900.0,
                                   True, [3927900], {"n": 3927900}])
def test_decode_option_rejects_wrong_magic(magic):
    fields = {} if magic is None else {"MagicNumber": magic}
    with pytest.raises(ProtocolError):
        p.decode_option(option_line(**fields))


@pytest.mark.parametrize("key", ["ConnectTimeout", "HandleTimeout", "MaxFrameSize"])
@pytest.mark.parametrize("value", [-1, -(2**70), 1.5, "10", None, True, [1]])
def test_decode_option_rejects_bad_durations(key, value):
    with pytest.raises(ProtocolError):
        p.decode_option(option_line(MagicNumber=p.MAGIC_NUMBER, **{key: value}))


@pytest.mark.parametrize("key", ["ConnectTimeout", "HandleTimeout", "MaxFrameSize"])
@pytest.mark.parametrize("text", ["9223372036854775808", str(2**1024), "1" + "0" * 400, "1.0", "1e+10", "1E3"])
def test_decode_option_rejects_durations_out_of_int64_or_written_as_floats(key, text):
    line = b'{"MagicNumber": 3927900, "%s": %s}' % (key.encode(), text.encode())
    with pytest.raises(ProtocolError, match=f"{key} must be an integer from 0 to {2**63 - 1}"):
        p.decode_option(line)


def test_decode_option_accepts_the_largest_int64():
    option = p.decode_option(option_line(MagicNumber=p.MAGIC_NUMBER, HandleTimeout=2**63 - 1))
    assert option.handle_timeout == 2**63 - 1


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"])
def test_decode_option_accepts_utf8_only(encoding):
    text = json.dumps({"MagicNumber": p.MAGIC_NUMBER})
    assert p.decode_option(text.encode("utf-8")).magic_number == p.MAGIC_NUMBER
    with pytest.raises(ProtocolError):
        p.decode_option(text.encode(encoding))


@pytest.mark.parametrize("codec", [1, None, ["application/msgpack"], {"a": 1}])
def test_decode_option_rejects_non_string_codec(codec):
    with pytest.raises(ProtocolError):
        p.decode_option(option_line(MagicNumber=p.MAGIC_NUMBER, CodecType=codec))


def test_decode_option_leaves_unknown_codec_to_the_caller():
    option = p.decode_option(option_line(MagicNumber=p.MAGIC_NUMBER, CodecType="application/gob"))
    assert option.codec_type == "application/gob"
    assert option.error is None


def test_decode_option_refusal():
    option = p.decode_option(b'{"Error": "server has too many connections"}\n')
    assert option.error == "server has too many connections"


def test_decode_option_refusal_message_is_capped():
    option = p.decode_option(option_line(Error="x" * 100_000))
    assert option.error is not None and len(option.error) <= p.MAX_OPTION_SIZE


def test_encode_option_refusal_round_trip():
    line = p.encode_option(p.Option(error="go away"))
    assert json.loads(line) == {"Error": "go away"}
    assert p.decode_option(line).error == "go away"


# --------------------------------------------------------------------------- FrameDecoder


FRAMES = [REQUEST, CANCEL, p.frame(b"\x01"), p.frame(b"z" * 300)]


def test_frame_prefix_is_big_endian_length():
    assert p.frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert p.frame(b"x" * 0x1234)[:4] == b"\x00\x00\x12\x34"


def test_frame_decoder_one_frame_whole():
    decoder = p.FrameDecoder()
    decoder.feed(REQUEST)
    assert decoder.next_frame() == body(REQUEST)
    assert decoder.next_frame() is None
    assert decoder.pending == 0


def test_frame_decoder_byte_by_byte():
    decoder = p.FrameDecoder()
    data = b"".join(FRAMES)
    out = feed_chunks(decoder, [data[i : i + 1] for i in range(len(data))])
    assert out == [body(f) for f in FRAMES]
    assert decoder.pending == 0


def test_frame_decoder_several_glued():
    decoder = p.FrameDecoder()
    decoder.feed(b"".join(FRAMES))
    assert drain(decoder) == [body(f) for f in FRAMES]


def test_frame_decoder_split_at_every_offset():
    data = b"".join(FRAMES)
    expected = [body(f) for f in FRAMES]
    for i in range(len(data) + 1):
        assert feed_chunks(p.FrameDecoder(), [data[:i], data[i:]]) == expected, i


def test_frame_decoder_split_in_three_at_every_offset_pair():
    data = REQUEST + CANCEL
    expected = [body(REQUEST), body(CANCEL)]
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            assert feed_chunks(p.FrameDecoder(), [data[:i], data[i:j], data[j:]]) == expected


def test_frame_decoder_hands_out_one_frame_at_a_time():
    decoder = p.FrameDecoder()
    decoder.feed(REQUEST + CANCEL + REQUEST[:5])
    assert decoder.next_frame() == body(REQUEST)
    # What was not taken yet stays buffered: a caller applying backpressure stops here.
    assert decoder.pending == len(CANCEL) + 5
    assert decoder.next_frame() == body(CANCEL)
    assert decoder.pending == 5
    assert decoder.next_frame() is None
    decoder.feed(REQUEST[5:])
    assert decoder.next_frame() == body(REQUEST)
    assert decoder.pending == 0


def test_frame_decoder_pending_counts_partial_frame():
    decoder = p.FrameDecoder()
    assert decoder.pending == 0
    decoder.feed(REQUEST[:3])
    assert decoder.next_frame() is None
    assert decoder.pending == 3
    decoder.feed(REQUEST[3:-1])
    assert decoder.next_frame() is None
    assert decoder.pending == len(REQUEST) - 1


def test_frame_decoder_payload_is_not_changed_by_later_feeds():
    decoder = p.FrameDecoder()
    decoder.feed(REQUEST)
    first = decoder.next_frame()
    decoder.feed(CANCEL)
    assert decoder.next_frame() == body(CANCEL)
    assert first == body(REQUEST)
    assert isinstance(first, bytes)


def test_frame_decoder_hands_out_a_large_frame_without_copying_it():
    big = os.urandom(3 * 1024 * 1024)
    decoder = p.FrameDecoder()
    decoder.feed(p.frame(big) + CANCEL[:5])  # the next frame's first bytes came with it
    payload = decoder.next_frame()
    assert isinstance(payload, memoryview) and payload.nbytes == len(big)
    # The decoder moved on to a buffer of its own: what arrives later, by feed or
    # straight into get_buffer(), never lands in the payload handed out.
    decoder.feed(CANCEL[5:])
    assert decoder.next_frame() == body(CANCEL)
    for _ in range(3):
        room = decoder.get_buffer(-1)
        room[: len(REQUEST)] = REQUEST
        decoder.buffer_updated(len(REQUEST))
        assert decoder.next_frame() == body(REQUEST)
    assert payload == big
    assert decoder.pending == 0


def test_frame_decoder_large_frames_back_to_back_arrive_whole():
    frames = [os.urandom(2 * 1024 * 1024 + i) for i in range(3)]
    decoder = p.FrameDecoder()
    got = feed_chunks(decoder, [b"".join(p.frame(f) for f in frames)[i : i + 700_000]
                                for i in range(0, 3 * (2 * 1024 * 1024 + 8), 700_000)])
    assert [bytes(g) for g in got] == frames


def test_frame_decoder_rejects_length_zero():
    decoder = p.FrameDecoder()
    decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_frame_decoder_rejects_length_zero_after_a_good_frame():
    decoder = p.FrameDecoder()
    decoder.feed(REQUEST + b"\x00\x00\x00\x00" + REQUEST)
    assert decoder.next_frame() == body(REQUEST)
    with pytest.raises(ProtocolError):
        decoder.next_frame()


def test_frame_decoder_rejects_4gib_length_before_any_body():
    decoder = p.FrameDecoder()
    decoder.feed(b"\xff\xff\xff")
    assert decoder.next_frame() is None
    decoder.feed(b"\xff")
    assert decoder.pending == 4
    with pytest.raises(ProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize("limit", [1, 16, 1024, p.DEFAULT_MAX_FRAME_SIZE])
def test_frame_decoder_rejects_max_plus_one_from_the_length_alone(limit):
    decoder = p.FrameDecoder(limit)
    decoder.feed((limit + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError):
        decoder.next_frame()


@pytest.mark.parametrize("limit", [1, 16, 1024])
def test_frame_decoder_accepts_exactly_max(limit):
    decoder = p.FrameDecoder(limit)
    decoder.feed(p.frame(b"m" * limit))
    assert decoder.next_frame() == b"m" * limit


def test_frame_decoder_default_limit_is_16_mib():
    assert p.DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024
    decoder = p.FrameDecoder()
    assert decoder.max_frame_size == 16 * 1024 * 1024
    # the length alone decides, so neither case needs 16 MiB of body
    decoder.feed((16 * 1024 * 1024).to_bytes(4, "big"))
    assert decoder.next_frame() is None  # accepted: waiting for its body
    over = p.FrameDecoder()
    over.feed((16 * 1024 * 1024 + 1).to_bytes(4, "big"))
    with pytest.raises(ProtocolError, match="16777217"):
        over.next_frame()


# --------------------------------------------------------------------------- decode_request: valid


def test_request_round_trip():
    assert p.decode_request(body(REQUEST)) == p.Request(5, "Arith.add", 1.5, [1, 2], {"c": 3})


def test_request_round_trip_without_timeout():
    frame = p.encode_request(1, "S.m", [], {}, None)
    assert p.decode_request(body(frame)) == p.Request(1, "S.m", None, [], {})


def test_request_accepts_integer_and_zero_timeout():
    assert p.decode_request(body(p.encode_request(1, "S.m", [], {}, 0))).timeout == 0
    assert p.decode_request(body(p.encode_request(1, "S.m", [], {}, 30))).timeout == 30


def test_request_accepts_largest_seq():
    seq = 2**63 - 1
    assert p.decode_request(body(p.encode_request(seq, "S.m", [], {}, None))).seq == seq


def test_request_accepts_method_name_of_exactly_max_length():
    name = "S." + "m" * (p.MAX_METHOD_LENGTH - 2)
    assert p.decode_request(body(p.encode_request(1, name, [], {}, None))).service_method == name


def test_cancel_round_trip():
    assert p.decode_request(body(CANCEL)) == p.Cancel(6)


def test_request_payload_types_survive():
    args = [None, True, -1, 2**63, 1.25, "ü", b"\x00\xff", [1, [2]], {"k": {"n": None}}]
    decoded = p.decode_request(body(p.encode_request(9, "S.m", args, {"b": b"x"}, None)))
    assert decoded.args == args
    assert decoded.kwargs == {"b": b"x"}


# --------------------------------------------------------------------------- decode_request: close


def protocol_error(payload: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        p.decode_request(payload)
    return info.value


@pytest.mark.parametrize("message", [{"seq": 1}, 1, "Arith.add", None, b"\x00", 1.5, True])
def test_request_non_array_is_protocol_error(message):
    protocol_error(pack(message))


def test_request_empty_array_is_protocol_error():
    protocol_error(pack([]))


@pytest.mark.parametrize("kind", [1, 3, -1, 255, "0", b"\x00", None, False, True, 0.0, [0]])
def test_request_wrong_type_tag_is_protocol_error(kind):
    protocol_error(pack([kind, 1, "S.m", None, [], {}]))


@pytest.mark.parametrize("message", [[0], [0, 1], [0, 1, "S.m"], [0, 1, "S.m", None, []],
                                     [0, 1, "S.m", None, [], {}, {}, None], [2], [2, 1, 1]])
def test_request_wrong_length_is_protocol_error(message):
    protocol_error(pack(message))


BAD_SEQS = [0, -1, -(2**63), "1", b"\x01", True, False, 1.0, 2**63, 2**64 - 1, None, [1], {"s": 1}]


@pytest.mark.parametrize("seq", BAD_SEQS, ids=repr)
def test_request_bad_seq_is_protocol_error(seq):
    protocol_error(pack([0, seq, "S.m", None, [], {}]))


@pytest.mark.parametrize("seq", BAD_SEQS, ids=repr)
def test_cancel_bad_seq_is_protocol_error(seq):
    protocol_error(pack([2, seq]))


def test_garbage_is_protocol_error():
    for payload in [b"\xc1", b"\xc1\xc1\xc1", b"\xff" * 10, b"GET / HTTP/1.1\r\n\r\n"]:
        protocol_error(payload)


def test_truncated_header_is_protocol_error():
    protocol_error(body(REQUEST)[:2])  # array header and type tag only: no seq


def test_huge_array_header_in_tiny_buffer_is_protocol_error():
    protocol_error(b"\xdd\xff\xff\xff\xff")


def test_huge_map_header_in_tiny_buffer_is_protocol_error():
    protocol_error(b"\xdf\xff\xff\xff\xff\x00\x00")


def test_deep_nesting_without_a_seq_is_protocol_error():
    protocol_error(b"\x91" * 100_000 + b"\xc0")


def test_deep_nesting_in_the_seq_position_is_protocol_error():
    protocol_error(b"\x96\x00" + b"\x91" * 100_000 + b"\x01")


# --------------------------------------------------------------------------- decode_request: reply


def bad_request(payload: bytes, seq: int = 5) -> p.BadRequest:
    with pytest.raises(p.BadRequest) as info:
        p.decode_request(payload)
    bad = info.value
    assert bad.seq == seq
    assert isinstance(bad.type, str) and isinstance(bad.message, str)
    assert bad.code in set(p.ErrorCode)
    return bad


def request_body(method: object = "S.m", timeout: object = None, args: object = (), kwargs: object = None,
                 seq: int = 5) -> bytes:
    return pack([0, seq, method, timeout, list(args) if isinstance(args, tuple) else args,
                 {} if kwargs is None else kwargs])


@pytest.mark.parametrize("method", [1, None, b"S.m", ["S", "m"], {"S": "m"}, 1.5, True])
def test_request_non_str_method_is_bad_request(method):
    bad = bad_request(request_body(method=method))
    assert bad.code == p.ErrorCode.INVALID_ARGUMENT
    assert bad.type == "InvalidArguments"


def test_request_10kb_method_name_is_bad_request():
    bad = bad_request(request_body(method="S." + "m" * 10_000))
    assert bad.code == p.ErrorCode.NOT_FOUND
    assert bad.type == "MethodNotFound"
    assert len(bad.message) < 200  # the name is not echoed back


def test_request_method_one_over_max_length_is_bad_request():
    bad_request(request_body(method="S." + "m" * (p.MAX_METHOD_LENGTH - 1)))


@pytest.mark.parametrize("timeout", [-1, -0.001, float("nan"), float("inf"), float("-inf"), "1", b"1",
                                     True, [1], {"t": 1}], ids=repr)
def test_request_bad_timeout_is_bad_request(timeout):
    bad = bad_request(request_body(timeout=timeout))
    assert bad.code == p.ErrorCode.INVALID_ARGUMENT
    assert bad.type == "InvalidArguments"


@pytest.mark.parametrize("args", [{"a": 1}, "ab", b"ab", None, 1], ids=repr)
def test_request_args_not_array_is_bad_request(args):
    assert bad_request(request_body(args=args)).type == "InvalidArguments"


@pytest.mark.parametrize("kwargs", [[1, 2], "k", None, 1], ids=repr)
def test_request_kwargs_not_map_is_bad_request(kwargs):
    payload = pack([0, 5, "S.m", None, [], kwargs])
    assert bad_request(payload).type == "InvalidArguments"


@pytest.mark.parametrize("ext", [msgpack.ExtType(5, b"x"), msgpack.ExtType(0, b""),
                                 msgpack.ExtType(127, b"\x00" * 100)], ids=repr)
def test_request_ext_type_is_bad_request(ext):
    bad = bad_request(request_body(args=[ext]))
    assert bad.type == "InvalidArguments"


def test_request_negative_ext_type_is_bad_request():
    # fixext1 with type -5 (reserved range): written by hand, msgpack.ExtType refuses it
    bad_request(b"\x96\x00\x05\xa3S.m\xc0\x91\xd4\xfb\x00\x80")


def test_request_ext_type_in_kwargs_is_bad_request():
    bad_request(request_body(kwargs={"a": [msgpack.ExtType(1, b"x")]}))


def test_request_deep_nesting_in_args_is_bad_request_with_the_seq():
    payload = b"\x96\x00\x05\xa3S.m\xc0" + b"\x91" * 100_000 + b"\xc0" + b"\x80"
    bad = bad_request(payload)  # StackError, never RecursionError
    assert bad.type == "InvalidArguments"


def test_request_deep_nesting_in_kwargs_is_bad_request_with_the_seq():
    payload = b"\x96\x00\x05\xa3S.m\xc0\x90" + b"\x81\xa1k" * 50_000 + b"\xc0"
    bad_request(payload)


def test_request_huge_array_header_in_args_is_bad_request():
    bad_request(b"\x96\x00\x05\xa3S.m\xc0\xdd\xff\xff\xff\xff\x80")


def test_request_huge_map_header_in_kwargs_is_bad_request():
    bad_request(b"\x96\x00\x05\xa3S.m\xc0\x90\xdf\xff\xff\xff\xff")


def test_request_huge_str_header_in_args_is_bad_request():
    bad_request(b"\x96\x00\x05\xa3S.m\xc0\x91\xdb\xff\xff\xff\xff\x80")


def test_request_huge_bin_header_in_args_is_bad_request():
    bad_request(b"\x96\x00\x05\xa3S.m\xc0\x91\xc6\xff\xff\xff\xff\x80")


def test_request_truncated_after_the_seq_is_bad_request():
    bad_request(request_body(args=[1, 2, 3])[:-3])


def test_request_trailing_bytes_is_bad_request():
    bad_request(request_body() + b"\x00")


def test_request_two_messages_in_one_frame_is_bad_request():
    bad_request(request_body() + request_body())


def test_request_invalid_utf8_method_is_bad_request():
    bad_request(b"\x96\x00\x05\xa3S.\xff\xc0\x90\x80")


def test_request_invalid_utf8_in_args_is_bad_request():
    bad_request(b"\x96\x00\x05\xa3S.m\xc0\x91\xa2\xc3\x28\x80")


@pytest.mark.parametrize("kwargs", [{1: 2}, {None: 1}, {1.5: 1}, {(1, 2): 1}], ids=repr)
def test_request_non_str_kwargs_keys_are_bad_request(kwargs):
    bad_request(request_body(kwargs=kwargs))


def test_request_list_as_map_key_in_args_is_bad_request():
    # {[1]: 2} cannot be built in Python; write the bytes: fixmap(1){ fixarray(1)[1]: 2 }
    bad_request(b"\x96\x00\x05\xa3S.m\xc0\x91\x81\x91\x01\x02\x80")


def test_request_byte_0xc1_after_the_seq_is_bad_request():
    bad_request(b"\x96\x00\x05\xc1\xc0\x90\x80")


# --------------------------------------------------------------------------- decode_response


def test_response_round_trip():
    assert p.decode_response(body(RESPONSE)) == p.Response(7, None, {"sum": [1, 2]})


def test_response_nil_result_round_trip():
    assert p.decode_response(body(p.encode_response(1, None))) == p.Response(1, None, None)


def test_error_response_round_trip():
    frame = p.encode_error(4, p.ErrorCode.NOT_FOUND, "MethodNotFound", "can't find method")
    response = p.decode_response(body(frame))
    assert response == p.Response(4, (2, "MethodNotFound", "can't find method"), None)


def test_error_response_ignores_a_result_sent_with_it():
    assert p.decode_response(pack([1, 3, [1, "E", "m"], 99])) == p.Response(3, (1, "E", "m"), None)


def response_protocol_error(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        p.decode_response(payload)


@pytest.mark.parametrize("payload", [b"\xc1", b"\xff\xff", b"", b"\x94\x01", b"\x94\x01\xc1",
                                     b"\xdd\xff\xff\xff\xff", b"\x91" * 100_000 + b"\xc0",
                                     b"\x93\x01\x01\xc0" + b"\x91" * 100_000, b"\x94\x00\x01\xc0\xc1"],
                         ids=range(9))
def test_response_garbage_without_a_seq_is_protocol_error(payload):
    response_protocol_error(payload)


def bad_response(payload: bytes, seq: int = 1) -> None:
    with pytest.raises(p.BadResponse) as info:
        p.decode_response(payload)
    assert info.value.seq == seq


UNDECODABLE_RESULTS = {
    "truncated": body(p.encode_response(1, [1, 2, 3]))[:-1],
    "trailing_byte": body(p.encode_response(1, 3)) + b"\x00",
    "deep_nesting": b"\x94\x01\x01\xc0" + b"\x91" * 100_000 + b"\xc0",
    "huge_array_header": b"\x94\x01\x01\xc0\xdd\xff\xff\xff\xff",
    "ext_type": pack([1, 1, None, msgpack.ExtType(3, b"x")]),
    "int_map_key": pack([1, 1, None, {1: "one"}]),
    "invalid_utf8": b"\x94\x01\x01\xc0\xa2\xc3\x28",
}


@pytest.mark.parametrize("name", list(UNDECODABLE_RESULTS))
def test_response_undecodable_after_the_seq_is_bad_response(name):
    # Framed and numbered, but the value does not decode: that one call fails,
    # the connection does not have to.
    bad_response(UNDECODABLE_RESULTS[name])


def test_bad_response_keeps_a_large_seq():
    bad_response(pack([1, 2**63 - 1, None, {1: 2}]), seq=2**63 - 1)


def test_response_undecodable_with_an_invalid_seq_is_protocol_error():
    for seq in (0, -1, "1", 2**64 - 1):
        response_protocol_error(pack([1, seq, None, {1: 2}]))


@pytest.mark.parametrize("message", [{"seq": 1}, 1, None, [], [1], [1, 1, None], [1, 1, None, 1, {}, 1],
                                     [0, 1, None, 1], [2, 1, None, 1], [True, 1, None, 1], ["1", 1, None, 1],
                                     [1.0, 1, None, 1]], ids=repr)
def test_response_wrong_shape_is_protocol_error(message):
    response_protocol_error(pack(message))


@pytest.mark.parametrize("seq", BAD_SEQS, ids=repr)
def test_response_bad_seq_is_protocol_error(seq):
    response_protocol_error(pack([1, seq, None, 1]))


@pytest.mark.parametrize("error", ["boom", 1, True, b"x", {"code": 1}, [], [1, "T"], [1, "T", "m", "x"],
                                   ["1", "T", "m"], [True, "T", "m"], [1.0, "T", "m"], [1, 2, "m"],
                                   [1, "T", 3], [1, b"T", "m"], [1, "T", None]], ids=repr)
def test_response_bad_error_triple_is_protocol_error(error):
    response_protocol_error(pack([1, 1, error, None]))


# --------------------------------------------------------------------------- properties

_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=8,
)
_message_like = st.lists(_msgpack_values, max_size=7).map(lambda items: pack(items)) | st.tuples(
    st.sampled_from([0, 2]), st.integers(-2, 2**64 - 1), _msgpack_values, _msgpack_values, _msgpack_values,
    _msgpack_values,
).map(lambda t: pack(list(t[: 2 if t[0] == 2 else 6])))


@st.composite
def _mangled(draw: st.DrawFn) -> bytes:
    """A message-like payload, sometimes truncated, extended or with a byte changed."""
    data = bytearray(draw(_message_like))
    action = draw(st.sampled_from(["keep", "truncate", "append", "flip"]))
    if action == "truncate" and data:
        del data[draw(st.integers(0, len(data) - 1)) :]
    elif action == "append":
        data += draw(st.binary(min_size=1, max_size=8))
    elif action == "flip" and data:
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def _decode_stream(data: bytes, cuts: list[int]) -> None:
    decoder = p.FrameDecoder(max_frame_size=4096)
    try:
        for chunk in _split(data, cuts):
            decoder.feed(chunk)
            while (payload := decoder.next_frame()) is not None:
                assert 1 <= len(payload) <= 4096
                try:
                    message = p.decode_request(payload)
                except p.BadRequest as bad:
                    assert 1 <= bad.seq <= 2**63 - 1
                    continue
                assert type(message) in (p.Request, p.Cancel)
    except ProtocolError:
        pass


@_settings
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=4))
def test_property_any_bytes_give_messages_or_protocol_errors(data, cuts):
    _decode_stream(data, cuts)


@_settings
@given(st.lists(st.binary(min_size=1, max_size=64), max_size=4), st.lists(st.integers(0, 400), max_size=4))
def test_property_any_framed_payloads_give_messages_or_errors(payloads, cuts):
    _decode_stream(b"".join(p.frame(x) for x in payloads), cuts)


@_settings
@given(st.lists(_mangled(), min_size=1, max_size=4), st.lists(st.integers(0, 400), max_size=4))
def test_property_message_like_frames_give_messages_or_errors(payloads, cuts):
    _decode_stream(b"".join(p.frame(x) for x in payloads if x), cuts)


@_settings
@given(_mangled() | st.binary(min_size=1, max_size=64))
def test_property_any_response_payload_gives_response_or_protocol_error(payload):
    try:
        response = p.decode_response(payload)
    except ProtocolError:
        return
    except p.BadResponse as bad:
        assert 1 <= bad.seq <= 2**63 - 1
        return
    assert type(response) is p.Response and 1 <= response.seq <= 2**63 - 1


@_settings
@given(st.binary(max_size=200) | st.dictionaries(
    st.sampled_from(["MagicNumber", "CodecType", "ConnectTimeout", "HandleTimeout", "MaxFrameSize", "Error"]),
    _msgpack_values.filter(lambda v: not isinstance(v, bytes | float) and "\n" not in str(v)),
).map(lambda d: json.dumps(d, default=repr).encode()), st.lists(st.integers(0, 300), max_size=3))
def test_property_any_option_bytes_give_option_or_protocol_error(data, cuts):
    reader = p.OptionReader()
    try:
        for chunk in _split(data + b"\n", cuts):
            line, _rest = reader.feed(chunk)
            if line is not None:
                option = p.decode_option(line)
                assert type(option) is p.Option
                assert option.error is not None or option.magic_number == p.MAGIC_NUMBER
                break
    except ProtocolError:
        pass


# --------------------------------------------------------------------------- receiving into the buffer


def _receive(decoder: p.FrameDecoder, data: bytes, chunk: int, sizes: list[int] | None = None) -> list[bytes]:
    """Deliver ``data`` as a transport using BufferedProtocol would, ``chunk`` bytes per read;
    ``sizes`` gets the decoder's buffer size at each read."""
    frames = []
    pos = 0
    while pos < len(data):
        view = decoder.get_buffer(-1)  # like asyncio, keep the view alive across buffer_updated
        if sizes is not None:
            sizes.append(len(decoder._buffer))
        n = min(chunk, len(view), len(data) - pos)
        view[:n] = data[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
        while (payload := decoder.next_frame()) is not None:
            frames.append(payload)
    return frames


@pytest.mark.parametrize("chunk", [1, 3, 4096, 1 << 20])
def test_buffered_receive_small_and_large_frames(chunk):
    payloads = [b"a", b"b" * 100, bytes(range(256)) * 1024, b"c" * 70_000, b"d"]
    stream = b"".join(p.frame(x) for x in payloads)
    decoder = p.FrameDecoder()
    assert _receive(decoder, stream, chunk) == payloads
    assert decoder.pending == 0


def test_buffered_receive_grows_for_a_large_frame_then_shrinks_back():
    decoder = p.FrameDecoder()
    big = b"x" * (3 * 1024 * 1024)
    grown: list[int] = []
    assert _receive(decoder, p.frame(big), 65536, grown) == [big]
    assert max(grown) >= len(big)
    # the large frame took its buffer with it: the decoder's own is small again
    assert len(decoder._buffer) <= 1024 * 1024
    assert _receive(decoder, p.frame(b"small"), 65536) == [b"small"]
    assert len(decoder._buffer) <= 1024 * 1024


def _one_at_a_time(decoder: p.FrameDecoder, payloads: list[bytes]) -> list[int]:
    """Receive each payload on its own (the buffer empty between them, as on a connection
    with one call at a time); the decoder's buffer size after each."""
    sizes = []
    for payload in payloads:
        assert _receive(decoder, p.frame(payload), 16384) == [payload]
        sizes.append(len(decoder._buffer))
    return sizes


@pytest.mark.parametrize("size", [70_000, 200_000, 1_000_000])
def test_a_grown_buffer_is_given_back_once_large_frames_stop(size):
    # A connection that got a large frame and then only small ones must not keep the
    # memory until it closes: the RELEASE_AFTER-th small frame in a row gives it back,
    # as it is taken (no read may follow it).
    decoder = p.FrameDecoder()
    sizes = _one_at_a_time(decoder, [b"x" * size] + [b"small"] * RELEASE_AFTER)
    assert sizes[0] > 64 * 1024 and sizes[1:-1] == [sizes[0]] * (RELEASE_AFTER - 1)
    assert sizes[-1] <= 64 * 1024 and decoder.pending == 0


def test_a_grown_buffer_stays_while_large_frames_keep_coming():
    # One call at a time, large and small frames mixed: the buffer grows once and stays
    # (growing it again for each large frame would cost its fresh pages each time).
    decoder = p.FrameDecoder()
    sizes = _one_at_a_time(decoder, [b"x" * 100_000, *[b"small"] * (RELEASE_AFTER - 1)] * 4)
    assert len(set(sizes)) == 1 and sizes[0] > 64 * 1024


def test_a_grown_buffer_stays_while_frames_follow_in_it():
    # Large frames back to back, in reads that straddle them, then small ones in the
    # same reads: it never starts over while bytes are buffered.
    decoder = p.FrameDecoder()
    payloads = [bytes([n]) * 100_000 for n in range(6)] + [b"small"] * (RELEASE_AFTER + 4)
    grown: list[int] = []
    assert _receive(decoder, b"".join(p.frame(x) for x in payloads), 50_000, grown) == payloads
    assert grown == sorted(grown)
    assert len(decoder._buffer) <= 64 * 1024  # empty after many small frames: given back


def test_a_frame_handed_out_whole_breaks_the_run_of_small_ones():
    # The run that gives a grown buffer back counts frames in a row that fit in 64 KiB;
    # a frame over 1 MiB (handed out as the buffer itself) is one that does not.
    decoder = p.FrameDecoder()
    _one_at_a_time(decoder, [b"x" * 100_000, *[b"small"] * (RELEASE_AFTER - 1)])
    after = [b"y" * (2 * 1024 * 1024), b"a" * 40_000, b"b" * 40_000]
    decoder.feed(b"".join(p.frame(x) for x in after))
    taken = [bytes(decoder.next_frame() or b"") for _ in after]
    assert taken == after and decoder.pending == 0
    assert len(decoder._buffer) > 64 * 1024  # two frames into a new run: kept


def _room_after(decoder: p.FrameDecoder, data: bytes) -> int:
    """Receive ``data`` as asyncio would, then return the room the decoder offers next."""
    decoder.get_buffer(-1)[: len(data)] = data
    decoder.buffer_updated(len(data))
    return len(decoder.get_buffer(-1))


@pytest.mark.parametrize("announced", [1024 * 1024 + 1, 2**32 - 1])
def test_buffered_receive_rejects_bad_length_before_the_body(announced):
    limit = 1024 * 1024  # far more than the decoder's usual room, so room for it would show
    # what four bytes of any frame get: the room the length of a 2-byte frame gets
    usual = _room_after(p.FrameDecoder(limit), (2).to_bytes(4, "big"))
    assert usual < limit
    decoder = p.FrameDecoder(limit)
    # asyncio may ask for the next buffer before the frame is looked at: no room yet either
    assert _room_after(decoder, announced.to_bytes(4, "big")) <= usual
    with pytest.raises(ProtocolError, match=str(announced)):
        decoder.next_frame()
    assert len(decoder.get_buffer(-1)) <= usual  # no room was made for the bogus body


def test_feed_and_buffered_receive_mix():
    decoder = p.FrameDecoder()
    decoder.feed(p.frame(b"one")[:3])
    assert _receive(decoder, p.frame(b"one")[3:] + p.frame(b"two"), 2) == [b"one", b"two"]
    decoder.feed(p.frame(b"three"))
    assert decoder.take_all() == p.frame(b"three") and decoder.pending == 0


def test_announcing_a_large_frame_allocates_nothing_until_its_bytes_arrive():
    decoder = p.FrameDecoder(max_frame_size=16 * 1024 * 1024)
    view = decoder.get_buffer(-1)
    view[:5] = (16 * 1024 * 1024 - 4).to_bytes(4, "big") + b"x"  # 5 bytes claim 16 MiB
    decoder.buffer_updated(5)
    assert decoder.next_frame() is None
    assert len(decoder.get_buffer(-1)) < 64 * 1024  # room for what came, not for what was announced


def test_buffer_never_grows_past_one_whole_frame():
    limit = 1024 * 1024
    decoder = p.FrameDecoder(max_frame_size=limit)
    payloads = [b"a" * (2**k + 1) for k in range(10, 19)] + [b"b" * limit]
    stream = b"".join(p.frame(x) for x in payloads)
    peak = 0
    pos = 0
    while pos < len(stream):
        view = decoder.get_buffer(-1)
        n = min(len(view), len(stream) - pos)
        view[:n] = stream[pos : pos + n]
        decoder.buffer_updated(n)
        pos += n
        peak = max(peak, len(decoder._buffer))
        while decoder.next_frame() is not None:
            pass
    assert peak <= 4 + limit + 16 * 1024
