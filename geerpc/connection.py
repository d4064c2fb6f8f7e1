"""Server side of one connection: bytes from the socket to handler tasks and back.

A thin ``asyncio.Protocol``: it feeds the sans-IO decoders in ``protocol``, starts one
task per call, and writes replies. Design notes:

- Replies are collected and written once per read (and once per loop iteration for
  calls that finish later), so a read that carried 64 requests is usually answered
  by one ``write``: the biggest single win on the per-call path.
- Three ways to run a handler. An ``async def`` with no ``await`` cannot suspend, so
  it runs inline, in a copy of the context, and is answered before the read callback
  returns: a task and an extra loop iteration would cost more than the call (its
  ``asyncio.current_task()`` is None). Other coroutines get a task (an eager one
  on Python 3.12+). Plain ``def`` methods may block, so they run on worker threads.
- The first bytes (Option line, or an HTTP request first) go through the sans-IO
  ``handshake.ServerHandshake``; this class only carries out what it decides.
- Backpressure instead of rejection: at ``max_in_flight`` calls, or while the peer
  does not read our replies, we stop taking frames from the buffer and pause reading
  the socket; finishing calls resume it. Memory per connection stays at most one
  frame plus one socket read.
- A handler may raise anything, KeyboardInterrupt and SystemExit included: ``_run``
  catches it so it can never escape into the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import functools
import logging
import sys
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast

from . import http
from . import protocol as p
from .errors import ProtocolError
from .handshake import ServerHandshake
from .replies import failure_reply, result_reply, run_inline, stopped_reply, timeout_reply
from .service import Method
from .tcp import enable_keepalive
from .workers import Job

if TYPE_CHECKING:
    from .server import Server

__all__ = ["ServerConnection"]

log = logging.getLogger("geerpc.server")
_CLIENT_CANCELLED = "cancelled by the client"
_CONNECTION_LOST = "connection lost"
_STOPPING = "server stopping"
_EAGER = sys.version_info >= (3, 12)
_FLUSH_AT = 256 * 1024  # queued reply bytes that are written without waiting for the read's end
_HOLD_BYTES = 4 * 1024 * 1024  # request bytes held per connection beyond max_in_flight
_HOLD_MIN = 16  # requests held at least, whatever max_in_flight, so Cancels and EOF get through


class _SyncCall(Job):
    """A plain ``def`` call handed to the worker threads."""

    __slots__ = ("seq", "method", "timer", "start")
    seq: int
    method: Method
    timer: asyncio.TimerHandle | None
    start: float


class ServerConnection(asyncio.BufferedProtocol):
    def __init__(self, server: Server) -> None:
        self._server = server
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._handshake: ServerHandshake | None = ServerHandshake(lambda request: http.route(request, server))
        self._frames = p.FrameDecoder(server.max_frame_size)
        self._calls: dict[int, asyncio.Task[None] | _SyncCall] = {}
        # Requests received while max_in_flight calls run: started as calls finish.
        # Reading goes on meanwhile (so Cancels and EOF are still seen) until the hold
        # is full, then the socket is paused: that is the backpressure.
        self._held: collections.OrderedDict[int, tuple[p.Request, Method, int]] = collections.OrderedDict()
        self._held_bytes = 0
        self._lost = False
        self._out: list[bytes] = []
        self._out_size = 0
        self._frame_limit = server.max_frame_size  # lowered to the client's own limit if smaller
        self._flush_scheduled = False
        self._reading_paused = False
        self._writing_paused = False
        self._handle_timeout = server.handle_timeout
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # ------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport
        self._transport = transport = cast(asyncio.Transport, transport)
        server = self._server
        if len(server._connections) >= server.max_connections:
            log.warning("refusing connection: %d connections open", len(server._connections))
            transport.write(p.encode_option(p.Option(error="server has too many connections")))
            transport.close()
            return
        server._connections.add(self)
        enable_keepalive(transport)
        self._timer = self._loop.call_later(server.handshake_timeout, self._abort, "no Option in time")

    # asyncio.BufferedProtocol: the transport reads straight into the frame decoder's
    # buffer, so a read costs no allocation (large requests otherwise cost an mmap each).
    def get_buffer(self, sizehint: int) -> memoryview:
        return self._frames.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._last_read = self._loop.time()
        self._frames.buffer_updated(nbytes)
        if self._handshake is not None:
            rest = self._shake(self._frames.take_all())
            if not rest:
                return
            self._frames.feed(rest)
        self._take_frames()

    def eof_received(self) -> bool | None:
        # A client that closed its side is gone as far as RPC goes: returning None
        # closes the transport, and connection_lost cancels that connection's calls.
        return None

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._take_frames()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self._lost = True  # from here on nothing new starts
        self._server._connections.discard(self)
        self._held.clear()
        for seq in list(self._calls):
            self._cancel(seq, _CONNECTION_LOST)
        self._out.clear()
        self._out_size = 0
        if not self.closed.done():
            self.closed.set_result(None)
        self._server._check_drained()

    # ------------------------------------------------------------- handshake

    def _shake(self, data: bytes) -> bytes:
        """Feed the handshake; return what followed the Option (the first frames)."""
        assert self._handshake is not None and self._transport is not None
        step = self._handshake.feed(data)
        if step.write:
            self._transport.write(step.write)
        if step.close is not None:
            self._handshake = None
            self._cancel_timer()
            if step.protocol_error:
                self._server.protocol_errors += 1
            log.debug("closing connection: %s", step.close)
            if step.abort:
                self._transport.abort()
            else:
                self._transport.close()
            return b""
        if step.option is None:
            return b""
        self._handshake = None
        self._cancel_timer()
        option, server = step.option, self._server
        if server._stopping:
            self._transport.write(p.encode_option(p.Option(error="server is stopping")))
            self._transport.close()
            return b""
        if option.max_frame_size:
            self._frame_limit = min(self._frame_limit, max(option.max_frame_size, 1024))
        if option.handle_timeout:
            # The smaller of the client's and the server's handle timeout applies.
            client = option.handle_timeout / 1e9
            ours = self._handle_timeout
            self._handle_timeout = client if ours is None else min(client, ours)
        ack = p.Option(handle_timeout=option.handle_timeout, max_frame_size=server.max_frame_size)
        self._transport.write(p.encode_option(ack))
        if server.idle_timeout is not None:
            self._idle_timer = self._loop.call_later(server.idle_timeout, self._check_idle)
        return step.rest

    def _check_idle(self) -> None:
        """Close a connection that sent nothing for idle_timeout and has no call running."""
        idle_timeout = self._server.idle_timeout
        assert idle_timeout is not None and self._transport is not None
        quiet = self._loop.time() - self._last_read
        if self._calls or quiet < idle_timeout:
            self._idle_timer = self._loop.call_later(max(idle_timeout - quiet, 0.01) if not self._calls
                                                     else idle_timeout, self._check_idle)
            return
        log.debug("closing a connection idle for %.1f s", quiet)
        self._idle_timer = None
        self._flush()
        self._transport.close()

    def _abort(self, reason: str) -> None:
        """The peer broke the protocol: drop the connection without another word."""
        self._server.protocol_errors += 1
        log.debug("closing connection: %s", reason)
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------- requests

    def _take_frames(self) -> None:
        if self._lost:
            return
        server = self._server
        frames = self._frames
        limit = server.max_in_flight
        hold = max(limit, _HOLD_MIN)
        taken = 0
        try:
            while self._held and len(self._calls) < limit and not self._writing_paused:
                _, (request, method, size) = self._held.popitem(last=False)
                self._held_bytes -= size
                self._start(request, method)
            while not self._writing_paused and len(self._held) < hold and self._held_bytes < _HOLD_BYTES:
                payload = frames.next_frame()
                if payload is None:
                    break
                taken += 1
                self._handle(payload)
                if self._out_size > _FLUSH_AT:
                    self._flush()  # may call pause_writing(), which ends this loop
            else:
                self._pause_reading()
        except ProtocolError as exc:
            self._abort(str(exc))
            return
        if (self._reading_paused and not self._writing_paused and len(self._held) < hold
                and self._held_bytes < _HOLD_BYTES):
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        self._flush()
        # Each frame must arrive whole within frame_timeout of its first byte
        # (slow-loris): the clock restarts whenever a frame completes.
        if frames.pending and not self._reading_paused:
            if self._timer is None or taken:
                self._cancel_timer()
                self._timer = self._loop.call_later(server.frame_timeout, self._abort, "frame stalled")
        else:
            self._cancel_timer()

    def _handle(self, payload: bytes) -> None:
        try:
            message = p.decode_request(payload)
        except p.BadRequest as bad:
            self._queue(p.encode_error(bad.seq, bad.code, bad.type, bad.message))
            return
        if type(message) is p.Cancel:
            self._cancel(message.seq, _CLIENT_CANCELLED)
            return
        assert type(message) is p.Request
        seq = message.seq
        if seq in self._calls or seq in self._held:
            raise ProtocolError(f"seq {seq} is already in flight")
        server = self._server
        method = server._methods.get(message.service_method)
        if method is None:
            self._queue(server._not_found(seq, message.service_method))
            return
        if server._stopping:
            self._queue(p.encode_error(seq, p.ErrorCode.UNAVAILABLE, "Unavailable", "server is stopping"))
            return
        if method.inline or (len(self._calls) < server.max_in_flight and not self._held):
            self._start(message, method)
        else:
            self._held[seq] = (message, method, len(payload))
            self._held_bytes += len(payload)

    def _start(self, message: p.Request, method: Method) -> None:
        seq, args, kwargs = message.seq, message.args, message.kwargs
        start = perf_counter()
        if method.inline:  # cannot suspend: runs to the end now, needs no slot
            try:
                result = contextvars.copy_context().run(run_inline, method, args, kwargs)
            except BaseException as exc:  # noqa: BLE001 - a handler must never take the server down
                self._queue(failure_reply(seq, method, args, kwargs, exc, self._frame_limit))
                method.record(perf_counter() - start, False)
            else:
                self._queue(result_reply(seq, method, result, self._frame_limit))
                method.record(perf_counter() - start, True)
            return
        timeout = message.timeout
        if self._handle_timeout is not None and (timeout is None or self._handle_timeout < timeout):
            timeout = self._handle_timeout
        if method.is_async:
            coroutine = self._run(seq, method, args, kwargs, timeout, start)
            if _EAGER:
                task = asyncio.Task(coroutine, loop=self._loop, eager_start=True)  # type: ignore[call-arg]
                if task.done():
                    return
            else:
                task = self._loop.create_task(coroutine)
            self._calls[seq] = task
            # Cleaned up by a callback, not in _run: a task cancelled before its first
            # step (a Cancel in the same read as its Request) never runs _run at all.
            task.add_done_callback(functools.partial(self._task_done, seq))
            return
        call = _SyncCall(method.func, args, kwargs, self._sync_done)
        call.seq, call.method, call.timer, call.start = seq, method, None, start
        if timeout is not None:
            call.timer = self._loop.call_later(timeout, self._sync_timeout, call, timeout)
        self._calls[seq] = call
        self._server._workers.submit(call)

    async def _run(self, seq: int, method: Method, args: list[Any], kwargs: dict[str, Any],
                   timeout: float | None, start: float) -> None:
        ok = False
        try:
            if timeout is None:
                result = await method.func(*args, **kwargs)
            else:
                deadline = asyncio.timeout(timeout)
                try:
                    async with deadline:
                        result = await method.func(*args, **kwargs)
                except TimeoutError:
                    if not deadline.expired():
                        raise  # the handler's own TimeoutError, not our deadline
                    self._reply(timeout_reply(seq, method, timeout))
                    return
            self._reply(result_reply(seq, method, result, self._frame_limit))
            ok = True
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                # Nobody cancelled this call: the handler raised CancelledError itself
                # (say, it awaited a future someone else cancelled). Answer it.
                self._reply(failure_reply(seq, method, args, kwargs, exc, self._frame_limit))
                return
            if self._server._stopping:
                self._reply(stopped_reply(seq, method))
            raise
        except BaseException as exc:  # noqa: BLE001 - a handler must never take the server down
            self._reply(failure_reply(seq, method, args, kwargs, exc, self._frame_limit))
        finally:
            method.record(perf_counter() - start, ok)

    def _task_done(self, seq: int, task: asyncio.Task[None]) -> None:
        if self._calls.get(seq) is task:
            del self._calls[seq]
            self._call_ended()

    def _sync_done(self, job: Job, ok: bool, value: Any) -> None:
        call = job
        assert isinstance(call, _SyncCall)
        if call.timer is not None:
            call.timer.cancel()
        del self._calls[call.seq]
        if ok:
            self._reply(result_reply(call.seq, call.method, value, self._frame_limit))
        else:
            self._reply(failure_reply(call.seq, call.method, call.args, call.kwargs, value, self._frame_limit))
        call.method.record(perf_counter() - call.start, ok)
        self._call_ended()

    def _sync_timeout(self, call: _SyncCall, timeout: float) -> None:
        # A thread cannot be stopped: the handler runs on, and its result is dropped.
        call.abandoned = True
        del self._calls[call.seq]
        self._reply(timeout_reply(call.seq, call.method, timeout))
        call.method.record(perf_counter() - call.start, False)
        self._call_ended()

    def _cancel(self, seq: int, reason: str) -> None:
        held = self._held.pop(seq, None)
        if held is not None:  # never started: forget it (no reply: the caller gave up)
            self._held_bytes -= held[2]
            return
        call = self._calls.get(seq)
        if call is None:
            return
        if isinstance(call, asyncio.Task):
            call.cancel(reason)  # _run replies (when the server is stopping) and cleans up
            return
        call.abandoned = True
        if call.timer is not None:
            call.timer.cancel()
        del self._calls[seq]
        if reason == _STOPPING:
            self._reply(stopped_reply(seq, call.method))
        self._call_ended()

    def _call_ended(self) -> None:
        if self._held or self._reading_paused:
            self._take_frames()
        if not self._calls and self._server._stopping:
            self._server._check_drained()

    # ------------------------------------------------------------- replies

    def _queue(self, frame: bytes) -> None:
        self._out.append(frame)
        self._out_size += len(frame)

    def _reply(self, frame: bytes) -> None:
        self._queue(frame)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if self._out and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out = self._out
        if not out:
            return
        self._out = []
        self._out_size = 0
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    # ------------------------------------------------------------- helpers

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def in_flight(self) -> int:
        return len(self._calls) + len(self._held)

    def cancel_calls(self) -> None:
        for seq in list(self._held):  # never started: answer them Unavailable
            request, method, _ = self._held.pop(seq)
            self._reply(stopped_reply(seq, method))
        self._held_bytes = 0
        for seq in list(self._calls):
            self._cancel(seq, _STOPPING)

    def close(self) -> None:
        self._flush()
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
