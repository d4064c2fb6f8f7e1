"""The client's pending-call table and the call deadline, without sockets or a loop."""

from __future__ import annotations

import pytest

import geerpc
from geerpc import protocol as p
from geerpc.deadline import Deadline
from geerpc.pending import PendingCalls


def payload(frame: bytes) -> bytes:
    return frame[4:]


def test_add_numbers_calls_from_one_and_builds_their_frames():
    calls: PendingCalls[str] = PendingCalls()
    seq1, frame1 = calls.add("Arith.add", [1, 2], {}, None, 0.0, "first")
    seq2, frame2 = calls.add("Arith.add", [3], {"b": 4}, None, 0.0, "second")
    assert (seq1, seq2) == (1, 2) and len(calls) == 2
    assert p.decode_request(payload(frame1)) == p.Request(1, "Arith.add", None, [1, 2], {})
    assert p.decode_request(payload(frame2)) == p.Request(2, "Arith.add", None, [3], {"b": 4})


def test_the_frame_carries_the_time_left_at_now():
    calls: PendingCalls[str] = PendingCalls()
    deadline = Deadline.after(2.0, now=100.0)
    _, frame = calls.add("Arith.add", [], {}, deadline, 101.5, "w")
    assert p.decode_request(payload(frame)).timeout == pytest.approx(0.5)


def test_a_deadline_already_passed_is_a_call_timeout_and_nothing_is_pending():
    calls: PendingCalls[str] = PendingCalls()
    deadline = Deadline.after(1.0, now=0.0)
    with pytest.raises(geerpc.CallTimeout, match=r"^Arith\.add timed out after 1 s$"):
        calls.add("Arith.add", [], {}, deadline, 1.0, "w")
    assert len(calls) == 0


def test_unencodable_arguments_and_oversized_frames_are_refused_before_registering():
    calls: PendingCalls[str] = PendingCalls(max_frame_size=100)
    with pytest.raises(geerpc.EncodeError, match="cannot be encoded"):  # a TypeError too
        calls.add("Arith.add", [object()], {}, None, 0.0, "w")
    with pytest.raises(geerpc.RequestTooLarge, match="100-byte frame limit"):  # a ValueError too
        calls.add("Arith.add", [b"x" * 200], {}, None, 0.0, "w")
    with pytest.raises(TypeError, match=r"^arguments of 'Arith.add' cannot be encoded: map keys must be str "
                                        r"or bytes \(got int\) in argument 2 at \[1\]$"):
        calls.add("Arith.add", [1, [{}, {1: 2}]], {}, None, 0.0, "w")
    with pytest.raises(TypeError, match=r"\(got tuple\) in the keyword arguments$"):
        calls.add("Arith.add", [], {(1,): 2}, None, 0.0, "w")
    assert issubclass(geerpc.EncodeError, TypeError) and issubclass(geerpc.RequestTooLarge, ValueError)
    assert len(calls) == 0
    assert calls.add("Arith.add", [], {}, None, 0.0, "w")[0] == 1  # refused calls took no seq


def test_resolve_matches_results_and_errors_by_seq():
    calls: PendingCalls[str] = PendingCalls()
    calls.add("Arith.add", [1, 2], {}, None, 0.0, "a")
    calls.add("Arith.nope", [], {}, None, 0.0, "b")
    error = calls.resolve(payload(p.encode_error(2, p.ErrorCode.NOT_FOUND, "MethodNotFound", "no nope")))
    assert error is not None and error[0] == "b" and isinstance(error[2], geerpc.MethodNotFound)
    result = calls.resolve(payload(p.encode_response(1, 3)))
    assert result == ("a", 3, None)
    assert len(calls) == 0


def test_a_reply_nobody_waits_for_is_dropped():
    calls: PendingCalls[str] = PendingCalls()
    assert calls.resolve(payload(p.encode_response(7, "late"))) is None
    seq, _ = calls.add("Arith.add", [], {}, Deadline.after(1, now=0.0), 0.0, "w")
    assert calls.expire(seq) is not None
    assert calls.resolve(payload(p.encode_response(seq, "late"))) is None


def test_expire_gives_the_waiter_one_timeout_message_and_a_cancel_frame():
    calls: PendingCalls[str] = PendingCalls()
    seq, _ = calls.add("Arith.sleep", [1], {}, Deadline.after(0.25, now=0.0), 0.0, "w")
    expired = calls.expire(seq)
    assert expired is not None
    waiter, error, cancel = expired
    assert waiter == "w" and str(error) == "Arith.sleep timed out after 0.25 s"
    assert p.decode_request(payload(cancel)) == p.Cancel(seq)
    assert calls.expire(seq) is None and len(calls) == 0


def test_a_server_timeout_reads_as_the_clients_own_when_the_call_had_a_deadline():
    calls: PendingCalls[str] = PendingCalls()
    seq, _ = calls.add("Arith.sleep", [1], {}, Deadline.after(0.25, now=0.0), 0.0, "w")
    frame = p.encode_error(seq, p.ErrorCode.TIMEOUT, "Timeout", "Arith.sleep timed out: did not finish within 0.25 s")
    outcome = calls.resolve(payload(frame))
    assert outcome is not None and str(outcome[2]) == "Arith.sleep timed out after 0.25 s"
    # without a deadline of its own, the server's handle timeout speaks for itself
    seq, _ = calls.add("Arith.sleep", [1], {}, None, 0.0, "w")
    outcome = calls.resolve(payload(p.encode_error(seq, p.ErrorCode.TIMEOUT, "Timeout", "server's words")))
    assert outcome is not None and isinstance(outcome[2], geerpc.CallTimeout)
    assert str(outcome[2]) == "server's words"


def test_cancel_forgets_the_call_and_gives_a_cancel_frame_once():
    calls: PendingCalls[str] = PendingCalls()
    seq, _ = calls.add("Arith.add", [], {}, None, 0.0, "w")
    assert p.decode_request(payload(calls.cancel(seq) or b"")) == p.Cancel(seq)
    assert calls.cancel(seq) is None


def test_fail_all_returns_every_waiter_and_empties_the_table():
    calls: PendingCalls[str] = PendingCalls()
    for name in "abc":
        calls.add("Arith.add", [], {}, None, 0.0, name)
    assert sorted(calls.fail_all()) == ["a", "b", "c"] and len(calls) == 0 and calls.fail_all() == []


def test_a_reply_that_is_not_a_response_is_a_protocol_error():
    calls: PendingCalls[str] = PendingCalls()
    with pytest.raises(geerpc.ProtocolError):
        calls.resolve(payload(p.encode_request(1, "Arith.add", [], {}, None)))


def test_deadline_arithmetic_and_validation():
    deadline = Deadline.after(3, now=10.0)
    assert deadline is not None and deadline.at == 13.0 and deadline.left(12.0) == 1.0
    assert not deadline.expired(12.999) and deadline.expired(13.0)
    assert Deadline.after(None, now=0.0) is None and Deadline.after(float("inf"), now=0.0) is None
    for bad in (0, -1, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            Deadline.after(bad, now=0.0)
    error = deadline.expired_error("Arith.add", "dialing tcp@127.0.0.1:1")
    assert isinstance(error, geerpc.CallTimeout) and str(error) == "Arith.add timed out after 3 s dialing tcp@127.0.0.1:1"
