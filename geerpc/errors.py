"""The exception hierarchy: one root, and each class says who is at fault.

This module imports nothing from the rest of geerpc, so every layer can use it.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = [
    "GeeRPCError",
    "EncodeError",
    "RequestTooLarge",
    "ProtocolError",
    "RemoteError",
    "ServiceNotFound",
    "MethodNotFound",
    "InvalidArguments",
    "Unavailable",
    "Unauthenticated",
    "PermissionDenied",
    "NotSupported",
    "ConnectError",
    "HandshakeError",
    "ConnectionClosed",
    "NoServerAvailable",
    "RegistryError",
    "Timeout",
    "ConnectTimeout",
    "CallTimeout",
]


class GeeRPCError(Exception):
    """Root of every error geerpc raises; catch this to catch them all."""


class EncodeError(GeeRPCError, TypeError):
    """The call's arguments cannot be sent: msgpack cannot encode them, or a map in
    them has a key that is not a str or bytes (every geerpc peer refuses those).

    Raised by ``call()`` before anything is sent; fix the caller. Also a built-in
    ``TypeError``, which is what it used to be.
    """


class RequestTooLarge(GeeRPCError, ValueError):
    """The encoded request is larger than the connection's frame limit; nothing was sent.

    Send less per call, or raise ``max_frame_size`` on both sides. Also a built-in
    ``ValueError``, which is what it used to be.
    """


class ProtocolError(GeeRPCError):
    """The peer broke the wire protocol (bad Option, malformed or oversized frame).

    The connection it happened on is closed: the fault is the peer's, and retrying
    against the same peer will fail the same way.
    """


class RemoteError(GeeRPCError):
    """The server could not run the call, or the handler raised.

    ``type`` names the remote exception class (``"ValueError"``, or one of geerpc's
    own such as ``"MethodNotFound"``); ``str(error)`` is its message. The connection
    stays usable. The method may have run: do not retry blindly.

    Raised on a server (by a handler or an interceptor), a RemoteError is an answer:
    the caller gets its ``code`` and ``type``, so ``raise PermissionDenied("no")`` in
    an interceptor reaches the caller as PermissionDenied. One that arrived in a reply
    (``received`` is True: another server sent it) is passed on as any exception is,
    as the handler's error. ``metadata`` is the reply's metadata, when it had any.

    Made with one argument, the message, ``type`` is the class's name.
    """

    #: the wire's error code (docs/protocol.md section 3): APPLICATION here
    code: int = 1
    #: True when this error arrived in a reply, False when raised in this process
    received: bool = False
    metadata: Mapping[str, str | bytes] = MappingProxyType({})

    def __init__(self, type: str, message: str | None = None) -> None:
        if message is None:
            type, message = self.__class__.__name__, type
        super().__init__(message)
        self.type = type

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:  # copy/pickle keep .type
        return (self.__class__, (self.type, str(self)))


class ServiceNotFound(RemoteError):
    """The server has no service by the called name: fix the caller's name."""

    code = 2


class MethodNotFound(RemoteError):
    """The service exists but has no public method by the called name."""

    code = 2


class InvalidArguments(RemoteError):
    """The arguments (or the call's metadata) did not fit; the method did not run."""

    code = 3


class Unavailable(RemoteError):
    """The server is stopping and did not run the call: safe to retry on another server."""

    code = 6


class Unauthenticated(RemoteError):
    """The call did not say who makes it, or not believably (no or a bad credential).

    Raise it in a server interceptor or handler to refuse a call; the caller gets it.
    """

    code = 7


class PermissionDenied(RemoteError):
    """The caller is known but may not make this call.

    Raise it in a server interceptor or handler to refuse a call; the caller gets it.
    """

    code = 8


class NotSupported(GeeRPCError):
    """The peer does not support what this call needs (an older geerpc, say, that takes
    no call metadata). Nothing was sent; the message says what is missing."""


class ConnectError(GeeRPCError, ConnectionError):
    """Dialing failed: refused, unreachable or a malformed address. Nothing was sent."""


class HandshakeError(ConnectError):
    """The server took the connection but the handshake failed: it closed it, refused
    our Option, or answered with something that is not geerpc's.

    Probably not a geerpc server (a GeeRPC Go server speaks gob and closes the
    connection), or one that refused us for the reason the message gives. Dialing it
    again soon will most likely fail the same way; no call was sent.
    """


class ConnectionClosed(GeeRPCError, ConnectionError):
    """The connection is gone. Every call pending on it fails with this at once.

    A call that was already sent may have run on the server.
    """


class NoServerAvailable(GeeRPCError):
    """Discovery has no server to offer (for this service). Check the registry."""


