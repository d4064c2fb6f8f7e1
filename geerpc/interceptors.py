"""Interceptors: one place to log, measure, authenticate or refuse every call.

An interceptor is an ``async`` callable ``(call, proceed)``: it may look at or change
the call, ``await proceed()`` to run the next interceptor and in the end the handler
(or, on a client, send the call), and return what that returned, or something else,
or raise. They run outermost first.

- Server side, ``call`` is the ``CallContext`` and ``proceed()`` returns the handler's
  result. An interceptor that raises answers the call as the handler would have; the
  handler does not run. They run on the loop, for plain ``def`` handlers too.
- Client side, ``call`` is the ``ClientCall`` and ``proceed()`` returns the ``Reply``.

Strategy on the server: a task per call costs more than a small call itself, and an
``async def`` handler with no ``await`` runs without one (``dispatch``). When the
handler is such a one and every interceptor awaits nothing but its ``proceed()``
(``awaits_only_proceed``, read from the bytecode, as ``service`` reads handlers),
the whole chain cannot suspend either, and is driven inline, one ``send``. If it
suspends after all (say ``proceed`` was rebound), ``Resume`` hands the coroutine,
where it stopped, to a task.
"""

from __future__ import annotations

import dis
import inspect
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Sequence
from typing import Any, Final, TypeAlias

from .context import CallContext, ClientCall, Reply

__all__ = [
    "ServerInterceptor", "ClientInterceptor", "check_interceptors", "awaits_only_proceed",
    "server_chain", "client_chain", "Resume",
]

ServerInterceptor: TypeAlias = Callable[[CallContext, Callable[[], Awaitable[Any]]], Awaitable[Any]]
ClientInterceptor: TypeAlias = Callable[[ClientCall, Callable[[], Awaitable[Reply]]], Awaitable[Reply]]

# Instructions that may suspend a coroutine other than through an await of a call.
_OTHER_SUSPENSIONS: Final = frozenset({"BEFORE_ASYNC_WITH", "GET_AITER", "GET_ANEXT", "END_ASYNC_FOR"})
_SKIP: Final = frozenset({"CACHE", "PRECALL", "EXTENDED_ARG"})


def check_interceptors(interceptors: Sequence[Any] | None, side: str) -> tuple[Any, ...]:
    """The interceptors as a tuple; TypeError for one that is not an ``async`` callable."""
    if interceptors is None:
        return ()
    if isinstance(interceptors, (str, bytes)) or not isinstance(interceptors, Sequence):
        raise TypeError(f"{side} interceptors must be a list of async callables, not {type(interceptors).__name__}")
    for interceptor in interceptors:
        if not _is_async(interceptor):
            raise TypeError(f"{side} interceptor {interceptor!r} must be an async callable (call, proceed) "
                            f"(an 'async def' function, or an object with an 'async def __call__')")
    return tuple(interceptors)


def _is_async(obj: Any) -> bool:
    if inspect.iscoroutinefunction(obj):
        return True
    call = getattr(type(obj), "__call__", None)
    return call is not None and not isinstance(obj, type) and inspect.iscoroutinefunction(call)


def _code(interceptor: Any) -> tuple[types.CodeType, str] | None:
    """The code object an interceptor runs and its ``proceed`` parameter's name."""
    func = interceptor
    skip = 0
    if isinstance(func, types.MethodType):
        func, skip = func.__func__, 1
    elif not isinstance(func, types.FunctionType):
        func, skip = getattr(type(interceptor), "__call__", None), 1
    if not isinstance(func, types.FunctionType):
        return None
    code = func.__code__
    index = skip + 1
    if code.co_argcount <= index or code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return None
    return code, code.co_varnames[index]


def awaits_only_proceed(interceptor: Any) -> bool:
    """Whether every ``await`` in the interceptor is ``await proceed()``: then it can
    only suspend where the rest of the chain does. False whenever unsure."""
    found = _code(interceptor)
    if found is None:
        return False
    code, proceed = found
    previous: list[dis.Instruction] = []
    for instruction in dis.get_instructions(code):
        name = instruction.opname
        if name in _SKIP:
            continue
        if name in _OTHER_SUSPENSIONS:
            return False
        if name.startswith(("STORE_FAST", "DELETE_FAST")) and instruction.argval == proceed:
            return False
        if name in ("STORE_DEREF", "DELETE_DEREF", "LOAD_CLOSURE", "MAKE_CELL") and instruction.argval == proceed:
            return False  # captured by a closure, which could rebind it
        if name == "GET_AWAITABLE" and not _calls_proceed(previous[-3:], proceed):
            return False
        previous.append(instruction)
    return True


def _calls_proceed(before: list[dis.Instruction], proceed: str) -> bool:
    """Whether the instructions before a GET_AWAITABLE are ``proceed()`` with no arguments."""
    if len(before) < 3 or before[-1].opname != "CALL" or before[-1].arg != 0:
        return False
    names = {before[-2].opname, before[-3].opname}
    loads = [i for i in before[-3:-1] if i.opname.startswith("LOAD_FAST")]
    return "PUSH_NULL" in names and len(loads) == 1 and loads[0].argval == proceed


def server_chain(interceptors: tuple[ServerInterceptor, ...], call: CallContext,
                 innermost: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
    """The awaitable that runs ``interceptors`` around ``innermost`` (the handler)."""
    result: Awaitable[Any] = _chain(interceptors, call, innermost)
    return result


def client_chain(interceptors: tuple[ClientInterceptor, ...], call: ClientCall,
                 innermost: Callable[[], Awaitable[Reply]]) -> Awaitable[Reply]:
    """The awaitable that runs ``interceptors`` around ``innermost`` (the sending)."""
    reply: Awaitable[Reply] = _chain(interceptors, call, innermost)
    return reply


def _chain(interceptors: tuple[Any, ...], call: Any, innermost: Callable[[], Awaitable[Any]]) -> Any:
    if len(interceptors) == 1:
        return interceptors[0](call, innermost)
    proceed = innermost
    for interceptor in reversed(interceptors[1:]):
        proceed = _step(interceptor, call, proceed)
    return interceptors[0](call, proceed)


def _step(interceptor: Callable[[Any, Callable[[], Awaitable[Any]]], Awaitable[Any]], call: Any,
          proceed: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[Any]]:
    return lambda: interceptor(call, proceed)


class Resume:
    """A coroutine that suspended in its first step, to be awaited where it stopped.

    ``await Resume(coroutine, yielded)`` passes ``yielded`` (what its first ``send``
    returned: the future it waits for) up to the task, and from then on relays the
    task's sends and throws to it, as ``yield from`` does, until it returns.
    """

    __slots__ = ("_coroutine", "_yielded")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self._coroutine, self._yielded = coroutine, yielded

    def close(self) -> None:
        """It will not be awaited: close the coroutine where it stopped."""
        self._coroutine.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, yielded = self._coroutine, self._yielded
        self._yielded = None
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - relayed to the coroutine, as a task would
                try:
                    yielded = coroutine.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coroutine.send(sent)
                except StopIteration as stop:
                    return stop.value
