"""How a call's outcome becomes a reply frame, sans I/O.

A result, a handler's exception, a deadline or a stop each map to one response frame
(docs/protocol.md section 3). Every frame built here fits the connection's frame limit:
an unencodable or oversized result becomes a SerializationError, and a long exception
message is cut to fit. Nothing here knows about sockets or tasks.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Final

from . import protocol as p
from .context import CURRENT, CallContext
from .errors import RemoteError
from .mapkeys import result_problem
from .metadata import outgoing
from .service import Method, argument_error

__all__ = [
    "result_reply", "failure_reply", "timeout_reply", "stopped_reply", "stopping_reply", "not_found_reply",
    "bad_request_reply", "budget_reply", "run_inline", "HandlerTracebacks", "TRACEBACK_INTERVAL",
]

log = logging.getLogger("geerpc.server")
#: A handler's exception and its traceback: WARNING, at most one per method per
#: TRACEBACK_INTERVAL, the ones held back at DEBUG. Set this logger's level to choose.
handler_log = logging.getLogger("geerpc.handler")
MAX_ERROR_MESSAGE: Final = 64 * 1024  # characters of an exception's message sent to the caller
TRACEBACK_INTERVAL: Final = 10.0  # seconds between two tracebacks logged at WARNING for one method
_MAX_TRACKED: Final = 4096  # method names remembered; past it, the quiet ones are forgotten


class HandlerTracebacks:
    """Which handler exceptions are logged with their traceback at WARNING.

    Per method name: the first one, then at most one per ``interval`` seconds, which
    says how many were held back since the one before (those are logged at DEBUG, so
    a ``geerpc.handler`` logger set to DEBUG shows every one). Takes ``now``; safe
    to share between threads (servers on several loops).
    """

    def __init__(self, interval: float = TRACEBACK_INTERVAL, logger: logging.Logger = handler_log) -> None:
        self.interval = interval
        self.logger = logger
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, int]] = {}  # method -> (when last logged, held back since)

    def log(self, method: str, exc: BaseException, now: float) -> None:
        name = type(exc).__name__
        if not self.logger.isEnabledFor(logging.WARNING):  # set to ERROR or above: none at WARNING
            self.logger.debug("%s raised %s", method, name, exc_info=exc)
            return
        with self._lock:
            last = self._last.get(method)
            if last is not None and now - last[0] < self.interval:
                self._last[method] = (last[0], last[1] + 1)
                held = -1
            else:
                held = 0 if last is None else last[1]
                if last is None and len(self._last) >= _MAX_TRACKED:
                    self._last = {key: value for key, value in self._last.items() if now - value[0] < self.interval}
                self._last[method] = (now, 0)
        if held < 0:
            self.logger.debug("%s raised %s", method, name, exc_info=exc)
        elif held:
            self.logger.warning("%s raised %s; the caller got a RemoteError (and %d more since the last "
                                "traceback logged, not shown: at most one per %g s)", method, name, held,
                                self.interval, exc_info=exc)
        else:
            self.logger.warning("%s raised %s; the caller got a RemoteError", method, name, exc_info=exc)


# One for the process, shared by its servers: a method name is what a reader of the
# log tells apart, and the functions here have no server to keep it on.
_TRACEBACKS = HandlerTracebacks()


def run_inline(call: CallContext, method: Method, args: list[Any], kwargs: dict[str, Any]) -> Any:
    """Run a coroutine method that has no ``await`` to its end, without a task, with
    ``call`` as its ``current_call()`` (in the context the caller runs this in)."""
    CURRENT.set(call)
    coroutine = method.func(*args, **kwargs)
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError(f"{method.name} suspended although it has no await")


def _reply_metadata(method: Method, metadata: dict[str, str | bytes] | None) -> tuple[dict[str, str | bytes] | None,
                                                                                     str | None]:
    """The reply metadata a handler set, checked: (metadata, None), or (None, what is wrong)."""
    if not metadata:
        return None, None
    try:
        return outgoing(metadata, f"reply metadata of {method.name}"), None
    except ValueError as exc:
        return None, str(exc)


def result_reply(seq: int, method: Method, result: Any, limit: int,
                 metadata: dict[str, str | bytes] | None = None) -> tuple[bytes, int]:
    """The success frame and code 0, or a SerializationError frame and INTERNAL when
    the result cannot be sent: msgpack cannot encode it, a map in it has a key that is
    not a str or bytes (the client would refuse it), it is over the frame limit, or the
    reply ``metadata`` the handler set breaks the rules. Logged at WARNING: the handler
    ran, but its caller gets an error."""
    problem = None
    if metadata:
        metadata, problem = _reply_metadata(method, metadata)
    if problem is None:
        try:
            reply = p.encode_response(seq, result, metadata)
        except (TypeError, ValueError, OverflowError) as exc:
            problem = f"result of {method.name} cannot be encoded: {describe(exc)}"
        else:
            if len(reply) - 4 <= limit:
                keys = result_problem(result)  # what the client's decoder would refuse
                if keys is None:
                    return reply, 0
                problem = f"result of {method.name} cannot be encoded: {keys}"
            else:
                problem = f"result of {method.name} is {len(reply) - 4} bytes, over the {limit}-byte frame limit"
    log.warning("%s", problem)
    return p.encode_error(seq, p.ErrorCode.INTERNAL, "SerializationError", problem), p.ErrorCode.INTERNAL


def failure_reply(seq: int, method: Method, args: list[Any], kwargs: dict[str, Any],
                  exc: BaseException, limit: int, now: float | None = None,
                  tracebacks: HandlerTracebacks | None = None,
                  metadata: dict[str, str | bytes] | None = None) -> tuple[bytes, int]:
    """The error frame and its code for a handler or interceptor that raised (or
    arguments that did not fit).

    A RemoteError raised here (not one that arrived from another server) is an answer:
    its code and type go to the caller as they are, with no traceback logged. Any other
    exception is the handler's error (APPLICATION), logged with its traceback by
    ``tracebacks`` (the process's, on the ``geerpc.handler`` logger, by default) at
    ``now`` (monotonic). ``metadata`` is the reply metadata set meanwhile.
    """
    if isinstance(exc, TypeError):
        # Binding happens before the body runs; re-check the signature only now
        # to tell the caller's mistake from a TypeError raised inside the handler.
        problem = argument_error(method, args, kwargs)
        if problem is not None:
            return (p.encode_error(seq, p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments", problem),
                    p.ErrorCode.INVALID_ARGUMENT)
    metadata, bad_metadata = _reply_metadata(method, metadata)
    if bad_metadata is not None:
        log.warning("%s", bad_metadata)
    if isinstance(exc, RemoteError) and not exc.received and type(exc.code) is int and 0 < exc.code < 2**31:
        code, name = exc.code, str(exc.type)[:200]
        handler_log.debug("%s answered %s: %s", method.name, name, exc)
    else:
        # Tracebacks stay on the server, in its log: they leak paths and code.
        (tracebacks or _TRACEBACKS).log(method.name, exc, time.monotonic() if now is None else now)
        code, name = p.ErrorCode.APPLICATION, type(exc).__name__[:200]
    message = describe(exc)[:MAX_ERROR_MESSAGE]
    reply = p.encode_error(seq, code, name, message, metadata)
    excess = len(reply) - 4 - limit
    if excess > 0:  # cut the message (by bytes, at a character boundary) to fit
        keep = max(0, len(message.encode()) - excess - 8)
        message = message.encode()[:keep].decode(errors="ignore") + "..."
        reply = p.encode_error(seq, code, name, message, metadata)
        if len(reply) - 4 > limit:  # the metadata alone is too large: it goes
            reply = p.encode_error(seq, code, name, message)
    return reply, code


def timeout_reply(seq: int, method: Method, budget: float) -> bytes:
    """The call's deadline passed on the server; ``budget`` is the time it was given."""
    return p.encode_error(seq, p.ErrorCode.TIMEOUT, "Timeout",
                          f"{method.name} timed out: did not finish within {budget:g} s on the server")


def stopped_reply(seq: int, method: Method) -> bytes:
    return p.encode_error(seq, p.ErrorCode.UNAVAILABLE, "Unavailable", f"server stopped before {method.name} finished")


def stopping_reply(seq: int) -> bytes:
    """A request that arrived after the server began to stop: it never ran."""
    return p.encode_error(seq, p.ErrorCode.UNAVAILABLE, "Unavailable", "server is stopping")


def bad_request_reply(bad: p.BadRequest) -> bytes:
    """A request that was framed and numbered but could not be taken apart."""
    return p.encode_error(bad.seq, bad.code, bad.type, bad.message)


def not_found_reply(seq: int, service_method: str, has_service: Callable[[str], bool]) -> bytes:
    """No such method: say whether the name, the service or only the method is wrong."""
    service, dot, method = service_method.rpartition(".")
    shown = service_method if len(service_method) <= 80 else service_method[:80] + "..."
    if not dot or not service or not method:
        return p.encode_error(seq, p.ErrorCode.NOT_FOUND, "MethodNotFound",
                              f"malformed service_method {shown!r}: want 'Service.method'")
    if not has_service(service):
        return p.encode_error(seq, p.ErrorCode.NOT_FOUND, "ServiceNotFound", f"can't find service {service!r}")
    return p.encode_error(seq, p.ErrorCode.NOT_FOUND, "MethodNotFound",
                          f"can't find method {method!r} of service {service!r}")


def describe(exc: BaseException) -> str:
    """``str(exc)``, even for an exception whose ``__str__`` raises."""
    try:
        return str(exc)
    except Exception:  # noqa: BLE001
        return f"<unprintable {type(exc).__name__}>"


def budget_reply(seq: int, cost: int, budget: int) -> bytes:
    """A request that alone would hold more than its connection's whole byte budget."""
    return p.encode_error(seq, p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments",
                          f"request too large: its arguments would hold about {cost:,} bytes once decoded, "
                          f"over the connection's budget of {budget:,} (connection_budget)")