class RegistryError(GeeRPCError):
    """The registry could not be reached or refused us; the message names it."""


class Timeout(GeeRPCError, TimeoutError):
    """A geerpc deadline passed. Also a built-in ``TimeoutError``."""


class ConnectTimeout(Timeout):
    """Dial and handshake did not finish within ``connect_timeout``."""


class CallTimeout(Timeout):
    """The call did not complete in time: on the client, or enforced by the server.

    The method may have run, or may still be running until the server notices.
    """


# --------------------------------------------------------------------------- remote built-in exceptions
#
# Strategy: a handler's exception reaches the client as a type *name* and a message,
# never as a pickled object, so nothing the peer names is imported or run. When the
# name is one of Python's own exception classes, the client raises a class that is
# both a RemoteError and that built-in (``except ValueError`` catches a remote
# ValueError). The built-ins are looked up in a table made from the ``builtins``
# module at import time, never by ``getattr`` on the peer's string; each combined
# class is made once, on first use. Left out, and so plain RemoteErrors:
#
# - BaseException subclasses that are not Exceptions (SystemExit, KeyboardInterrupt,
#   GeneratorExit, asyncio's CancelledError is not a builtin at all), ExceptionGroup,
#   and Exception itself (a RemoteError is one already);
# - OSError and all its subclasses: TimeoutError and ConnectionError among them, which
#   geerpc's own Timeout, ConnectError and ConnectionClosed are, for local conditions
#   (``except TimeoutError`` must keep meaning "this call timed out");
# - the classes Python's own machinery catches without being asked: StopIteration and
#   StopAsyncIteration end a loop, AttributeError makes getattr() and hasattr() take
#   their default, so a remote one would pass silently for something else;
# - the state of this interpreter: MemoryError, RecursionError, SystemError;
# - the warning categories (Warning and its subclasses), which are not failures.
#
# UnicodeDecodeError, UnicodeEncodeError and UnicodeTranslateError need more than a
# message to be built; they arrive as their base, UnicodeError (so ValueError too).

_LEFT_OUT: Final[tuple[type[BaseException], ...]] = (
    OSError, Warning, StopIteration, StopAsyncIteration, AttributeError, MemoryError, RecursionError,
    SystemError, BaseExceptionGroup,
)
_STAND_INS: Final[dict[type[Exception], type[Exception]]] = {
    UnicodeDecodeError: UnicodeError, UnicodeEncodeError: UnicodeError, UnicodeTranslateError: UnicodeError,
}


def _builtin_errors() -> dict[str, type[Exception]]:
    table: dict[str, type[Exception]] = {}
    for name, value in vars(builtins).items():
        if (isinstance(value, type) and issubclass(value, Exception) and value is not Exception
                and value.__name__ == name and not issubclass(value, _LEFT_OUT)):  # (aliases: IOError)
            table[name] = _STAND_INS.get(value, value)
    return table


#: Built-in exception names a remote error may take the class of, and that class.
BUILTIN_ERRORS: Final[dict[str, type[Exception]]] = _builtin_errors()
_combined: dict[type[Exception], type[RemoteError] | None] = {}


def remote_builtin(type_name: str, message: str) -> RemoteError | None:
    """A RemoteError that is also the built-in exception ``type_name`` names, or None
    when that name is not in ``BUILTIN_ERRORS``. ``error.type`` stays ``type_name``."""
    base = BUILTIN_ERRORS.get(type_name)
    if base is None:
        return None
    if base in _combined:
        cls = _combined[base]
    else:  # setdefault: two threads making it at once still get one class
        cls = _combined.setdefault(base, _combine(base))
    return None if cls is None else cls(type_name, message)


def _combine(base: type[Exception]) -> type[RemoteError] | None:
    namespace = {
        "__module__": __name__,
        "__doc__": f"A {base.__name__} the handler raised; a RemoteError too (``.type`` names it).",
        "__str__": BaseException.__str__,  # the message as sent (KeyError's own __str__ would quote it again)
        "__reduce__": _reduce_combined,
    }
    try:
        cls: type[RemoteError] = type(f"Remote{base.__name__}", (RemoteError, base), namespace)
        probe = cls(base.__name__, "probe")
    except TypeError:  # a layout or constructor that a plain message does not fit
        return None
    return cls if str(probe) == "probe" else None


def _reduce_combined(error: RemoteError) -> tuple[Any, tuple[str, str]]:
    # The class is made at run time, so pickle cannot find it by name: rebuild it from the table.
    return (_rebuild, (error.type, str(error)))


def _rebuild(type_name: str, message: str) -> RemoteError:
    return remote_builtin(type_name, message) or RemoteError(type_name, message)
