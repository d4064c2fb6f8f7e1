"""How a call's outcome becomes a reply frame, sans I/O.

A result, a handler's exception, a deadline or a stop each map to one response frame
(docs/protocol.md section 3). Every frame built here fits the connection's frame limit:
an unencodable or oversized result becomes a SerializationError, and a long exception
message is cut to fit. Nothing here knows about sockets or tasks.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from . import protocol as p
from .service import Method, argument_error

__all__ = ["result_reply", "failure_reply", "timeout_reply", "stopped_reply", "run_inline"]

log = logging.getLogger("geerpc.server")
MAX_ERROR_MESSAGE: Final = 64 * 1024  # characters of an exception's message sent to the caller


def run_inline(method: Method, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run a coroutine method that has no ``await`` to its end, without a task."""
    coroutine = method.func(*args, **kwargs)
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError(f"{method.name} suspended although it has no await")


def result_reply(seq: int, method: Method, result: Any, limit: int) -> bytes:
    """The success frame, or a SerializationError when the result cannot be sent."""
    try:
        reply = p.encode_response(seq, result)
    except (TypeError, ValueError, OverflowError) as exc:
        return p.encode_error(seq, p.ErrorCode.INTERNAL, "SerializationError",
                              f"result of {method.name} cannot be encoded: {describe(exc)}")
    if len(reply) - 4 > limit:
        return p.encode_error(seq, p.ErrorCode.INTERNAL, "SerializationError",
                              f"result of {method.name} is {len(reply) - 4} bytes, over the {limit}-byte frame limit")
    return reply


def failure_reply(seq: int, method: Method, args: list[Any], kwargs: dict[str, Any],
                  exc: BaseException, limit: int) -> bytes:
    """The error frame for a handler that raised (or arguments that did not fit)."""
    if isinstance(exc, TypeError):
        # Binding happens before the body runs; re-check the signature only now
        # to tell the caller's mistake from a TypeError raised inside the handler.
        problem = argument_error(method, args, kwargs)
        if problem is not None:
            return p.encode_error(seq, p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments", problem)
    # Tracebacks stay on the server (at debug level): they leak paths and code.
    log.debug("%s raised %s", method.name, type(exc).__name__, exc_info=exc)
    name = type(exc).__name__[:200]
    message = describe(exc)[:MAX_ERROR_MESSAGE]
    reply = p.encode_error(seq, p.ErrorCode.APPLICATION, name, message)
    excess = len(reply) - 4 - limit
    if excess > 0:  # cut the message (by bytes, at a character boundary) to fit
        keep = max(0, len(message.encode()) - excess - 8)
        message = message.encode()[:keep].decode(errors="ignore") + "..."
        reply = p.encode_error(seq, p.ErrorCode.APPLICATION, name, message)
    return reply


def timeout_reply(seq: int, method: Method, timeout: float) -> bytes:
    return p.encode_error(seq, p.ErrorCode.TIMEOUT, "Timeout",
                          f"{method.name} timed out: did not finish within {timeout:g} s on the server")


def stopped_reply(seq: int, method: Method) -> bytes:
    return p.encode_error(seq, p.ErrorCode.UNAVAILABLE, "Unavailable", f"server stopped before {method.name} finished")


def describe(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(exc).__name__}>"
