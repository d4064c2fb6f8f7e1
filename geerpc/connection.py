"""Server side of one connection: bytes from the socket to calls and back.

A thin ``asyncio.BufferedProtocol``: it feeds the sans-IO decoders in ``protocol``,
hands requests to ``dispatch.Calls``, and writes replies. It knows its server only
through ``host.ConnectionHost``. Design notes:

- Replies go through ``outbox.Outbox``: written once per read (and once per loop
  iteration for calls that finish later), and not at all while the peer does not read.
- The first bytes (Option line, or an HTTP request first) go through the sans-IO
  ``handshake.ServerHandshake``; this class only carries out what it decides.
- A request's deadline starts when it arrives (the caller's time left, or the handle
  timeout), so time spent held at ``max_in_flight`` counts against it.
- Backpressure instead of rejection: at ``max_in_flight`` calls, or while the peer
  does not read our replies, we stop taking frames from the buffer and pause reading
  the socket; finishing calls resume it. Requests held meanwhile are bounded in count
  (so Cancels and EOF are still seen until the hold is full) and by the budget below.
- One byte budget per connection (``Limits.connection_budget``) covers what the
  connection holds: requests held and the arguments of running calls (each charged
  what ``decoding`` says its decoded form may cost) and reply bytes not yet sent
  (queued here or in the transport's buffer). At the budget no call starts and no
  frame is taken; a result that arrives then is parked as it is and encoded only once
  the peer has read enough. What a connection holds is therefore at most the budget,
  plus one request or one reply that crossed it, plus the results of its running
  handlers themselves.
- Large frames (over ``gate.LARGE_FRAME`` bytes) take turns at the server's
  ``gate.DecodeGate``: receiving one (growing the buffer, reading) and
  decoding it are timed and charged there, and a connection that finds the gate shut
  waits for its turn with reading paused, at most one large frame per turn. Nothing
  after a waiting frame is taken before it, so the order of frames holds. Small frames
  are never charged and never wait.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
import time
from collections.abc import Callable
from typing import NamedTuple, cast

from . import protocol as p
from .budget import HIGH_WATER, Budget
from .dispatch import STOPPING, Calls, budget
from .errors import ProtocolError
from .gate import LARGE_FRAME
from .handshake import ServerHandshake, agree
from .host import ConnectionHost
from .outbox import Outbox
from .replies import bad_request_reply, budget_reply, not_found_reply, stopped_reply, stopping_reply
from .service import Method
from .streaming import IS_A_STREAM, NOT_A_STREAM
from .tcp import enable_keepalive, release
from .tls import server_handshake

__all__ = ["ServerConnection"]

log = logging.getLogger("geerpc.server")
_CLIENT_CANCELLED = "cancelled by the client"
_CONNECTION_LOST = "connection lost"
_FLUSH_AT = 256 * 1024  # queued reply bytes that are written without waiting for the read's end
_HOLD_MIN = 16  # requests held at least, whatever max_in_flight, so Cancels and EOF get through


class _Held(NamedTuple):
    """A request taken off the wire while max_in_flight calls run."""

    request: p.Request | p.StreamOpen
    method: Method
    cost: int  # bytes charged for it (decoding.unpack)
    deadline: float | None  # loop time, set when the request arrived


class ServerConnection(asyncio.BufferedProtocol):
    # Slots, not a __dict__: with more than 30 attributes an instance's dict no longer
    # shares its keys, and its table (1.6 KB) would come from malloc's heap for every
    # connection, where a server with connections coming and going fragments it.
    __slots__ = ("_host", "_limits", "_lookup", "_loop", "_transport", "_raw", "_handshake", "_frames",
                 "_outbox", "_queue", "_reply", "_flush", "_budget", "_calls", "_running", "_held", "_lost",
                 "_reading_paused", "_timer", "_idle_timer", "_keepalive", "_still_here_timer", "_last_read",
                 "peer_ip", "_tls_task", "_closed_down", "_gate", "_gated", "_waiting_turn", "_charge_from",
                 "closed", "__weakref__")

    def __init__(self, host: ConnectionHost) -> None:
        self._host = host
        self._limits = limits = host.limits
        self._lookup = host.lookup
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._raw: asyncio.Transport | None = None  # the socket's own transport (beneath TLS, if any)
        self._handshake: ServerHandshake | None = ServerHandshake(host.http_answer)
        self._frames = p.FrameDecoder(limits.max_frame_size)
        self._outbox = outbox = Outbox(self._loop)
        self._queue = outbox.queue
        self._reply = outbox.reply
        self._flush = outbox.flush
        self._budget = budget = Budget(limits.connection_budget, limits.max_frame_size, outbox, self._frames)
        self._calls = Calls(self._loop, queue=outbox.queue, reply=outbox.reply, submit=host.submit,
                            stopping=lambda: host.stopping, ended=self._call_ended, room=budget.reply_room,
                            frame_limit=limits.max_frame_size, handle_timeout=limits.handle_timeout,
                            interceptors=host.interceptors, inline_chain=host.inline_interceptors,
                            paused=lambda: outbox.paused)
        budget.calls = self._calls
        self._running = self._calls.running  # seq -> running call, read for counts
        # Requests received while max_in_flight calls run: started as calls finish.
        # Reading goes on meanwhile (so Cancels and EOF are still seen) until the hold
        # is full, then the socket is paused: that is the backpressure.
        self._held: collections.OrderedDict[int, _Held] = collections.OrderedDict()
        self._lost = False
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._keepalive: float | None = None  # the client's ping interval, when it asked for keepalive
        self._still_here_timer: asyncio.TimerHandle | None = None
        self._last_read = self._loop.time()
        self.peer_ip: str | None = None  # None for a unix socket
        self._tls_task: asyncio.Task[None] | None = None  # the TLS handshake, while it runs
        self._closed_down = False  # connection_lost has run
        self._gate = host.decode_gate
        self._gated: bytes | memoryview | None = None  # a large frame taken, waiting for its turn
        self._waiting_turn = False  # at the decode gate: nothing is read or taken meanwhile
        self._charge_from: float | None = None  # start of the work being charged to the gate
        self.closed: asyncio.Future[None] = self._loop.create_future()

    # ------------------------------------------------------------- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport
        self._transport = self._outbox.transport = self._budget.transport = raw = cast(asyncio.Transport, transport)
        self._raw = raw
        peer = raw.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.peer_ip = str(peer[0])
            self._calls.peer = f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
        # The slot first, TLS second: a flood of handshakes is bounded by the caps.
        refusal = self._host.connection_opened(self)
        context = self._host.tls
        if context is None:
            self._begin(raw, refusal)
            return
        raw.pause_reading()  # before the loop starts reading: every byte goes to TLS
        self._tls_task = self._loop.create_task(self._secure(raw, context, refusal))

    async def _secure(self, raw: asyncio.Transport, context: ssl.SSLContext, refusal: str | None) -> None:
        """The TLS handshake, within the handshake timeout; then the Option as over TCP."""
        try:
            secured = await server_handshake(self._loop, raw, self, context, self._limits.handshake_timeout)
        except (OSError, TimeoutError, EOFError) as exc:  # ssl.SSLError is an OSError
            self._tls_task = None
            if self._closed_down:  # connection_lost came first and counted it
                return
            self._host.tls_failed(exc)
            log.debug("TLS handshake from %s failed: %s", self.peer_ip or "a unix socket", exc)
            raw.close()  # not abort: an alert the TLS layer queued (certificate required) still goes out
            self.connection_lost(None)  # the TLS layer may never tell us
            return
        self._tls_task = None
        certificate = secured.get_extra_info("peercert")
        self._calls.peer_certificate = certificate or None
        self._begin(secured, refusal)

    def _begin(self, transport: asyncio.Transport, refusal: str | None) -> None:
        self._transport = self._outbox.transport = self._budget.transport = transport
        if refusal is not None:
            self._lost = True
            transport.write(p.encode_option(p.Option(error=refusal)))
            transport.close()
            return
        if self._lost:  # closed (stop, eviction) while TLS was still shaking hands
            transport.abort()
            return
        enable_keepalive(transport)
        transport.set_write_buffer_limits(high=HIGH_WATER)  # what Budget counts on
        self._timer = self._loop.call_later(self._limits.handshake_timeout, self._abort, "no Option in time")
        if self._frames.pending:  # arrived during the TLS handshake
            self._received()

    # asyncio.BufferedProtocol: the transport reads straight into the frame decoder's
    # buffer, so a read costs no allocation (large requests otherwise cost an mmap each).
    def get_buffer(self, sizehint: int) -> memoryview:
        frames = self._frames
        if frames.pending <= LARGE_FRAME or frames.head_size() <= LARGE_FRAME:
            return frames.get_buffer(sizehint)
        started = time.perf_counter()  # a large frame coming in: growing the buffer is charged
        view = frames.get_buffer(sizehint)
        self._gate.charge(time.perf_counter() - started)
        return view

    def buffer_updated(self, nbytes: int) -> None:
        self._last_read = self._loop.time()
        frames = self._frames
        frames.buffer_updated(nbytes)
        if self._tls_task is not None:
            # Decrypted bytes can arrive before start_tls hands us its transport: they
            # wait in the buffer until _begin has it.
            return
        # Only a large frame's work is gated; one int comparison for every other read.
        if frames.pending > LARGE_FRAME and frames.head_size() > LARGE_FRAME and self._handshake is None:
            if self._waiting_turn:
                return
            if not self._gate.admit():
                self._wait_turn(None)
                return
            self._charged(self._take_frames)
            return
        self._received()

    def _received(self) -> None:
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
        self._outbox.paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._outbox.paused = False
        self._flush()
        if self._calls.streams:
            self._calls.wake_streams()
        self._take_frames()  # encodes parked results first, then starts and takes what waits

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closed_down:  # a failed TLS handshake may report it twice
            return
        self._closed_down = True
        if self._tls_task is not None:  # lost during the TLS handshake: a failed one
            task, self._tls_task = self._tls_task, None
            self._host.tls_failed(exc or ConnectionResetError("lost during the TLS handshake"))
            task.cancel()
        self._cancel_timer()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        if self._still_here_timer is not None:
            self._still_here_timer.cancel()
        self._lost = True  # from here on nothing new starts
        self._gated = None  # its turn at the gate, if it waits, does nothing
        self._waiting_turn = False
        self._host.connection_closed(self)
        self._held.clear()
        self._budget.held = 0
        self._calls.forget_parked()
        for seq in self._calls.seqs():
            self._cancel(seq, _CONNECTION_LOST)
        self._outbox.clear()
        self._calls.let_go()  # nothing of it runs now (a cancelled task ends on its own)
        if self._raw is not None:
            release(self._raw)
        # A TLS transport's protocol holds our methods: let go of it, or we are a cycle.
        self._transport = self._outbox.transport = self._budget.transport = self._raw = None
        if not self.closed.done():
            self.closed.set_result(None)

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
                self._host.protocol_error()
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
        if self._host.stopping:
            self._transport.write(p.encode_option(p.Option(error="server is stopping")))
            self._transport.close()
            return b""
        calls = self._calls
        agreed = agree(step.option, frame_limit=calls.frame_limit, handle_timeout=calls.handle_timeout,
                       max_frame_size=self._limits.max_frame_size)
        calls.frame_limit, calls.handle_timeout = agreed.frame_limit, agreed.handle_timeout
        calls.metadata_ok = agreed.metadata
        # While we do not read, we say "still here" at the client's ping interval (_still_here).
        self._keepalive = agreed.keepalive
        self._transport.write(p.encode_option(agreed.ack))
        if self._limits.idle_timeout is not None:
            self._idle_timer = self._loop.call_later(self._limits.idle_timeout, self._check_idle)
        return step.rest

    def _check_idle(self) -> None:
        """Close a connection that sent nothing for idle_timeout and has nothing in flight."""
        idle_timeout = self._limits.idle_timeout
        assert idle_timeout is not None and self._transport is not None
        quiet = self._loop.time() - self._last_read
        busy = not self.idle
        if busy or quiet < idle_timeout:
            wait = idle_timeout if busy else max(idle_timeout - quiet, 0.01)
            self._idle_timer = self._loop.call_later(wait, self._check_idle)
            return
        log.debug("closing a connection idle for %.1f s", quiet)
        self._idle_timer = None
        self._flush()
        self._transport.close()

    def _abort(self, reason: str) -> None:
        """The peer broke the protocol: drop the connection without another word."""
        self._host.protocol_error()
        log.debug("closing connection: %s", reason)
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------- requests

    def _take_frames(self, large: int = 0) -> None:
        """Start held calls, then take frames while the connection may; ``large``: large
        frames this turn at the decode gate has handled already."""
        if self._lost:
            return
        frames = self._frames
        limit = self._limits.max_in_flight
        hold = max(limit, _HOLD_MIN)
        taken = 0
        if self._calls.parked:
            self._calls.unpark()
        try:
            while self._held and self._may_start():
                _, held = self._held.popitem(last=False)
                self._budget.held -= held.cost
                cost = held.cost + self._budget.reserve(held.method)
                request = held.request
                if type(request) is p.StreamOpen:
                    cost = held.cost + self._stream_reserve(request, held.method)
                    self._calls.start_stream(request, held.method, held.deadline, cost)
                else:
                    assert type(request) is p.Request
                    self._calls.start(request, held.method, held.deadline, cost)
            while not self._outbox.paused and len(self._held) < hold and self._may_take():
                payload = frames.next_frame()
                if payload is None:
                    break
                taken += 1
                if len(payload) > LARGE_FRAME:
                    # One large frame a turn; outside a turn, only if the gate admits it.
                    if large or (self._charge_from is None and not self._gate.admit()):
                        self._wait_turn(payload)  # ends the loop: nothing is taken after it
                        continue
                    large += 1
                    self._charged(lambda: self._handle(payload))  # noqa: B023 (called at once)
                else:
                    self._handle(payload)
                if self._outbox.size > _FLUSH_AT:
                    self._flush()  # may call pause_writing(), which ends this loop
            else:
                self._pause_reading()
        except ProtocolError as exc:
            self._abort(str(exc))
            return
        self._flush()  # first: what it writes no longer counts against the budget
        if (self._reading_paused and not self._outbox.paused and len(self._held) < hold
                and self._may_take()):
            self._reading_paused = False
            assert self._transport is not None
            self._transport.resume_reading()
        # Each frame must arrive whole within frame_timeout of its first byte
        # (slow-loris): the clock restarts whenever a frame completes.
        if frames.pending and not self._reading_paused:
            if self._timer is None or taken:
                self._cancel_timer()
                self._timer = self._loop.call_later(self._limits.frame_timeout, self._abort, "frame stalled")
        else:
            self._cancel_timer()

    def _wait_turn(self, payload: bytes | memoryview | None) -> None:
        """Wait at the decode gate, reading paused, with ``payload`` taken or the bytes still buffered."""
        self._gated = payload
        self._waiting_turn = True
        self._pause_reading()
        self._cancel_timer()  # waiting is not stalling: frame_timeout starts again after the turn
        self._gate.wait(self._turn)

    def _turn(self) -> None:
        """This connection's turn at the decode gate: one large frame, then carry on."""
        self._waiting_turn = False
        payload, self._gated = self._gated, None
        if self._lost:
            return
        self._charged(lambda: self._take_turn(payload))

    def _take_turn(self, payload: bytes | memoryview | None) -> None:
        if payload is not None:
            try:
                self._handle(payload)
            except ProtocolError as exc:
                self._abort(str(exc))
                return
        self._take_frames(large=1 if payload is not None else 0)

    def _charged(self, work: Callable[[], None]) -> None:
        """Do ``work``, its time charged to the decode gate (once, however nested)."""
        if self._charge_from is not None:
            work()
            return
        self._charge_from = started = time.perf_counter()
        try:
            work()
        finally:
            self._charge_from = None
            self._gate.charge(time.perf_counter() - started)

    def _handle(self, payload: bytes | memoryview) -> None:
        try:
            message, cost = p.decode_request_sized(payload, self._limits.max_elements)
        except p.BadRequest as bad:
            self._queue(bad_request_reply(bad))
            return
        if type(message) is p.Cancel:
            self._cancel(message.seq, _CLIENT_CANCELLED)
            return
        if type(message) is p.Ping:
            self._queue(p.encode_pong(message.id))
            return
        opened = None
        if type(message) is not p.Request:
            if type(message) is p.Credit:
                self._calls.credit(message.seq, message.items, message.bytes)
                return
            assert type(message) is p.StreamOpen
            opened, message = message, message.request
        seq = message.seq
        if seq in self._running or seq in self._held:
            raise ProtocolError(f"seq {seq} is already in flight")
        method = self._lookup(message.service_method)
        if method is None:
            self._queue(not_found_reply(seq, message.service_method, self._host.has_service))
            return
        if method.streaming or opened is not None:
            if self._wrong_kind(seq, method, opened is not None):
                return
        if self._host.stopping:
            self._queue(stopping_reply(seq))
            return
        if cost > self._budget.limit:  # could never start: refused rather than held for ever
            self._queue(budget_reply(seq, cost, self._budget.limit))
            return
        # The deadline starts when the request arrives: time held at the cap counts.
        deadline = None
        if message.timeout or self._calls.handle_timeout is not None:  # a timeout of 0 is none
            seconds = budget(message.timeout, self._calls.handle_timeout)
            deadline = None if seconds is None else self._loop.time() + seconds
        if opened is not None:
            if not self._held and self._may_start():
                self._calls.start_stream(opened, method, deadline, cost + self._stream_reserve(opened, method))
            else:
                self._held[seq] = _Held(opened, method, cost, deadline)
                self._budget.held += cost
            return
        if method.inline and self._calls.inline_ok:  # cannot suspend: runs to the end now, needs no slot
            self._calls.start(message, method, deadline)
            return
        if not self._held and self._may_start():
            self._calls.start(message, method, deadline, cost + self._budget.reserve(method))
        else:
            self._held[seq] = _Held(message, method, cost, deadline)
            self._budget.held += cost

    def _stream_reserve(self, opened: p.StreamOpen, method: Method) -> int:
        """What a stream reserves for its replies: no more than its window lets it send at once."""
        return min(self._budget.reserve(method), opened.bytes, p.MAX_WINDOW_BYTES)

    def _wrong_kind(self, seq: int, method: Method, opened: bool) -> bool:
        """Answer a generator method called with call(), or another with stream()."""
        if bool(method.streaming) == opened:
            return False
        text = NOT_A_STREAM if opened else IS_A_STREAM
        self._queue(p.encode_error(seq, p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments", text.format(method.name)))
        method.record(0.0, p.ErrorCode.INVALID_ARGUMENT)
        return True

    def _cancel(self, seq: int, reason: str) -> None:
        held = self._held.pop(seq, None)
        if held is not None:  # never started: forget it (no reply: the caller gave up)
            self._budget.held -= held.cost
            return
        self._calls.cancel(seq, reason)

    def _call_ended(self) -> None:
        if self._held or self._reading_paused or self._calls.parked:
            self._take_frames()
        if not self._running and not self._held and self._host.stopping:
            self._host.connection_quiet(self)

    # ------------------------------------------------------------- budget

    def _may_take(self) -> bool:
        """Whether to take (and read) another frame: room in the budget, or nothing else
        in hand, so that one request as large as the budget still gets through."""
        if self._waiting_turn:
            return False
        return self._budget.has_room() or not (self._running or self._held or self._outbox)

    def _may_start(self) -> bool:
        """Whether a call may start now: a slot, a peer that reads, room in the budget.

        With nothing running, a request within the budget always may, so one large call
        can run on a connection that holds nothing else.
        """
        running = len(self._running)
        return (running < self._limits.max_in_flight and not self._outbox.paused and not self._calls.parked
                and (not running or self._budget.has_room()))

    # ------------------------------------------------------------- helpers

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()
            if self._keepalive is not None and self._still_here_timer is None:
                self._still_here_timer = self._loop.call_later(self._keepalive / 2, self._still_here)

    def _still_here(self) -> None:
        """While we do not read, the client's pings wait unread: answer them unasked.

        A client with calls pending that hears nothing would take the server for dead;
        an unasked PONG (id 0) at half its ping interval tells it otherwise.
        """
        self._still_here_timer = None
        transport = self._transport
        if not self._reading_paused or self._lost or transport is None or transport.is_closing():
            return
        assert self._keepalive is not None
        transport.write(p.encode_pong(0))
        self._still_here_timer = self._loop.call_later(self._keepalive / 2, self._still_here)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @property
    def in_flight(self) -> int:
        """Calls running plus requests held at max_in_flight."""
        return len(self._running) + len(self._held)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def idle(self) -> bool:
        """Nothing in flight: no call running, held, parked or unsent (or no Option yet)."""
        if self._handshake is not None:
            return True
        transport = self._transport
        return not (self._running or self._held or self._calls.parked or self._outbox
                    or self._waiting_turn
                    or (transport is not None and transport.get_write_buffer_size()))

    @property
    def last_active(self) -> float:
        """Loop time of the last bytes received."""
        return self._last_read

    @property
    def bytes_held(self) -> int:
        """Bytes held against the connection's budget."""
        return self._budget.used()

    @property
    def parked(self) -> int:
        """Finished calls whose results wait for the peer to read."""
        parked = self._calls.parked
        return len(parked) if parked else 0

    def cancel_calls(self) -> None:
        self._calls.unpark(force=True)  # finished: their results go out whatever the budget
        for seq in list(self._held):  # never started: answer them Unavailable
            self._reply(stopped_reply(seq, self._held.pop(seq).method))
        self._budget.held = 0
        for seq in self._calls.seqs():
            self._cancel(seq, STOPPING)

    def close(self) -> None:
        self._flush(force=True)
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
