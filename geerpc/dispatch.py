"""Running the calls of one connection: each handler under its deadline, and its
outcome turned into a reply frame.

Three ways to run a handler. An ``async def`` with no ``await`` cannot suspend, so it
runs inline, in a copy of the context, and is answered before the read callback
returns: a task and an extra loop iteration would cost more than the call (its
``asyncio.current_task()`` is None). Other coroutines get a task (an eager one on
Python 3.12+) under ``asyncio.timeout_at(deadline)``. Plain ``def`` methods may block,
so they run on worker threads; past the deadline their result is dropped.

A handler may raise anything, KeyboardInterrupt and SystemExit included: ``_run``
catches it so it can never escape into the event loop. Nothing here reads the
socket; the connection passes in what to call to queue or send a reply.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from time import perf_counter
from typing import Any

from . import protocol as p
from .context import CURRENT, CallContext
from .interceptors import Resume, ServerInterceptor, server_chain
from .replies import failure_reply, result_reply, run_inline, stopped_reply, timeout_reply
from .service import ASYNC_STREAM, CANCELLED, Method
from .streaming import StreamWindow, pump
from .workers import Job, on_worker

__all__ = ["Calls", "STOPPING", "budget"]

STOPPING = "server stopping"  # the cancel reason that answers Unavailable
_EAGER = sys.version_info >= (3, 12)
_TIMEOUT, _UNAVAILABLE = int(p.ErrorCode.TIMEOUT), int(p.ErrorCode.UNAVAILABLE)


def budget(timeout: float | None, handle_timeout: float | None) -> float | None:
    """Seconds a call may take: the caller's time left or the handle timeout, whichever is smaller.

    A ``timeout`` of 0 means no deadline, as a HandleTimeout of 0 does in the Option.
    """
    if handle_timeout is not None and (not timeout or handle_timeout < timeout):
        return handle_timeout
    return timeout or None


#: a finished call whose result waits for room: (seq, method, result, start, reply metadata)
_Parked = tuple[int, Method, Any, float, dict[str, str | bytes] | None]


def _cancelled_by_someone() -> bool:
    """Whether the running task was cancelled (rather than its handler raising CancelledError)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class _SyncCall(Job):
    """A plain ``def`` call handed to the worker threads."""

    __slots__ = ("seq", "method", "timer", "start", "cost", "call")
    seq: int
    method: Method
    timer: asyncio.TimerHandle | None
    start: float
    cost: int  # bytes charged while it runs
    call: CallContext


