"""The client's side of one connection: a thin ``asyncio.BufferedProtocol``.

It feeds received bytes to the sans-IO ``handshake.ClientHandshake`` (until the Option
is acknowledged) and then to ``pending.PendingCalls``, which matches replies to calls;
it resolves their futures, hands a stream's ITEMs to its ``stream.Stream``, sends
keepalive pings, gathers the requests of one loop iteration into one write, and
fails every pending call at once when the connection goes. ``client.Client`` holds
the public API over it.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any, cast

from . import protocol as p
from .errors import ConnectionClosed, GeeRPCError, HandshakeError, ProtocolError, RemoteError
from .handshake import ClientHandshake
from .pending import PendingCalls
from .stream import Stream
from .tcp import beneath_tls, enable_keepalive, release
from .tls import closed_during_handshake

__all__ = ["ClientConnection"]

_WRITE_HIGH_WATER = 1024 * 1024


class ClientConnection(asyncio.BufferedProtocol):
    def __init__(self, address: str, max_frame_size: int, handshake: ClientHandshake,
                 keepalive: float | None = None, keepalive_timeout: float = 10.0) -> None:
        self.address = address
        self._keepalive = keepalive
        self._keepalive_timeout = keepalive_timeout
        self._keepalive_timer: asyncio.TimerHandle | None = None
        self._received = False  # bytes arrived since the keepalive check last looked
        self._pinged = False  # a ping is out and nothing has arrived since
        self._out: list[bytes] = []  # requests gathered in this loop iteration
        self._handshake: ClientHandshake | None = handshake
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._raw: asyncio.BaseTransport | None = None  # over TLS, the socket's transport beneath it
        self.calls: PendingCalls[asyncio.Future[Any]] = PendingCalls()
        self.ready: asyncio.Future[p.Option] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.error: ConnectionClosed | None = None  # set once the connection is unusable
        self.lost_idle = False  # the peer closed it while no call was pending
        self.metadata_ok = False  # the server said it takes call metadata
        self.streams_ok = False  # the server said it takes streams
        #: seq -> each open stream, fed its ITEMs; weak, so a stream dropped unclosed is collected
        self.streams: weakref.WeakValueDictionary[int, Stream] = weakref.WeakValueDictionary()
        self.tls = False  # the connection is TLS
        self.writable = asyncio.Event()
        self.writable.set()
        self._frames = p.FrameDecoder(max_frame_size)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport
        self.transport = transport = cast(asyncio.Transport, transport)
        self._raw = beneath_tls(transport) if self.tls else None  # released when lost
        enable_keepalive(transport)
        # asyncio's default high-water mark (64 KiB) is below one 64 KiB request, so
        # every large call would wait for a drain; wait only when a real backlog builds.
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        assert self._handshake is not None
        transport.write(self._handshake.start())

    # asyncio.BufferedProtocol: the transport reads straight into the frame decoder's
    # buffer, so a read costs no allocation (large replies otherwise cost an mmap each).
    def get_buffer(self, sizehint: int) -> memoryview:
        return self._frames.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._received = True
        self._frames.buffer_updated(nbytes)
        if self._handshake is not None:
            self._shake(self._frames.take_all())
        else:
            self._take_replies()

    def _shake(self, data: bytes) -> None:
        assert self._handshake is not None and self.transport is not None
        step = self._handshake.feed(data)
        if step.write:
            self.transport.write(step.write)
        if step.error is not None:
            self._fail_handshake(step.error)
            return
        if step.option is None:
            return
        self._handshake = None
        if self._keepalive is not None and step.option.keepalive:  # the server answers pings
            self._keepalive_timer = self.loop.call_later(self._keepalive, self._check_alive)
        if not self.ready.done():
            self.ready.set_result(step.option)
        if step.rest:
            self._frames.feed(step.rest)
            self._take_replies()

    def _take_replies(self) -> None:
        frames = self._frames
        resolve = self.calls.resolve
        pong, item = p.PONG_PREFIX, p.ITEM_PREFIX
        try:
            while (payload := frames.next_frame()) is not None:
                first = payload[0] if payload else 0
                if first != 0x94 and first != 0x95:  # responses (4 or 5-element arrays) skip this
                    head = payload[:2]
                    if head == pong:
                        p.decode_pong(payload)  # any bytes are a sign of life; a malformed pong is not
                        continue
                    if head == item:
                        self._item(payload)
                        continue
                outcome = resolve(payload)
                if outcome is None:
                    continue  # a late reply to a call that timed out or was cancelled
                future, result, error = outcome
                if future.done():
                    continue
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(error)
        except ProtocolError as exc:
            self.lose(ConnectionClosed(f"{self.address} broke the protocol: {exc}"), exc)
            if self.transport is not None:
                self.transport.abort()

    def _item(self, payload: bytes | memoryview) -> None:
        """A stream's ITEM: to its stream (one no longer open has it dropped)."""
        try:
            seq, value = p.decode_item(payload)
        except p.BadResponse as bad:  # the item would not decode: that stream fails
            outcome = self.calls.fail(bad.seq)
            if outcome is not None and not outcome.done():
                outcome.set_exception(RemoteError("SerializationError", str(bad)))
            return
        stream = self.streams.get(seq)
        if stream is not None:
            stream.deliver(value, len(payload))

    def _check_alive(self) -> None:
        """Every keepalive interval: with calls pending and nothing heard, ping; no
        answer within keepalive_timeout, and the connection is declared dead."""
        assert self._keepalive is not None
        self._keepalive_timer = None
        if self.error is not None or self.transport is None:
            return
        if self._received or not self.calls:
            self._received = self._pinged = False
            self._keepalive_timer = self.loop.call_later(self._keepalive, self._check_alive)
            return
        if not self._pinged:
            self._pinged = True
            self.transport.write(p.encode_ping(1))
            self._keepalive_timer = self.loop.call_later(self._keepalive_timeout, self._check_alive)
            return
        self.lose(ConnectionClosed(
            f"{self.address} did not answer a keepalive ping within {self._keepalive_timeout:g} s, "
            f"with {len(self.calls)} call(s) pending: the connection is taken for dead"))
        self.transport.abort()

    def _fail_handshake(self, exc: GeeRPCError) -> None:
        self._handshake = None
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()  # mark retrieved: dial() may already have given up
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._keepalive_timer is not None:
            self._keepalive_timer.cancel()
        self.lost_idle = self.error is None and self._handshake is None and not self.calls
        self.lose(ConnectionClosed(f"connection to {self.address} lost" + (f": {exc}" if exc else "")), exc)
        if not self.ready.done():
            why = closed_during_handshake(self.address, exc) if self.tls else None
            if why is None and self.tls:
                # A server that wants a client certificate (mutual TLS) and got none or a
                # bad one finishes TLS 1.3 with us, then drops the connection: asyncio does
                # not send its alert, so this is all we see.
                why = (f"{self.address} closed the connection right after the TLS handshake: it probably "
                       f"requires a client certificate (mutual TLS) and got none, or refused ours "
                       f"(load one with load_cert_chain()); or it is not a geerpc server")
            if why is None:
                why = (f"{self.address} closed the connection during the handshake: not a geerpc server, "
                       f"or it does not speak {p.CODEC_TYPE}")
                if not self.tls:
                    why += " (or it speaks TLS: dial tls@ instead)"
            self.ready.set_exception(HandshakeError(why))
            self.ready.exception()  # retrieved here: dial() may already have given up
        self.writable.set()
        if self.transport is not None:
            release(self.transport)
            # A TLS transport's protocol holds our methods: let go of it, or we are a cycle.
            self.transport = None
        if self._raw is not None:
            release(self._raw)
            self._raw = None
        if not self.closed.done():
            self.closed.set_result(None)

    def lose(self, error: ConnectionClosed, cause: BaseException | None = None) -> None:
        """Mark the connection unusable and fail every pending call with ``error``."""
        if self.error is None:
            error.__cause__ = cause
            self.error = error
        for future in self.calls.fail_all():
            if not future.done():
                future.set_exception(self.closed_error())

    def closed_error(self) -> ConnectionClosed:
        """A copy of the error the connection was lost with, to raise. The error itself
        is never raised: a raise adds its frames to the error's traceback, so one object
        raised by every later call would keep all their frames, and each raise through a
        frame that holds this connection would make a reference cycle."""
        assert self.error is not None
        copy = ConnectionClosed(*self.error.args)
        copy.__cause__ = self.error.__cause__
        return copy

    def expire(self, seq: int) -> None:
        expired = self.calls.expire(seq)
        if expired is not None:
            future, error, cancel = expired
            if not future.done():
                future.set_exception(error)
            self.send(cancel)

    def cancel(self, seq: int) -> None:
        cancel = self.calls.cancel(seq)
        if cancel is not None:
            self.send(cancel)

    def send(self, frame: bytes) -> None:
        """Write a frame after any gathered before it (Cancels and pings keep their order)."""
        if self._out:
            self._out.append(frame)
        elif self.error is None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def send_request(self, frame: bytes) -> None:
        """Write a request: at once when it is the only call pending, else gathered
        with the others made in this loop iteration into one write (one send for
        many calls in flight, not one each)."""
        if self._out:
            self._out.append(frame)
        elif len(self.calls) > 1:
            self._out.append(frame)
            self.loop.call_soon(self._flush)
        else:
            assert self.transport is not None
            self.transport.write(frame)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self.error is None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))
