"""The Client: one connection, many calls in flight, matched by seq.

Three layers, each below the next:

- ``handshake.ClientHandshake`` (sans-IO): the CONNECT switch for ``http@`` and the
  Option exchange.
- ``pending.PendingCalls`` (sans-IO): numbers calls, builds request frames, matches
  replies, turns error replies into exceptions.
- ``_ClientConnection``, the thin ``asyncio.BufferedProtocol`` that feeds them bytes
  and resolves futures; ``Client`` holds the public API.

A call has one ``Deadline`` and one timer, at that deadline: it removes the call and
tells the server to cancel the handler; a late reply for a seq no longer pending is
read and dropped. When the connection goes, every pending future fails at once with
ConnectionClosed (GeeRPC's ``terminateCalls``), never at its timeout.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl as ssl_module
import weakref
from ssl import SSLContext
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, cast

from . import protocol as p
from . import tls
from .address import Address, is_local_host, parse_address
from .context import CURRENT, ClientCall, Reply, outgoing_deadline
from .deadline import Deadline, check_timeout
from .errors import (
    ConnectError, ConnectionClosed, ConnectTimeout, GeeRPCError, HandshakeError, NotSupported, ProtocolError,
    RemoteError,
)
from .handshake import ClientHandshake
from .interceptors import ClientInterceptor, check_interceptors, client_chain
from .metadata import outgoing
from .pending import PendingCalls
from .stream import DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_ITEMS, Stream
from .tcp import enable_keepalive
from .tls import closed_during_handshake

__all__ = ["Client", "dial"]

_WRITE_HIGH_WATER = 1024 * 1024


class _ClientConnection(asyncio.BufferedProtocol):
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

    def _item(self, payload: bytes) -> None:
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
        if not self.closed.done():
            self.closed.set_result(None)

    def lose(self, error: ConnectionClosed, cause: BaseException | None = None) -> None:
        """Mark the connection unusable and fail every pending call with ``error``."""
        if self.error is None:
            error.__cause__ = cause
            self.error = error
        for future in self.calls.fail_all():
            if not future.done():
                future.set_exception(self.error)

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


class Client:
    """A connection to one server. Make one with ``await geerpc.dial(address)``.

    Safe for many concurrent ``call()``s from tasks of one event loop. Use it as an
    async context manager, or call ``close()``.

    A server closes connections that stay idle (``Server(idle_timeout=...)``) or
    makes room by closing the longest idle one. When the connection was closed while
    no call was pending, so no call can have been lost, the next call dials again
    (within its own timeout); a connection lost with calls pending fails them with
    ConnectionClosed, and they are never resent.
    """

    def __init__(self, connection: _ClientConnection, option: p.Option,
                 redial: Callable[[], Awaitable[tuple[_ClientConnection, p.Option]]] | None = None,
                 interceptors: tuple[ClientInterceptor, ...] = (), token: str | None = None) -> None:
        self.address = connection.address
        self.interceptors = interceptors  # run around every call, outermost first
        # sent as metadata with every call: "authorization: Bearer <token>"
        self._authorization: dict[str, str | bytes] | None = (
            None if token is None else {"authorization": f"Bearer {token}"})
        self._adopt(connection, option)
        self._redial = redial
        self._redialing: asyncio.Future[_ClientConnection] | None = None
        self._closed_by_user = False

    @property
    def max_frame_size(self) -> int:
        """The largest frame this client sends: the server's stated limit when given."""
        return self._conn.calls.max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._conn.calls.max_frame_size = value

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost: calls then raise ConnectionClosed."""
        return self._conn.error is not None

    @property
    def pending(self) -> int:
        """Calls sent on this connection that await their reply."""
        return len(self._conn.calls)

    async def call(self, service_method: str, /, *args: Any, timeout: float | None = None,
                   metadata: Mapping[str, str | bytes] | None = None, **kwargs: Any) -> Any:
        """Call ``"Service.method"`` with ``args``/``kwargs`` and return its result.

        ``timeout`` (seconds) bounds the whole call and travels to the server, which
        stops the handler when nobody waits any more. Inside a handler, a call
        without a timeout gets the handler's time left, and one with a timeout the
        smaller of the two. ``metadata`` (str keys, str or bytes values; see
        ``geerpc.metadata``) travels with the call. (Remote keyword arguments named
        ``timeout`` or ``metadata`` therefore cannot be passed here: use ``invoke``.)

        Raises:
            CallTimeout: no reply in time, or the server enforced a deadline, or the
                handler this call is made from has no time left.
            RemoteError: the server could not run the call or the handler raised
                (ServiceNotFound, MethodNotFound, InvalidArguments, Unavailable,
                Unauthenticated, PermissionDenied are subclasses).
            ConnectionClosed: the connection is gone (the call may have run).
            NotSupported: ``metadata`` for a server too old to take it.
            TypeError: the arguments cannot be encoded with msgpack, or ``timeout``
                is not a number (``deadline.check_timeout`` has the one rule).
            ValueError: the request is larger than the frame limit, ``timeout`` is
                zero, negative or NaN (infinity means no timeout), or ``metadata``
                breaks the rules.
        """
        loop = self._conn.loop
        deadline = None if timeout is None else Deadline.after(timeout, loop.time())
        if CURRENT.get(None) is not None:  # inside a handler: its deadline follows
            deadline = outgoing_deadline(deadline, loop.time(), service_method)
        if not self.interceptors:
            return await self.call_until(deadline, service_method, args, kwargs, metadata)
        return (await self.invoke_until(deadline, service_method, args, kwargs, metadata)).result

    async def invoke(self, service_method: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                     *, timeout: float | None = None, metadata: Mapping[str, str | bytes] | None = None) -> Reply:
        """``call()`` in full: the result and the reply's metadata, as a ``Reply``.

        The remote arguments are passed as they are, so they may be named
        ``timeout`` or ``metadata``. Raises what ``call()`` raises.
        """
        loop = self._conn.loop
        deadline = None if timeout is None else Deadline.after(timeout, loop.time())
        if CURRENT.get(None) is not None:
            deadline = outgoing_deadline(deadline, loop.time(), service_method)
        return await self.invoke_until(deadline, service_method, args, kwargs, metadata)

    async def invoke_until(self, deadline: Deadline | None, service_method: str, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None, metadata: Mapping[str, str | bytes] | None = None,
                           *, interceptors: tuple[ClientInterceptor, ...] | None = None) -> Reply:
        """``invoke()`` with a deadline made earlier, through ``interceptors`` (this
        client's own by default; an XClient passes its own)."""
        chain = self.interceptors if interceptors is None else interceptors
        if not chain:
            reply: Reply = await self.call_until(deadline, service_method, args, kwargs, metadata,
                                                 want_metadata=True)
            return reply
        loop = self._conn.loop
        given = None if deadline is None else deadline.left(loop.time())
        call = ClientCall(service_method, args, dict(kwargs) if kwargs else {}, dict(metadata) if metadata else {},
                          given, self.address)

        def send() -> Awaitable[Reply]:  # a plain function: one coroutine frame fewer per call
            # An interceptor may have changed the timeout: it then counts from now.
            until = deadline if call.timeout == given else Deadline.after(call.timeout, loop.time())
            return self.call_until(until, call.service_method, call.args, call.kwargs, call.metadata,
                                   want_metadata=True)

        reply = await client_chain(chain, call, send)
        if type(reply) is not Reply:
            raise TypeError(f"a client interceptor returned {type(reply).__name__}, not a geerpc.Reply "
                            f"(return what proceed() returned, or a Reply of your own)")
        return reply

    async def call_until(self, deadline: Deadline | None, service_method: str, args: Sequence[Any] = (),
                         kwargs: dict[str, Any] | None = None, metadata: Mapping[str, str | bytes] | None = None,
                         *, want_metadata: bool = False) -> Any:
        """``call()`` with a deadline made earlier (``Deadline.after(timeout, loop.time())``).

        Callers that spend part of a call's time elsewhere (discovery, dialing,
        failover) pass the same deadline on, instead of re-deriving a timeout.
        No interceptors run here. With ``want_metadata``, the result comes back as a
        ``Reply`` (with the reply's metadata, if any).
        """
        conn = self._conn
        if conn.error is not None:
            conn = await self._reconnect(conn, service_method, deadline)
        checked = None
        if self._authorization is not None:
            metadata = {**self._authorization, **metadata} if metadata else self._authorization
        if metadata:
            checked = outgoing(metadata)
            if not conn.metadata_ok:
                raise NotSupported(f"{self.address} does not take call metadata (a geerpc server older than "
                                   f"metadata): {service_method} was not sent")
        if not conn.writable.is_set():
            await self._wait_writable(service_method, deadline)
        future: asyncio.Future[Any] = conn.loop.create_future()
        now = 0.0 if deadline is None else conn.loop.time()
        seq, frame = conn.calls.add(service_method, args, kwargs if kwargs is not None else {}, deadline, now, future,
                                    checked, want_metadata)
        conn.send_request(frame)
        timer = None if deadline is None else conn.loop.call_at(deadline.at, conn.expire, seq)
        try:
            value = await future
        except asyncio.CancelledError:
            conn.cancel(seq)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if want_metadata and type(value) is not Reply:
            return Reply(value)
        return value

    def stream(self, service_method: str, /, *args: Any, timeout: float | None = None,
               metadata: Mapping[str, str | bytes] | None = None, window_items: int = DEFAULT_WINDOW_ITEMS,
               window_bytes: int = DEFAULT_WINDOW_BYTES, **kwargs: Any) -> Stream:
        """Call a generator method and iterate its items: ``async with client.stream(...) as items``.

        ``timeout`` bounds the whole stream (and follows the handler's deadline when
        made inside one, as for ``call()``). ``window_items`` (1 to 1024) and
        ``window_bytes`` (1 KiB to 4 MiB) are how far the server may run ahead of the
        consumer. Leaving the block, ``break``, ``aclose()`` or cancellation closes the
        server's generator. Iterating raises what ``call()`` raises, at the point in
        the stream where it happened; ``InvalidArguments`` for a method that does not
        stream, ``NotSupported`` for a server older than streams. (Remote keyword
        arguments with these names cannot be passed here.)
        """
        loop = self._conn.loop
        deadline = None if timeout is None else Deadline.after(timeout, loop.time())
        if CURRENT.get(None) is not None:
            deadline = outgoing_deadline(deadline, loop.time(), service_method)
        return Stream(self, service_method, args, kwargs, deadline, metadata, window_items, window_bytes,
                      self.interceptors)

    @property
    def authorization(self) -> dict[str, str | bytes] | None:
        """The metadata that carries this client's token, or None without one."""
        return self._authorization

    async def connection_for(self, service_method: str, deadline: Deadline | None) -> _ClientConnection:
        """The connection to send on: this one, or a new one if the server closed it while idle."""
        conn = self._conn
        if conn.error is not None:
            conn = await self._reconnect(conn, service_method, deadline)
        return conn

    async def wait_writable(self, service_method: str, deadline: Deadline | None) -> None:
        """Wait, within ``deadline``, until the server reads its connection again."""
        await self._wait_writable(service_method, deadline)

    async def _reconnect(self, lost: _ClientConnection, service_method: str,
                         deadline: Deadline | None) -> _ClientConnection:
        """Dial again for a connection the server closed while idle, or raise why not.

        Concurrent callers share one dial. Raises the lost connection's
        ConnectionClosed when it was not idle or this client was closed, else what
        dialing raises (ConnectError, ConnectTimeout), or CallTimeout at the deadline.
        """
        assert lost.error is not None
        if self._closed_by_user or self._redial is None or not lost.lost_idle:
            raise lost.error
        if self._redialing is None:
            self._redialing = redialing = asyncio.ensure_future(self._dial_again())
            # Retrieved here too: every caller may have given up at its deadline first.
            redialing.add_done_callback(lambda done: done.cancelled() or done.exception())
        scope = asyncio.timeout_at(None if deadline is None else deadline.at)
        try:
            async with scope:
                return await asyncio.shield(self._redialing)
        except TimeoutError:
            if not scope.expired():
                raise  # the dial's own ConnectTimeout
            assert deadline is not None
            raise deadline.expired_error(service_method, f"while dialing {self.address} again") from None

    async def _dial_again(self) -> _ClientConnection:
        assert self._redial is not None
        try:
            conn, ack = await self._redial()
        finally:
            self._redialing = None
        if self._closed_by_user:  # closed while dialing: the new connection goes too
            _abort(conn)
            raise ConnectionClosed(f"client for {self.address} closed")
        self._adopt(conn, ack)
        return conn

    def _adopt(self, conn: _ClientConnection, ack: p.Option) -> None:
        """Use ``conn``, sending frames within the limit the server's acknowledgement states."""
        conn.calls.max_frame_size = ack.max_frame_size or p.DEFAULT_MAX_FRAME_SIZE
        conn.metadata_ok = ack.metadata >= 1
        conn.streams_ok = ack.streams >= 1
        self._conn = conn

    async def _wait_writable(self, service_method: str, deadline: Deadline | None) -> None:
        """The server is not reading: wait, within the call's deadline, before writing more.

        Raises CallTimeout, or ConnectionClosed if the connection goes meanwhile.
        """
        conn = self._conn
        try:
            async with asyncio.timeout_at(None if deadline is None else deadline.at):
                while not conn.writable.is_set():
                    await conn.writable.wait()
        except TimeoutError:
            assert deadline is not None
            raise deadline.expired_error(service_method, "while the server is not reading its connection") from None
        if conn.error is not None:
            raise conn.error

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionClosed. Idempotent."""
        self._closed_by_user = True
        conn = self._conn
        conn.lose(ConnectionClosed(f"client for {self.address} closed"))
        if conn.transport is not None:
            conn.transport.close()
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(conn.closed)
            except TimeoutError:
                conn.transport.abort()
                await asyncio.shield(conn.closed)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<geerpc.Client {self.address}{' closed' if self.closed else ''}>"


async def dial(
    address: str,
    *,
    connect_timeout: float | None = 10.0,
    handle_timeout: float | None = None,
    max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE,
    keepalive: float | None = 10.0,
    keepalive_timeout: float = 10.0,
    interceptors: Sequence[ClientInterceptor] | None = None,
    ssl: SSLContext | None = None,
    token: str | None = None,
    insecure_token: bool = False,
) -> Client:
    """Connect to a server at ``tcp@host:port``, ``tls@host:port``, ``unix@/path`` or
    ``http@host:port``.

    ``tls@`` is TLS from the first byte, with ``ssl`` (an ``ssl.SSLContext``; None:
    ``ssl.create_default_context()``, which verifies the server's certificate and host
    name). For mutual TLS, load the client's certificate into it (``load_cert_chain``).

    ``token`` is sent with every call as ``authorization: Bearer <token>`` metadata (a
    server with ``auth=geerpc.BearerTokens(...)`` checks it). A token is never sent in
    clear to another host: over ``tcp@`` or ``http@`` to a host that is not loopback
    it raises ValueError before dialing, unless ``insecure_token=True``.

    ``http@`` dials the server's port and switches with ``CONNECT /_geeprc_`` first,
    as GeeRPC does (a geerpc server answers both on one port).

    ``connect_timeout`` covers the dial and the handshake. ``handle_timeout`` asks
    the server to limit every handler to that many seconds (the smaller of it and
    the server's own applies). Both take seconds, or None (or infinity) for no limit.

    ``keepalive``: while calls are pending and nothing has been received for that
    many seconds, the client pings the server (when the server said it answers
    pings); with no answer within ``keepalive_timeout`` the connection is taken for
    dead and its calls fail with ConnectionClosed. This catches a server that hangs
    with its socket open, which TCP does not notice. None turns it off.

    ``interceptors``: ``async`` callables ``(call, proceed)`` run around every call,
    outermost first; ``call`` is a ``ClientCall`` and ``proceed()`` returns the
    ``Reply`` (``geerpc.interceptors``).

    Raises ConnectError (bad address, refused, unreachable; HandshakeError for a
    server that took the connection but is not a geerpc server or refused us) or
    ConnectTimeout; TypeError or ValueError for a timeout that is not a positive
    number of seconds or None (``deadline.check_timeout``; ``keepalive_timeout``
    must be a finite number).
    """
    chain = check_interceptors(interceptors, "client")
    if token is not None and (not isinstance(token, str) or not token or not token.isprintable()
                              or len(token) > 4096):
        raise ValueError("token must be a non-empty printable str of at most 4096 characters")
    connect_seconds = check_timeout(connect_timeout)
    handle_seconds = check_timeout(handle_timeout)
    keepalive_seconds = check_timeout(keepalive)
    keepalive_timeout_seconds = check_timeout(keepalive_timeout)
    if keepalive_timeout_seconds is None:
        raise ValueError("keepalive_timeout must be a finite number of seconds")
    try:
        parsed = parse_address(address)
    except ValueError as exc:
        raise ConnectError(str(exc)) from None  # the message names the address
    context = None
    if parsed.scheme == "tls":
        context = tls.client_context(ssl)
    elif ssl is not None:
        raise ValueError(f"ssl= is for tls@ addresses, and {address} is not one (dial tls@host:port)")
    if (token is not None and context is None and not insecure_token
            and not (parsed.scheme == "unix" or is_local_host(parsed.host))):
        raise ValueError(f"refusing to send a token in clear to {address}: anyone on the path could read "
                         f"and replay it; dial tls@ (or pass insecure_token=True to send it anyway)")
    option = p.Option(connect_timeout=_nanoseconds(connect_seconds),
                      handle_timeout=_nanoseconds(handle_seconds),
                      max_frame_size=max_frame_size, keepalive=_nanoseconds(keepalive_seconds), metadata=1,
                      streams=1)

    def connect() -> Awaitable[tuple[_ClientConnection, p.Option]]:
        return _connect(address, parsed, option, connect_seconds, max_frame_size,
                        keepalive_seconds, keepalive_timeout_seconds, context)

    conn, ack = await connect()
    return Client(conn, ack, connect, chain, token)


async def _connect(address: str, parsed: Address, option: p.Option, connect_seconds: float | None,
                   max_frame_size: int, keepalive: float | None, keepalive_timeout: float,
                   context: SSLContext | None = None) -> tuple[_ClientConnection, p.Option]:
    """Dial and shake hands: the connection and the server's acknowledgement."""
    loop = asyncio.get_running_loop()

    def factory() -> _ClientConnection:
        handshake = ClientHandshake(address, option, via_http=parsed.scheme == "http")
        made = _ClientConnection(address, max_frame_size, handshake, keepalive, keepalive_timeout)
        made.tls = context is not None
        return made

    conn: _ClientConnection | None = None
    try:
        async with asyncio.timeout(connect_seconds):
            if parsed.scheme == "unix":
                _, conn = await loop.create_unix_connection(factory, parsed.path)
            elif context is not None:
                try:
                    _, conn = await loop.create_connection(factory, parsed.host, parsed.port, ssl=context,
                                                           server_hostname=parsed.host,
                                                           ssl_handshake_timeout=connect_seconds)
                except (ssl_module.SSLError, ConnectionResetError, BrokenPipeError, EOFError) as exc:
                    raise ConnectError(tls.client_failure(address, parsed.host, exc)) from exc
            else:
                _, conn = await loop.create_connection(factory, parsed.host, parsed.port)
            ack = await conn.ready
    except TimeoutError:
        _abort(conn)
        took = "timed out" if connect_seconds is None else f"took longer than {connect_seconds:g} s"
        raise ConnectTimeout(f"dialing {address} {took}") from None
    except ConnectError:
        # The handshake's own error (a ConnectError is an OSError too): it already says
        # what the server did, naming the address once, so it is not wrapped again.
        _abort(conn)
        raise
    except OSError as exc:
        _abort(conn)
        # asyncio words a refusal "Connect call failed (...)": say what the OS says;
        # name-resolution errors (negative errno) carry their own text
        if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
            reason = os.strerror(exc.errno)
        else:
            reason = exc.strerror or str(exc)
        raise ConnectError(f"cannot connect to {address}: {reason}") from exc
    except BaseException:
        _abort(conn)
        raise
    return conn, ack


def _nanoseconds(seconds: float | None) -> int:
    """An Option duration: 0 means none, so a positive one is at least 1 ns."""
    return 0 if seconds is None else max(1, int(seconds * 1e9))


def _abort(conn: _ClientConnection | None) -> None:
    if conn is not None and conn.transport is not None:
        conn.transport.abort()