def _first_step(call: CallContext, coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Set the call's context and run ``coroutine`` until it first suspends (or ends)."""
    CURRENT.set(call)
    return coroutine.send(None)


def _in_context(call: CallContext) -> contextvars.Context:
    """A copy of the current context in which ``current_call()`` is ``call``."""
    context = contextvars.copy_context()
    context.run(CURRENT.set, call)
    return context


def _nothing() -> None:
    pass


def _yes() -> bool:
    return True


class Calls:
    """The calls running on one connection, by seq, and the bytes they hold.

    Each running call is charged the memory its request was charged when decoded
    (``charged``, in bytes) until its handler has ended. A result that arrives while
    the connection has no room for more reply bytes (``room()`` is False) is parked
    as it is, not encoded, so a peer that does not read our replies gets no copies of
    them made; ``unpark()`` encodes and sends parked results once there is room.

    Args:
        queue: adds a reply frame to the batch written at the end of this read.
        reply: adds a reply frame and makes sure it is written soon.
        submit: runs a job on a worker thread.
        stopping: whether the server is stopping (cancelled calls then answer Unavailable).
        ended: called after a running call ended, so held requests can start.
        room: whether the connection's budget has room for another reply.
        interceptors: the server's interceptors, outermost first.
        inline_chain: whether every interceptor awaits nothing but ``proceed()``.

    Every handler runs with its ``CallContext`` as ``geerpc.current_call()``. The
    reply metadata it sets goes back only when ``metadata_ok`` (the client agreed
    to metadata in its Option).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, queue: Callable[[bytes], None],
                 reply: Callable[[bytes], None], submit: Callable[[Job], None],
                 stopping: Callable[[], bool], ended: Callable[[], None], room: Callable[[], bool],
                 frame_limit: int, handle_timeout: float | None,
                 interceptors: tuple[ServerInterceptor, ...] = (), inline_chain: bool = False,
                 paused: Callable[[], bool] = lambda: False) -> None:
        self._loop = loop
        self._queue, self._reply, self._submit = queue, reply, submit
        self._stopping, self._ended, self._room, self._paused = stopping, ended, room, paused
        #: seq -> the window of each open stream (``streaming``), also in ``running``
        self.streams: dict[int, StreamWindow] = {}
        #: seq -> the call's task or worker job; the connection reads it for counts
        self.running: dict[int, asyncio.Task[None] | _SyncCall] = {}
        self._running = self.running
        self._cancelled: set[asyncio.Task[None]] = set()  # cancelled tasks not yet ended
        self.charged = 0  # bytes charged for running calls, and cancelled tasks not yet ended
        #: finished calls whose results wait for room: (seq, method, result, start, reply metadata);
        #: None until the first is parked (an empty deque is a 760-byte block from malloc's heap,
        #: which every connection would take)
        self.parked: collections.deque[_Parked] | None = None
        self.frame_limit = frame_limit  # lowered to the client's own limit if smaller
        self.handle_timeout = handle_timeout  # lowered to the client's HandleTimeout if smaller
        self._interceptors = interceptors
        #: whether an inline handler still runs inline: no interceptor, or none that may suspend
        self.inline_ok = not interceptors or inline_chain
        self.metadata_ok = False  # set once the client's Option says it takes reply metadata
        self.peer = "unix"  # the client's address, for CallContext.peer
        self.peer_certificate: dict[str, Any] | None = None  # the client's, over mutual TLS

    def seqs(self) -> list[int]:
        return list(self._running)

    def _timed_out(self, message: p.Request, method: Method) -> bytes:
        """The TIMEOUT reply, naming the time the call was given."""
        return timeout_reply(message.seq, method, budget(message.timeout, self.handle_timeout) or 0.0)

    def _sent_metadata(self, call: CallContext) -> dict[str, str | bytes] | None:
        """The reply metadata the handler set, when the client takes it."""
        metadata = call._reply_metadata
        return metadata if metadata and self.metadata_ok else None

    def start(self, message: p.Request, method: Method, deadline: float | None, cost: int = 0) -> None:
        """Run a call. ``cost`` is what its request was charged; it is held until the handler ends."""
        seq, args, kwargs = message.seq, message.args, message.kwargs
        start = perf_counter()
        call = CallContext(message.service_method, message.metadata, deadline, self.peer, args, kwargs,
                           self.peer_certificate)
        if method.inline and self.inline_ok:
            # Cannot suspend: runs to the end now, needs no slot and no task.
            context = contextvars.copy_context()
            if self._interceptors:
                chain = self._chain(method, call, args, kwargs)
                try:
                    yielded = context.run(_first_step, call, chain)
                except StopIteration as stop:
                    self._answer(seq, method, call, stop.value, start)
                except BaseException as exc:  # noqa: BLE001 - an interceptor must never take the server down
                    self._fail(seq, method, call, exc, start)
                else:  # it suspended after all: carry on in a task, where it stopped
                    self._start_task(self._run(message, method, deadline, start, call, Resume(chain, yielded)),
                                     seq, cost, context)
                return
            try:
                result = context.run(run_inline, call, method, args, kwargs)
            except BaseException as exc:  # noqa: BLE001 - a handler must never take the server down
                self._fail(seq, method, call, exc, start)
            else:
                self._answer(seq, method, call, result, start)
            return
        if method.is_async or self._interceptors:  # _run checks the deadline once the task runs
            self._start_task(self._run(message, method, deadline, start, call, None), seq, cost, None)
            return
        if deadline is not None and deadline <= self._loop.time():  # ran out while held
            self._queue(self._timed_out(message, method))
            method.record(0.0, _TIMEOUT)
            return
        job = _SyncCall(method.func, args, kwargs, self._sync_done, _in_context(call))
        job.seq, job.method, job.timer, job.start, job.cost, job.call = seq, method, None, start, cost, call
        if deadline is not None:
            job.timer = self._loop.call_at(deadline, self._sync_timeout, job, message)
        self._running[seq] = job
        self.charged += cost
        self._submit(job)

    def start_stream(self, message: p.StreamOpen, method: Method, deadline: float | None, cost: int = 0) -> None:
        """Run a stream: a task that sends the generator's items within the client's window."""
        request = message.request
        call = CallContext(request.service_method, request.metadata, deadline, self.peer, request.args,
                           request.kwargs, self.peer_certificate, streaming=True)
        window = StreamWindow(self._loop, request.seq, message.items, message.bytes)
        self.streams[request.seq] = window
        self._start_task(self._run(request, method, deadline, perf_counter(), call, None, window),
                         request.seq, cost, None)

    def credit(self, seq: int, items: int, bytes_: int) -> None:
        """The client consumed items of stream ``seq``; a credit for no open stream is ignored."""
        window = self.streams.get(seq)
        if window is not None:
            window.grant(items, bytes_)

    def wake_streams(self) -> None:
        """The peer reads again: streams waiting for that look again."""
        for window in self.streams.values():
            window.wake()

    def _answer(self, seq: int, method: Method, call: CallContext, result: Any, start: float) -> None:
        """Queue the reply of a call that ended inline."""
        frame, code = result_reply(seq, method, result, self.frame_limit, self._sent_metadata(call))
        self._queue(frame)
        method.record(perf_counter() - start, code, len(frame))

    def _fail(self, seq: int, method: Method, call: CallContext, exc: BaseException, start: float) -> None:
        frame, code = failure_reply(seq, method, call.args, call.kwargs, exc, self.frame_limit,
                                    metadata=self._sent_metadata(call))
        self._queue(frame)
        method.record(perf_counter() - start, code)

    def _start_task(self, coroutine: Coroutine[Any, Any, None], seq: int, cost: int,
                    context: contextvars.Context | None) -> None:
        if _EAGER:
            task = asyncio.Task(coroutine, loop=self._loop, eager_start=True,  # type: ignore[call-arg]
                                context=context)
            if task.done():
                return
        else:
            task = self._loop.create_task(coroutine, context=context)
        self._running[seq] = task
        self.charged += cost
        # Cleaned up by a callback, not in _run: a task cancelled before its first
        # step (a Cancel in the same read as its Request) never runs _run at all.
        task.add_done_callback(functools.partial(self._task_done, seq, cost))

    def _chain(self, method: Method, call: CallContext, args: list[Any], kwargs: dict[str, Any],
               window: StreamWindow | None = None) -> Any:
        """The interceptors' coroutine, around the handler (for a stream: around all of it)."""
        func = method.func
        if window is not None:
            def handler() -> Any:
                return self._pump(window, method, call)
        elif method.is_async:
            def handler() -> Any:
                return func(*args, **kwargs)
        else:
            def handler() -> Any:
                return self._in_worker(method, args, kwargs, call)
        return server_chain(self._interceptors, call, handler)

    def _in_worker(self, method: Method, args: list[Any], kwargs: dict[str, Any],
                   call: CallContext) -> asyncio.Future[Any]:
        """Run a plain ``def`` handler on a worker thread (for interceptors to await).

        The interceptors stopped waiting (deadline, cancel): the result is dropped."""
        return on_worker(self._loop, self._submit, method.func, args, kwargs, _in_context(call))

    def _pump(self, window: StreamWindow, method: Method, call: CallContext) -> Coroutine[Any, Any, None]:
        context = None if method.streaming == ASYNC_STREAM else _in_context(call)
        return pump(window, method, call.args, call.kwargs, send=self._reply, paused=self._paused,
                    limit=self.frame_limit, submit=self._submit, context=context)

    async def _run(self, message: p.Request, method: Method, deadline: float | None, start: float,
                   call: CallContext, resumed: Resume | None, window: StreamWindow | None = None) -> None:
        seq, args, kwargs = message.seq, message.args, message.kwargs
        CURRENT.set(call)
        code: int | None = None  # set once answered; None: parked (recorded when sent)
        size = -1  # the result's reply frame, once sent
        awaitable: Awaitable[Any] | None = resumed
        try:
            if deadline is not None and deadline <= self._loop.time():
                # Checked here, not before the task was made: without an eager start
                # the deadline may pass before the task's first step, and a handler
                # must never start for a call answered TIMEOUT without running.
                if resumed is not None:
                    resumed.close()
                self._reply(self._timed_out(message, method))
                code = _TIMEOUT
                return
            if awaitable is None:
                if self._interceptors:
                    awaitable = self._chain(method, call, args, kwargs, window)
                elif window is not None:
                    awaitable = self._pump(window, method, call)
                else:
                    awaitable = method.func(*args, **kwargs)
            if deadline is None:
                result = await awaitable
            else:
                scope = asyncio.timeout_at(deadline)
                try:
                    async with scope:
                        result = await awaitable
                except TimeoutError:
                    if not scope.expired():
                        raise  # the handler's own TimeoutError, not our deadline
                    self._reply(self._timed_out(message, method))
                    code = _TIMEOUT
                    return
            del awaitable
            metadata = self._sent_metadata(call)
            if window is not None:  # the stream's end: a response with no result
                frame, code = result_reply(seq, method, None, self.frame_limit, metadata)
                self._reply(frame)
                return
            if self.parked or not self._room():
                self._park((seq, method, result, start, metadata))
                return
            frame, code = result_reply(seq, method, result, self.frame_limit, metadata)
            self._reply(frame)
            size = len(frame)
        except asyncio.CancelledError as exc:
            # No local here may refer to the task: the task keeps the CancelledError,
            # whose traceback keeps this frame, so a task in a local (or in the
            # timeout scope, which holds it) would make a cycle, and the arguments
            # would stay resident until the cyclic GC runs.
            if deadline is not None:
                scope = None
            awaitable = None
            if not _cancelled_by_someone():
                # Nobody cancelled this call: the handler raised CancelledError itself
                # (say, it awaited a future someone else cancelled). Answer it.
                frame, code = failure_reply(seq, method, args, kwargs, exc, self.frame_limit,
                                            metadata=self._sent_metadata(call))
                self._reply(frame)
                return
            code = CANCELLED
            if self._stopping():
                self._reply(stopped_reply(seq, method))
                code = _UNAVAILABLE
            raise
        except BaseException as exc:  # noqa: BLE001 - a handler must never take the server down
            frame, code = failure_reply(seq, method, args, kwargs, exc, self.frame_limit,
                                        metadata=self._sent_metadata(call))
            self._reply(frame)
        finally:
            if code is not None:
                method.record(perf_counter() - start, code, size)

    def _task_done(self, seq: int, cost: int, task: asyncio.Task[None]) -> None:
        self.charged -= cost  # the handler has ended: its arguments are free
        if self._running.get(seq) is task:
            del self._running[seq]
            if self.streams:
                self.streams.pop(seq, None)
            self._ended()
        else:  # cancelled by the client (or the connection lost): already out of the table
            self._cancelled.discard(task)

    def _sync_done(self, job: Job, ok: bool, value: Any) -> None:
        call = job
        assert isinstance(call, _SyncCall)
        if call.timer is not None:
            call.timer.cancel()
        del self._running[call.seq]
        self.charged -= call.cost
        metadata = self._sent_metadata(call.call)
        if ok:
            if self.parked or not self._room():
                self._park((call.seq, call.method, value, call.start, metadata))
                self._ended()
                return
            frame, code = result_reply(call.seq, call.method, value, self.frame_limit, metadata)
            self._reply(frame)
            call.method.record(perf_counter() - call.start, code, len(frame))
        else:
            frame, code = failure_reply(call.seq, call.method, call.args, call.kwargs, value, self.frame_limit,
                                        metadata=metadata)
            self._reply(frame)
            call.method.record(perf_counter() - call.start, code)
        self._ended()

    def _sync_timeout(self, call: _SyncCall, message: p.Request) -> None:
        # A thread cannot be stopped: the handler runs on, and its result is dropped.
        call.abandoned = True
        call.timer = None  # a handle that has run keeps its arguments (this call): a cycle
        del self._running[call.seq]
        # The thread may still hold the arguments, but nothing else will: uncharged.
        self.charged -= call.cost
        self._reply(self._timed_out(message, call.method))
        call.method.record(perf_counter() - call.start, _TIMEOUT)
        self._ended()

    def cancel(self, seq: int, reason: str) -> None:
        call = self._running.get(seq)
        if call is None:
            return
        if isinstance(call, asyncio.Task):
            call.cancel(reason)  # _run replies (when the server is stopping)
            if reason != STOPPING:
                if self.streams:
                    self.streams.pop(seq, None)
                # The seq and the slot are free at once, as for a worker thread's call:
                # the client may reuse the seq before the task has ended. The set keeps
                # the task referenced until it does, and its cost stays charged.
                del self._running[seq]
                self._cancelled.add(call)
                self._ended()
            return
        call.abandoned = True
        if call.timer is not None:
            call.timer.cancel()
        del self._running[seq]
        self.charged -= call.cost
        if reason == STOPPING:
            self._reply(stopped_reply(seq, call.method))
        self._ended()

    def unpark(self, force: bool = False) -> None:
        """Encode and send parked results while there is room (all of them if ``force``)."""
        parked = self.parked
        while parked and (force or self._room()):
            seq, method, result, start, metadata = parked.popleft()
            frame, code = result_reply(seq, method, result, self.frame_limit, metadata)
            self._reply(frame)
            method.record(perf_counter() - start, code, len(frame))

    def _park(self, parked: _Parked) -> None:
        if self.parked is None:
            self.parked = collections.deque()
        self.parked.append(parked)

    def forget_parked(self) -> None:
        """The connection is gone: parked results have nobody to go to."""
        self.parked = None

    def let_go(self) -> None:
        """The connection is gone and nothing of it runs: drop the callbacks that refer
        back to it, so that it is freed when its last reference goes rather than at the
        next full collection (closed connections are otherwise cycles, and a busy
        server would hold thousands of them, with their buffers, between collections)."""
        self._ended, self._room = _nothing, _yes
