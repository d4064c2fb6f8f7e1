"""What a call carries besides its arguments: who asked, with what metadata, until when.

- ``CallContext``: the call a handler (``async def`` or plain ``def``) or a server
  interceptor is serving; ``current_call()`` returns it. It is held in a context
  variable, so it follows the handler into the tasks it starts and into the blocking
  clients it calls, and is gone when the handler ends.
- ``ClientCall``: one call as the client's interceptors see it, before it is sent.
- ``Reply``: a result with the reply's metadata (``Client.invoke`` returns one).
- ``outgoing_deadline``: how a call made inside a handler inherits the handler's
  time left ("deadlines follow the call").

Deadlines are points on the monotonic clock (``time.monotonic()``, which is what an
asyncio loop's ``loop.time()`` reads, and what uvloop's reads to the millisecond), so
one taken on the server's loop holds for a client on another loop or thread.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from .deadline import Deadline
from .errors import CallTimeout
from .metadata import EMPTY

__all__ = ["CallContext", "ClientCall", "Reply", "current_call", "outgoing_deadline", "CURRENT"]

#: The call being served in this context (set by the server around each handler).
CURRENT: Final[contextvars.ContextVar[CallContext]] = contextvars.ContextVar("geerpc.current_call")


class CallContext:
    """The call being served: read it with ``geerpc.current_call()``.

    Attributes:
        service_method: ``"Service.method"`` as the caller named it.
        metadata: what the caller sent, read-only (empty when nothing).
        deadline: when the caller stops waiting, on the ``time.monotonic()`` clock,
            the server's handle timeout included; None when unbounded.
        peer: the caller's address, ``"127.0.0.1:54321"`` (``"unix"`` for a Unix socket).
        args, kwargs: the call's arguments as decoded (interceptors may read them).
        reply_metadata: a dict whose entries go back with the reply (the rules of
            ``geerpc.metadata`` apply; a reply that breaks them becomes an error).
        peer_certificate: the client's certificate over mutual TLS, as
            ``SSLObject.getpeercert()`` gives it; None without one.
        identity: who makes the call, as the server's ``auth`` established it (a
            bearer token's identity); without one, the commonName of the client's
            certificate; else None. An interceptor may set it.
        streaming: True for a stream (a generator method called with ``stream()``):
            an interceptor's ``proceed()`` then returns when the stream has ended.
    """

    __slots__ = ("service_method", "_metadata", "deadline", "peer", "args", "kwargs", "_reply_metadata",
                 "peer_certificate", "_identity", "streaming")

    def __init__(self, service_method: str, metadata: dict[str, str | bytes] | None, deadline: float | None,
                 peer: str, args: list[Any], kwargs: dict[str, Any],
                 peer_certificate: dict[str, Any] | None = None, streaming: bool = False) -> None:
        self.service_method = service_method
        self._metadata = metadata
        self.deadline = deadline
        self.peer = peer
        self.args = args
        self.kwargs = kwargs
        self._reply_metadata: dict[str, str | bytes] | None = None
        self.peer_certificate = peer_certificate
        self._identity: str | None = None
        self.streaming = streaming

    @property
    def identity(self) -> str | None:
        if self._identity is None and self.peer_certificate:
            return common_name(self.peer_certificate)
        return self._identity

    @identity.setter
    def identity(self, value: str | None) -> None:
        self._identity = value

    @property
    def metadata(self) -> Mapping[str, str | bytes]:
        return EMPTY if self._metadata is None else MappingProxyType(self._metadata)

    @property
    def reply_metadata(self) -> dict[str, str | bytes]:
        if self._reply_metadata is None:
            self._reply_metadata = {}
        return self._reply_metadata

    def time_remaining(self, now: float | None = None) -> float | None:
        """Seconds until the deadline (0.0 once passed), or None when unbounded.

        ``now`` is a ``time.monotonic()`` reading; the current one by default.
        """
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - (time.monotonic() if now is None else now))

    def __repr__(self) -> str:
        left = self.time_remaining()
        return (f"<geerpc.CallContext {self.service_method} from {self.peer}"
                f"{'' if left is None else f', {left:.3g} s left'}>")


def current_call() -> CallContext:
    """The call the running handler or server interceptor serves.

    Raises RuntimeError outside a call (it is not set in code the server did not call).
    """
    call = CURRENT.get(None)
    if call is None:
        raise RuntimeError("geerpc.current_call() is only available inside a handler or a server interceptor")
    return call


class ClientCall:
    """One call as a client interceptor sees it, before it is sent.

    Interceptors may change ``metadata`` (a plain dict of its own) and ``kwargs`` (a
    dict of its own), and replace ``args`` (a sequence, as the caller passed it) and
    ``timeout`` (seconds from when the next step runs; None for none) before calling
    ``proceed()``. ``address`` is the server it goes to (for an XClient, the one this
    attempt picked). ``streaming`` is True for a stream: ``proceed()`` opens it and
    returns once it has ended (a ``Reply`` with no result and the end's metadata).
    """

    __slots__ = ("service_method", "args", "kwargs", "metadata", "timeout", "address", "streaming")

    def __init__(self, service_method: str, args: Sequence[Any], kwargs: dict[str, Any],
                 metadata: dict[str, str | bytes], timeout: float | None, address: str,
                 streaming: bool = False) -> None:
        self.service_method = service_method
        self.args = args
        self.kwargs = kwargs
        self.metadata = metadata
        self.timeout = timeout
        self.address = address
        self.streaming = streaming

    def __repr__(self) -> str:
        return f"<geerpc.ClientCall {self.service_method} to {self.address}>"


class Reply(NamedTuple):
    """A call's result and the metadata its reply carried (empty when none)."""

    result: Any
    metadata: Mapping[str, str | bytes] = EMPTY


def outgoing_deadline(own: Deadline | None, now: float, service_method: str) -> Deadline | None:
    """The deadline of a call about to be made: ``own`` (from the caller's timeout), or
    inside a handler the handler's deadline when that is sooner.

    Raises CallTimeout when the handler's deadline has passed: its calls fail at once.
    """
    serving = CURRENT.get(None)
    if serving is None or serving.deadline is None:
        return own
    at = serving.deadline
    if own is not None and own.at <= at:
        return own
    left = at - now
    if left <= 0:
        raise CallTimeout(f"{service_method} not sent: the deadline of {serving.service_method}, "
                          f"the call being served, has passed")
    return Deadline(at, left)


def common_name(certificate: dict[str, Any] | None) -> str | None:
    """The subject's commonName of a certificate as ``getpeercert()`` gives it, or None."""
    if not certificate:
        return None
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None
