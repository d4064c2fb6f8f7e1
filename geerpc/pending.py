"""The client's calls awaiting a reply, sans I/O.

``PendingCalls`` numbers calls, builds their request frames, matches reply frames to
them by seq, and turns error replies into exceptions. It holds one opaque *waiter*
per call (the asyncio client keeps a future there) and never touches a socket, a
loop or a clock: the caller passes ``now``. A reply for a seq no longer pending (its
call timed out or was cancelled) is read and dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from . import protocol as p
from .deadline import Deadline
from .errors import (
    CallTimeout,
    EncodeError,
    GeeRPCError,
    InvalidArguments,
    MethodNotFound,
    PermissionDenied,
    RemoteError,
    RequestTooLarge,
    ServiceNotFound,
    Unauthenticated,
    Unavailable,
    remote_builtin,
)
from .context import Reply
from .mapkeys import arguments_problem

__all__ = ["PendingCalls", "Outcome", "remote_error"]

W = TypeVar("W")

_ERROR_TYPES: dict[str, type[RemoteError]] = {
    "ServiceNotFound": ServiceNotFound,
    "MethodNotFound": MethodNotFound,
    "InvalidArguments": InvalidArguments,
    "Unavailable": Unavailable,
}
_OWN_CODES = (p.ErrorCode.NOT_FOUND, p.ErrorCode.INVALID_ARGUMENT, p.ErrorCode.UNAVAILABLE)
_BY_CODE: dict[int, type[RemoteError]] = {
    p.ErrorCode.UNAUTHENTICATED: Unauthenticated,
    p.ErrorCode.PERMISSION_DENIED: PermissionDenied,
}


def remote_error(code: int, type_name: str, message: str) -> GeeRPCError:
    """The exception for an error reply: geerpc's own kinds by code, RemoteError otherwise.

    A handler's exception (APPLICATION) named like a built-in in
    ``errors.BUILTIN_ERRORS`` is a RemoteError that is also that built-in, so
    ``except ValueError`` catches it; the name is all the wire carries, so a handler's
    own class called ``ValueError`` is caught so too. Any other name is a plain
    RemoteError: nothing the peer names is imported.
    """
    if code == p.ErrorCode.TIMEOUT:
        return CallTimeout(message)
    error: RemoteError
    if code == p.ErrorCode.APPLICATION:
        error = remote_builtin(type_name, message) or RemoteError(type_name, message)
    elif code in _BY_CODE:
        error = _BY_CODE[code](type_name, message)
    else:
        cls = _ERROR_TYPES.get(type_name, RemoteError) if code in _OWN_CODES else RemoteError
        error = cls(type_name, message)
    error.received = True
    return error


# A pending call is a plain tuple (service_method, deadline, waiter), and an outcome a
# plain tuple (waiter, result, error): named tuples cost a Python-level __new__ per
# call on the client's hottest path.
Outcome = tuple[W, Any, GeeRPCError | None]  # error is None for a result


class PendingCalls(Generic[W]):
    def __init__(self, max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size  # the largest request frame we send
        self._calls: dict[int, tuple[str, Deadline | None, W]] = {}
        self._seq = 0
        #: seqs of calls that want the reply's metadata (``Client.invoke``): their
        #: results come back as a ``Reply`` when the reply carries metadata
        self._want_metadata: set[int] = set()

    def __len__(self) -> int:
        return len(self._calls)

    def add(self, service_method: str, args: Sequence[Any], kwargs: dict[str, Any],
            deadline: Deadline | None, now: float, waiter: W,
            metadata: dict[str, str | bytes] | None = None, want_metadata: bool = False,
            window: tuple[int, int] | None = None) -> tuple[int, bytes]:
        """Register a call; return its seq and the request frame to send.

        With ``window`` (items, bytes) the call is a stream: the frame is a STREAM
        message granting that window, and the call's reply is the stream's end.

        The frame carries the deadline as the time left at ``now``, and ``metadata``
        (already checked, ``metadata.outgoing``) when there is any. With
        ``want_metadata`` a reply that carries metadata resolves to a ``Reply``.
        Raises CallTimeout when the deadline has passed already, EncodeError (a
        TypeError) when the arguments cannot be encoded or hold a map key that is not
        a str or bytes, RequestTooLarge (a ValueError) when the frame is over the limit.
        """
        timeout = None
        if deadline is not None:
            timeout = deadline.left(now)
            if timeout <= 0:
                raise deadline.expired_error(service_method)
        seq = self._seq + 1
        try:
            if window is None:
                frame = p.encode_request(seq, service_method, args, kwargs, timeout, metadata)
            else:
                frame = p.encode_stream_open(seq, service_method, args, kwargs, timeout, metadata, *window)
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"arguments of {service_method!r} cannot be encoded: {exc}") from exc
        if len(frame) - 4 > self.max_frame_size:
            raise RequestTooLarge(f"request of {len(frame) - 4} bytes exceeds the {self.max_frame_size}-byte frame limit")
        problem = arguments_problem(args, kwargs)  # what the server's decoder would refuse
        if problem is not None:
            raise EncodeError(f"arguments of {service_method!r} cannot be encoded: {problem}")
        self._seq = seq
        self._calls[seq] = (service_method, deadline, waiter)
        if want_metadata:
            self._want_metadata.add(seq)
        return seq, frame

    def resolve(self, payload: bytes | memoryview) -> Outcome[W] | None:
        """Match one reply frame's payload; None for a reply nobody waits for.

        Raises ProtocolError when the payload is not a response at all.
        """
        try:
            seq, error, result, metadata = p.decode_response(payload)
        except p.BadResponse as bad:  # framed and numbered, but its value won't decode
            seq, error, result, metadata = bad.seq, (p.ErrorCode.INTERNAL, "SerializationError", str(bad)), None, None
        call = self._calls.pop(seq, None)
        if call is None:
            return None
        if self._want_metadata:
            wanted = seq in self._want_metadata
            self._want_metadata.discard(seq)
            if wanted and metadata is not None and error is None:
                result = Reply(result, MappingProxyType(metadata))
        if error is None:
            return call[2], result, None
        service_method, deadline, waiter = call
        failure: GeeRPCError
        if error[0] == p.ErrorCode.TIMEOUT and deadline is not None:
            # The server gave up at the deadline we sent: say it as our own timer would.
            failure = deadline.expired_error(service_method)
        else:
            failure = remote_error(*error)
        if metadata is not None and isinstance(failure, RemoteError):
            failure.metadata = MappingProxyType(metadata)
        return waiter, None, failure

    def expire(self, seq: int) -> tuple[W, CallTimeout, bytes] | None:
        """The call's deadline passed: forget it; return its waiter, the error and a Cancel frame."""
        call = self._calls.pop(seq, None)
        if call is None:
            return None
        self._want_metadata.discard(seq)
        service_method, deadline, waiter = call
        assert deadline is not None, "only calls with a deadline expire"
        return waiter, deadline.expired_error(service_method), p.encode_cancel(seq)

    def cancel(self, seq: int) -> bytes | None:
        """The caller gave up: forget the call; return the Cancel frame to send, if it was pending."""
        if self._calls.pop(seq, None) is None:
            return None
        self._want_metadata.discard(seq)
        return p.encode_cancel(seq)

    def fail(self, seq: int) -> W | None:
        """Forget call ``seq`` (it failed on our side); return its waiter, if it was pending."""
        call = self._calls.pop(seq, None)
        self._want_metadata.discard(seq)
        return None if call is None else call[2]

    def fail_all(self) -> list[W]:
        """The connection is gone: forget every call and return their waiters."""
        calls, self._calls = self._calls, {}
        self._want_metadata.clear()
        return [call[2] for call in calls.values()]
