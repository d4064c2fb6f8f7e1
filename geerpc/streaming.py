"""Server side of a stream: a generator method's items sent within the client's credit.

A method that is a generator streams (``service.Method.streaming``). The client opens
the stream with a window of items and bytes (docs/protocol.md, "Streams"); the pump
here advances the generator only while that window has room and the peer reads its
connection, so a slow consumer holds the generator still instead of filling memory.
The client's CREDIT messages reopen the window as it consumes.

The pump runs inside ``dispatch.Calls``' ordinary task for the call, so a stream has
the same slot, deadline, cancellation, interceptors and error replies as a unary
call; its end is a RESPONSE with no result. An ``async`` generator is advanced on the
loop; a plain generator on the worker threads, one ``next()`` at a time. However the
stream ends (cancelled, timed out, the server stopping, the connection lost), the
generator is closed, so its ``finally`` blocks run.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncGenerator, Callable, Generator
from typing import Any, Final

from . import protocol as p
from .errors import RemoteError
from .mapkeys import result_problem
from .replies import describe
from .service import ASYNC_STREAM, Method
from .workers import Job, on_worker

__all__ = ["StreamWindow", "StreamItemError", "pump", "NOT_A_STREAM", "IS_A_STREAM"]

NOT_A_STREAM: Final = "{} does not stream (it is not a generator): call it with call(), not stream()"
IS_A_STREAM: Final = "{} streams (it is a generator method): call it with stream(), not call()"
_END: Final = object()  # a plain generator's next() found no more items


class StreamItemError(RemoteError):
    """An item the generator yielded cannot be sent: the stream ends with this error."""

    code = int(p.ErrorCode.INTERNAL)


class StreamWindow:
    """The credit a client has granted one stream, and the pump that waits for it.

    ``items`` and ``bytes`` are what the server may still send; an item may take
    ``bytes`` below zero (so an item larger than the window still goes, alone). Both
    are kept within ``protocol.MAX_WINDOW_ITEMS`` and ``MAX_WINDOW_BYTES`` whatever
    the client grants.
    """

    __slots__ = ("seq", "items", "bytes", "_waiter", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, seq: int, items: int, bytes_: int) -> None:
        self._loop = loop
        self.seq = seq
        self.items = min(items, p.MAX_WINDOW_ITEMS)
        self.bytes = min(bytes_, p.MAX_WINDOW_BYTES)
        self._waiter: asyncio.Future[None] | None = None

    def grant(self, items: int, bytes_: int) -> None:
        """The client consumed this much: it may have as much again."""
        self.items = min(self.items + items, p.MAX_WINDOW_ITEMS)
        self.bytes = min(self.bytes + bytes_, p.MAX_WINDOW_BYTES)
        self.wake()

    def wake(self) -> None:
        """Let the pump look again (credit arrived, or the peer reads again)."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def room(self, paused: Callable[[], bool]) -> None:
        """Return once an item may be sent: credit left, and the connection not paused."""
        while self.items <= 0 or self.bytes <= 0 or paused():
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def sent(self, size: int) -> None:
        self.items -= 1
        self.bytes -= size


def item_frame(seq: int, method: Method, item: Any, limit: int) -> bytes:
    """The ITEM frame for ``item``; StreamItemError when it cannot be sent."""
    try:
        frame = p.encode_item(seq, item)
    except (TypeError, ValueError, OverflowError) as exc:
        raise StreamItemError("SerializationError",
                              f"an item of {method.name} cannot be encoded: {describe(exc)}") from None
    if len(frame) - 4 > limit:
        raise StreamItemError("SerializationError",
                              f"an item of {method.name} is {len(frame) - 4} bytes, over the {limit}-byte frame limit")
    problem = result_problem(item)  # what the client's decoder would refuse
    if problem is not None:
        raise StreamItemError("SerializationError", f"an item of {method.name} cannot be encoded: {problem}")
    return frame


async def pump(window: StreamWindow, method: Method, args: list[Any], kwargs: dict[str, Any], *,
               send: Callable[[bytes], None], paused: Callable[[], bool], limit: int,
               submit: Callable[[Job], None], context: contextvars.Context | None = None) -> None:
    """Run the generator method, sending each item as the window allows; return at its end.

    A plain generator's steps run on worker threads in ``context`` (the call's, so
    that ``geerpc.current_call()`` works inside it).

    Raises what the generator raises, StreamItemError for an item that cannot be
    sent, and CancelledError when the call is cancelled; the generator is closed
    in every case.
    """
    if method.streaming == ASYNC_STREAM:
        await _pump_async(window, method, method.func(*args, **kwargs), send, paused, limit)
    else:
        await _pump_sync(window, method, method.func(*args, **kwargs), send, paused, limit, submit, context)


async def _pump_async(window: StreamWindow, method: Method, items: AsyncGenerator[Any, None],
                      send: Callable[[bytes], None], paused: Callable[[], bool], limit: int) -> None:
    seq = window.seq
    try:
        while True:
            if window.items <= 0 or window.bytes <= 0 or paused():
                await window.room(paused)
            try:
                item = await items.__anext__()
            except StopAsyncIteration:
                return
            frame = item_frame(seq, method, item, limit)
            send(frame)
            window.sent(len(frame) - 4)
    finally:
        # Cancelled while it waited at a yield (for credit), or ended by an error of
        # ours: GeneratorExit at that yield runs its finally. A no-op once it ended.
        await items.aclose()


class _SyncItems:
    """A plain generator stepped on worker threads, never two steps at once."""

    __slots__ = ("items", "lock", "closed")

    def __init__(self, items: Generator[Any, None, None]) -> None:
        self.items = items
        self.lock = threading.Lock()
        self.closed = False

    def step(self) -> Any:
        with self.lock:
            if self.closed:
                return _END
            try:
                return next(self.items)
            except StopIteration:
                self.closed = True
                return _END

    def close(self) -> None:
        """Close the generator (GeneratorExit inside it), after any step running now."""
        with self.lock:
            if not self.closed:
                self.closed = True
                self.items.close()


async def _pump_sync(window: StreamWindow, method: Method, items: Generator[Any, None, None],
                     send: Callable[[bytes], None], paused: Callable[[], bool], limit: int,
                     submit: Callable[[Job], None], context: contextvars.Context | None) -> None:
    seq = window.seq
    source = _SyncItems(items)
    loop = asyncio.get_running_loop()
    try:
        while True:
            if window.items <= 0 or window.bytes <= 0 or paused():
                await window.room(paused)
            item = await on_worker(loop, submit, source.step, [], {}, context)
            if item is _END:
                return
            frame = item_frame(seq, method, item, limit)
            send(frame)
            window.sent(len(frame) - 4)
    finally:
        if not source.closed:
            # On a worker thread: the generator's finally may block, and a step may
            # still be running there (it finishes first: the lock).
            try:
                submit(Job(_call, [source.close], {}, _ignore))
            except RuntimeError:  # the worker pool is shut down: the server is gone
                pass


def _call(func: Callable[[], Any]) -> Any:
    return func()


def _ignore(job: Job, ok: bool, value: Any) -> None:
    """A generator's close is not answered; what it raised is dropped."""
