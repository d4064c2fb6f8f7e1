"""Services by reflection: the method table built from a registered object.

Only this table is consulted at call time: a client's string is looked up in a dict
built at registration, never passed to ``getattr``. That is what keeps ``_secret``,
``__init__``, ``__class__`` and ``add.__globals__`` out of reach (the Pyro5/RPyC
attribute-traversal bugs). No asyncio here beyond telling coroutine functions apart.
"""

from __future__ import annotations

import dis
from array import array
from bisect import bisect_left as _bucket
import inspect
import os
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Method", "Service", "build_service", "argument_error", "LATENCY_WINDOW", "DURATION_BUCKETS", "CANCELLED",
           "NOT_STREAMING", "ASYNC_STREAM", "SYNC_STREAM"]

#: What ``Method.record`` counts a call whose caller cancelled it (or whose connection
#: was lost) as: not a wire code, since nobody is answered.
CANCELLED = 100
NOT_STREAMING, ASYNC_STREAM, SYNC_STREAM = 0, 1, 2  # Method.streaming
LATENCY_WINDOW = 2048  # calls whose latency the debug page's percentiles cover (a power of two)
_RING_MASK = LATENCY_WINDOW - 1
#: Upper bounds, in seconds, of the call-duration histogram (``/metrics``): from 100 µs,
#: since a small call takes tens of µs, to OpenTelemetry's RPC buckets' 10 s.
DURATION_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0,
)


@dataclass(slots=True)
class Method:
    """One callable endpoint, ``"Service.method"``."""

    name: str
    func: Callable[..., Any]
    is_async: bool
    inline: bool = False  # a coroutine with no await: it cannot suspend, so needs no task
    #: how the method streams: ``NOT_STREAMING``, ``ASYNC_STREAM`` (an async generator
    #: method) or ``SYNC_STREAM`` (a generator method, advanced on worker threads)
    streaming: int = 0
    _signature: inspect.Signature | None = field(default=None, repr=False)
    calls: int = 0
    errors: int = 0
    #: bytes of its recent reply frames (a slowly decaying maximum); -1 before the first.
    #: A call is charged this much of its connection's budget while it runs.
    reply_size: int = -1
    #: the last ``LATENCY_WINDOW`` durations, a ring allocated whole at the first call
    #: (8 bytes a call, no float objects): a method's memory does not grow as its
    #: window fills, however slowly its calls come
    _ring: array[float] | None = field(default=None, repr=False)
    #: failed calls by error code (``protocol.ErrorCode``); calls - errors succeeded
    codes: dict[int, int] = field(default_factory=dict, repr=False)
    #: calls by duration: ``buckets[i]`` took at most ``DURATION_BUCKETS[i]`` seconds
    #: and more than the bound before; the last one, longer than every bound
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1), repr=False)
    seconds: float = 0.0  # the durations' sum

    def record(self, seconds: float, code: int = 0, reply: int = -1) -> None:
        """Count one finished call, with its error code (0: it succeeded): the debug
        page and ``/metrics`` show these. ``reply`` is the size of the reply frame sent
        (-1: none was), which ``reply_size`` follows."""
        if reply >= 0:
            known = self.reply_size
            self.reply_size = reply if reply >= known else known - ((known - reply) >> 3)
        calls = self.calls
        self.calls = calls + 1
        if code:
            self.errors += 1
            self.codes[code] = self.codes.get(code, 0) + 1
        ring = self._ring
        if ring is None:
            ring = self._ring = array("d", bytes(8 * LATENCY_WINDOW))
        ring[calls & _RING_MASK] = seconds
        self.buckets[_bucket(DURATION_BUCKETS, seconds)] += 1
        self.seconds += seconds

    @property
    def latencies(self) -> list[float]:
        """The durations of the last calls (up to ``LATENCY_WINDOW``), oldest first."""
        ring, calls = self._ring, self.calls
        if ring is None:
            return []
        if calls <= LATENCY_WINDOW:
            return ring[:calls].tolist()
        start = calls & _RING_MASK
        return ring[start:].tolist() + ring[:start].tolist()

    @property
    def signature(self) -> inspect.Signature | None:
        """The method's signature, or None when Python cannot tell (some builtins)."""
        if self._signature is None:
            try:
                self._signature = inspect.signature(self.func)
            except (TypeError, ValueError):
                return None
        return self._signature


@dataclass(slots=True)
class Service:
    name: str
    instance: Any
    methods: dict[str, Method]


def _valid_name(name: str) -> bool:
    return bool(name) and name.isidentifier() and not name.startswith("_")


def _library_class(cls: type) -> bool:
    """Whether ``cls`` comes from the builtins or the standard library (not site-packages)."""
    module_name = cls.__module__
    if module_name == "builtins":
        return True
    if module_name == "__main__":
        # The program being run: the user's own, even when ``python -m cProfile`` (or
        # pdb, or trace) runs it and sys.modules["__main__"] is that tool's module.
        return False
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):  # compiled into the interpreter, or not a real module
        return module_name.partition(".")[0] in sys.stdlib_module_names
    path = os.path.realpath(file)
    return (any(path.startswith(root) for root in _STDLIB_ROOTS)
            and not any(path.startswith(root) for root in _PACKAGE_ROOTS))


