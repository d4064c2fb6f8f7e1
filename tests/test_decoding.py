"""Decoding a peer's msgpack within limits (geerpc.decoding), sans I/O.

Hostile rows (in the style of HOSTILE.md):
- amplification: a 16 MiB frame of nested empty arrays (one byte each on the wire, a
  list each in memory) is refused after at most max_elements of them, with memory and
  time bounded by the limit, not by the frame;
- a map with a million keys is refused at its header, before any key is built;
- the nesting-limit error says what happened (msgpack's own message is empty).
"""

from __future__ import annotations

import time
import tracemalloc

import msgpack
import pytest

from geerpc import decoding
from geerpc import protocol as p
from geerpc.decoding import SMALL, SMALL_COST, VALUE_COST, TooManyElements, unpack

MiB = 1024 * 1024


def request(args_body: bytes) -> bytes:
    """A request payload ``[0, 1, "Nope.nope", nil, <args_body>, {}]``."""
    return b"\x96\x00\x01\xa9Nope.nope\xc0" + args_body + b"\x80"


def nested_empties(total: int, per_array: int = 65_535) -> bytes:
    """An array of arrays, each holding ``per_array`` empty arrays, about ``total`` bytes."""
    chunk = b"\xdc" + per_array.to_bytes(2, "big") + b"\x90" * per_array
    count = total // len(chunk)
    return b"\xdd" + count.to_bytes(4, "big") + chunk * count


def test_small_payloads_are_charged_their_worst_case() -> None:
    payload = msgpack.packb([0, 1, "Arith.add", None, [1, 2], {}])
    assert len(payload) <= SMALL
    value, cost = unpack(payload)
    assert value == [0, 1, "Arith.add", None, [1, 2], {}]
    assert cost == len(payload) + SMALL_COST * len(payload)


def test_large_payloads_are_counted_exactly() -> None:
    rows = [{"id": i, "name": "x" * 10} for i in range(1000)]
    payload = msgpack.packb([0, 1, "S.m", None, [rows], {}])
    assert len(payload) > SMALL
    value, cost = unpack(payload)
    assert value[4][0] == rows
    # outer array (1 + 6), args (1 + 1), rows (1 + 1000), each row (1 + 2), kwargs (1 + 0)
    elements = 7 + 2 + 1001 + 1000 * 3 + 1
    assert cost == len(payload) + VALUE_COST * elements


def test_a_large_bare_value_is_one_element() -> None:
    payload = msgpack.packb(b"x" * 10_000)
    assert unpack(payload) == (b"x" * 10_000, len(payload) + VALUE_COST)


def test_nested_empty_arrays_are_refused_within_the_limit_in_time_and_memory() -> None:
    payload = request(nested_empties(16 * MiB, per_array=5_000))
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(TooManyElements, match="more than 10,000 elements"):
            unpack(payload, max_elements=10_000)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 10,000 lists, and the Unpacker's copy of the payload: not a gigabyte of lists
    assert peak < len(payload) + 4 * MiB, peak
    assert elapsed < 5.0  # generous: unbounded, this took 14 s on the same kind of machine


def test_an_array_header_over_the_limit_is_refused_before_its_body() -> None:
    payload = request(b"\xdd" + (16 * MiB).to_bytes(4, "big") + b"\x90" * (16 * MiB))
    with pytest.raises(TooManyElements, match="a container of more than 262,144 elements"):
        unpack(payload)


def test_a_map_with_a_million_keys_is_refused_at_its_header() -> None:
    payload = msgpack.packb([0, 1, "S.m", None, [], {f"k{i}": 0 for i in range(1_000_000)}])
    started = time.perf_counter()
    with pytest.raises(TooManyElements):
        unpack(payload)
    assert time.perf_counter() - started < 1.0  # 2.4-3.2 s when the keys were built


@pytest.mark.parametrize("limit", [1_000, 262_144])
def test_the_limit_is_exact(limit: int) -> None:
    # one outer array plus n integers: n + 1 elements
    fits = msgpack.packb(list(range(limit - 1)))
    over = msgpack.packb(list(range(limit)))
    if len(fits) > SMALL:
        assert unpack(fits, max_elements=limit)[0] == list(range(limit - 1))
    with pytest.raises(TooManyElements):
        unpack(over, max_elements=limit)


def test_garbage_collection_is_back_on_after_a_refused_decode() -> None:
    import gc

    assert gc.isenabled()
    with pytest.raises(TooManyElements):
        unpack(request(nested_empties(MiB)), max_elements=1_000)
    assert gc.isenabled()


@pytest.mark.parametrize("tail,match", [(b"\xc0", "extra data"), (b"", "incomplete")])
def test_large_payloads_still_refuse_extra_and_missing_bytes(tail: bytes, match: str) -> None:
    whole = msgpack.packb([b"x" * 2000])
    payload = whole + tail if tail else whole[:-10]
    with pytest.raises(ValueError, match=match):
        unpack(payload)


def test_requests_over_the_limit_are_answered_not_dropped() -> None:
    payload = request(nested_empties(MiB, per_array=500))
    with pytest.raises(p.BadRequest) as caught:
        p.decode_request(payload, max_elements=10_000)
    assert caught.value.seq == 1
    assert caught.value.code == p.ErrorCode.INVALID_ARGUMENT
    assert "request too large: more than 10,000 elements in one message (max_elements)" in caught.value.message


def test_responses_over_the_limit_fail_their_call() -> None:
    payload = b"\x94\x01\x07\xc0" + nested_empties(MiB, per_array=500)
    with pytest.raises(p.BadResponse) as caught:
        p.decode_response(payload, max_elements=10_000)
    assert caught.value.seq == 7
    assert "more than 10,000 elements" in str(caught.value)


def test_the_nesting_limit_error_says_what_happened() -> None:
    payload = b"\x96\x00\x01\xa3S.m\xc0" + b"\x91" * 2000 + b"\xc0" + b"\x80"
    with pytest.raises(p.BadRequest) as caught:
        p.decode_request(payload)
    assert caught.value.message == "undecodable request: nested too deeply (msgpack's nesting limit)"


def test_the_small_path_in_protocol_matches_decoding() -> None:
    payload = msgpack.packb([0, 3, "S.m", 1.5, ["a"], {"k": b"v"}])
    message, cost = p.decode_request_sized(payload)
    assert message == p.Request(3, "S.m", 1.5, ["a"], {"k": b"v"})
    assert cost == decoding.unpack(payload)[1]