def _stdlib_roots(*keys: str) -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({os.path.join(os.path.realpath(paths[key]), "") for key in keys if key in paths})


_STDLIB_ROOTS = _stdlib_roots("stdlib", "platstdlib")
_PACKAGE_ROOTS = _stdlib_roots("purelib", "platlib")  # site-packages may sit inside the stdlib's folder


def _refusal(instance: Any) -> str | None:
    """Why ``instance`` cannot be registered at all, or None."""
    if isinstance(instance, type):
        return (f"register an instance, not the class {instance.__name__}: "
                f"pass {instance.__name__}() (a class would expose type's own methods)")
    if inspect.ismodule(instance):
        return f"register an instance of a class, not the module {instance.__name__}"
    if _library_class(type(instance)):
        return (f"{type(instance).__name__} is a builtin or standard-library type: "
                "register an instance of your own class")
    return None


def build_service(instance: Any, name: str | None = None) -> Service:
    """Collect the public methods of ``instance``: names not starting with ``_``.

    Only methods defined on the user's own classes are exposed: a name that resolves
    to a builtin or standard-library class in the MRO (``dict.update``,
    ``Exception.with_traceback``) is not. Attributes are inspected on the class with
    ``inspect.getattr_static`` so that registering an object never runs its
    properties. Raises ValueError for a bad service name, for a class, module or
    builtin object, and for an object with no public methods.
    """
    refusal = _refusal(instance)
    if refusal is not None:
        raise ValueError(refusal)
    if name is None:
        name = type(instance).__name__
    if not isinstance(name, str) or not _valid_name(name):
        raise ValueError(f"service name {name!r} must be a public Python identifier (no dots, no leading _)")
    mro = type(instance).__mro__
    methods: dict[str, Method] = {}
    for attr in dir(type(instance)):
        if not _valid_name(attr):
            continue
        owner = next((cls for cls in mro if attr in vars(cls)), None)
        if owner is None or _library_class(owner):
            continue
        static = inspect.getattr_static(instance, attr)
        if isinstance(static, (staticmethod, classmethod)):
            static = static.__func__
        if not callable(static) or isinstance(static, type) or isinstance(static, property):
            continue
        bound = getattr(instance, attr)
        is_async = _is_async(bound)
        methods[attr] = Method(f"{name}.{attr}", bound, is_async, is_async and _cannot_suspend(bound),
                               streaming=_streaming(bound))
    if not methods:
        raise ValueError(f"{type(instance).__name__} has no public methods to register")
    return Service(name, instance, methods)


def _streaming(func: Callable[..., Any]) -> int:
    """Whether a method streams: a generator function (async or not) does."""
    if inspect.isasyncgenfunction(func):
        return ASYNC_STREAM
    if inspect.isgeneratorfunction(func):
        return SYNC_STREAM
    return NOT_STREAMING


def _is_async(func: Callable[..., Any]) -> bool:
    if inspect.iscoroutinefunction(func):
        return True
    call = getattr(func, "__call__", None)  # a callable object with an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def _cannot_suspend(func: Callable[..., Any]) -> bool:
    """True for an ``async def`` whose body has no await point at all.

    Such a coroutine runs to completion on its first step, so the server runs it
    inline and answers in the same write as the read that carried the request.
    Anything wrapped or unusual gets a task, to be safe.
    """
    code = getattr(getattr(func, "__func__", func), "__code__", None)
    if code is None or not inspect.iscoroutinefunction(func):
        return False
    return not any(ins.opname in ("YIELD_VALUE", "SEND", "GET_AWAITABLE") for ins in dis.get_instructions(code))


def argument_error(method: Method, args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """Why ``args``/``kwargs`` do not fit ``method``, or None when they do.

    Called only after the call itself raised TypeError (binding is then re-checked to
    tell a caller's mistake from a TypeError raised inside the handler), so the
    common path pays nothing for it.
    """
    for key in kwargs:
        if not isinstance(key, str):
            return f"{method.name}: keyword argument names must be strings"
    signature = method.signature
    if signature is None:
        return None
    params = signature.parameters
    problem: str | None = None
    # A keyword the method does not take is the caller's real mistake: bind() would
    # first report the argument it displaced as missing (add(1, c=2): "missing 'b'").
    if not any(param.kind is param.VAR_KEYWORD for param in params.values()):
        unexpected = [repr(key) for key in kwargs if key not in params]
        if unexpected:
            problem = (f"got an unexpected keyword argument {unexpected[0]}" if len(unexpected) == 1
                       else f"got unexpected keyword arguments {', '.join(unexpected)}")
    if problem is None:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            problem = str(exc)
        else:
            return None
    # Annotations postponed by ``from __future__ import annotations`` are strings:
    # show them as written (a: int), not quoted (a: 'int').
    shown = signature.replace(
        parameters=[param.replace(annotation=_Written(param.annotation)) if isinstance(param.annotation, str)
                    else param for param in params.values()],
        return_annotation=(_Written(signature.return_annotation) if isinstance(signature.return_annotation, str)
                           else signature.return_annotation))
    return f"{method.name}{shown}: {problem}"


class _Written:
    """An annotation that reprs as the source text it holds."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text
