"""The Client: one connection, many calls in flight, matched by seq.

``_ClientConnection`` is the thin transport (an ``asyncio.Protocol`` feeding the
sans-IO decoders); ``Client`` holds the public API. The pending-call table maps seq
to a future. A call that times out or is cancelled removes its entry and tells the
server to cancel the handler; a late reply for a seq no longer pending is read and
dropped. When the connection goes, every pending future fails at once with
ConnectionClosed (GeeRPC's ``terminateCalls``), never at its timeout.
"""

from __future__ import annotations

import asyncio
import os
import socket
from types import TracebackType
from typing import Any, cast

from . import http
from . import protocol as p
from .address import parse_address
from .errors import (
    CallTimeout,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    GeeRPCError,
    InvalidArguments,
    MethodNotFound,
    ProtocolError,
    RemoteError,
    ServiceNotFound,
    Unavailable,
)
from .tcp import enable_keepalive

__all__ = ["Client", "dial"]

_ERROR_TYPES: dict[str, type[RemoteError]] = {
    "ServiceNotFound": ServiceNotFound,
    "MethodNotFound": MethodNotFound,
    "InvalidArguments": InvalidArguments,
    "Unavailable": Unavailable,
}
_WRITE_HIGH_WATER = 1024 * 1024
_OWN_CODES = (p.ErrorCode.NOT_FOUND, p.ErrorCode.INVALID_ARGUMENT, p.ErrorCode.UNAVAILABLE)


def _remote_error(code: int, type_name: str, message: str) -> GeeRPCError:
    if code == p.ErrorCode.TIMEOUT:
        return CallTimeout(message)
    cls = _ERROR_TYPES.get(type_name, RemoteError) if code in _OWN_CODES else RemoteError
    return cls(type_name, message)


class _ClientConnection(asyncio.BufferedProtocol):
    def __init__(self, address: str, max_frame_size: int, option: bytes, via_http: bool) -> None:
        self.address = address
        self._option_line = option
        # http@ addresses: CONNECT first, and the Option only once the switch is
        # confirmed (GeeRPC's Go server drops bytes sent behind the CONNECT).
        self._http = http.HeadReader(check_request=False) if via_http else None
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.handshake: asyncio.Future[p.Option] = self.loop.create_future()
        self.closed: asyncio.Future[None] = self.loop.create_future()
        self.error: ConnectionClosed | None = None  # set once the connection is unusable
        self.writable = asyncio.Event()
        self.writable.set()
        self._option: p.OptionReader | None = p.OptionReader()
        self._frames = p.FrameDecoder(max_frame_size)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # cast, not isinstance: uvloop's transports do not subclass asyncio.Transport
        self.transport = transport = cast(asyncio.Transport, transport)
        enable_keepalive(transport)
        # asyncio's default high-water mark (64 KiB) is below one 64 KiB request, so
        # every large call would wait for a drain; wait only when a real backlog builds.
        transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        transport.write(http.connect_request() if self._http is not None else self._option_line)

    # asyncio.BufferedProtocol: the transport reads straight into the frame decoder's
    # buffer, so a read costs no allocation (large replies otherwise cost an mmap each).
    def get_buffer(self, sizehint: int) -> memoryview:
        return self._frames.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        self._frames.buffer_updated(nbytes)
        if self._http is not None or self._option is not None:
            self._handshake(self._frames.take_all())
        else:
            self._take_replies()

    def _handshake(self, data: bytes) -> None:
        if self._http is not None:
            try:
                head, data = self._http.feed(data)
                if head is None:
                    return
                status, reason = http.parse_response_status(head)
            except ProtocolError as exc:
                self._fail_handshake(ConnectError(f"{self.address}: bad answer to CONNECT ({exc})"))
                return
            if status != 200:
                self._fail_handshake(ConnectError(f"{self.address} answered CONNECT with {status} {reason}"))
                return
            self._http = None
            assert self.transport is not None
            self.transport.write(self._option_line)
            if not data:
                return
        if self._option is not None:
            try:
                line, data = self._option.feed(data)
                if line is None:
                    return
                option = p.decode_option(line)
            except ProtocolError as exc:
                self._fail_handshake(ConnectError(f"{self.address}: not a geerpc server ({exc})"))
                return
            self._option = None
            if option.error is not None:
                self._fail_handshake(ConnectError(f"{self.address} refused the connection: {option.error}"))
                return
            if not self.handshake.done():
                self.handshake.set_result(option)
            if not data:
                return
        self._frames.feed(data)
        self._take_replies()

    def _take_replies(self) -> None:
        frames = self._frames
        pending = self.pending
        try:
            while (payload := frames.next_frame()) is not None:
                try:
                    seq, error, result = p.decode_response(payload)
                except p.BadResponse as bad:  # framed and numbered, but its value won't decode
                    seq, error, result = bad.seq, (p.ErrorCode.INTERNAL, "SerializationError", str(bad)), None
                future = pending.pop(seq, None)
                if future is None or future.done():
                    continue  # a late reply to a call that timed out or was cancelled
                if error is None:
                    future.set_result(result)
                else:
                    future.set_exception(_remote_error(*error))
        except ProtocolError as exc:
            self.lose(ConnectionClosed(f"{self.address} broke the protocol: {exc}"), exc)
            if self.transport is not None:
                self.transport.abort()

    def _fail_handshake(self, exc: GeeRPCError) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(exc)
            self.handshake.exception()  # mark retrieved: dial() may already have given up
        if self.transport is not None:
            self.transport.abort()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lose(ConnectionClosed(f"connection to {self.address} lost" + (f": {exc}" if exc else "")), exc)
        if not self.handshake.done():
            self.handshake.set_exception(ConnectError(f"{self.address} closed the connection during the handshake"))
            self.handshake.exception()  # retrieved here: dial() may already have given up
        self.writable.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def lose(self, error: ConnectionClosed, cause: BaseException | None = None) -> None:
        """Mark the connection unusable and fail every pending call with ``error``."""
        if self.error is None:
            error.__cause__ = cause
            self.error = error
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(self.error)

    def expire(self, seq: int, service_method: str, timeout: float) -> None:
        future = self.pending.pop(seq, None)
        if future is not None and not future.done():
            future.set_exception(CallTimeout(f"{service_method} timed out after {timeout:g} s"))
            self.send_cancel(seq)

    def send_cancel(self, seq: int) -> None:
        if self.error is None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(p.encode_cancel(seq))


class Client:
    """A connection to one server. Make one with ``await geerpc.dial(address)``.

    Safe for many concurrent ``call()``s from tasks of one event loop. Use it as an
    async context manager, or call ``close()``.
    """

    def __init__(self, connection: _ClientConnection, option: p.Option) -> None:
        self._conn = connection
        self._seq = 0
        self.address = connection.address
        #: the largest frame this client sends: the server's stated limit when given
        self.max_frame_size = option.max_frame_size or p.DEFAULT_MAX_FRAME_SIZE

    @property
    def closed(self) -> bool:
        """True once the connection is closed or lost: calls then raise ConnectionClosed."""
        return self._conn.error is not None

    async def call(self, service_method: str, /, *args: Any, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call ``"Service.method"`` with ``args``/``kwargs`` and return its result.

        ``timeout`` (seconds) bounds the whole call and travels to the server, which
        stops the handler when nobody waits any more. (A remote keyword argument
        named ``timeout`` therefore cannot be passed here.)

        Raises:
            CallTimeout: no reply in time, or the server enforced a deadline.
            RemoteError: the server could not run the call or the handler raised
                (ServiceNotFound, MethodNotFound, InvalidArguments, Unavailable are
                subclasses).
            ConnectionClosed: the connection is gone (the call may have run).
            TypeError: the arguments cannot be encoded with msgpack.
            ValueError: the request is larger than the frame limit.
        """
        conn = self._conn
        if conn.error is not None:
            raise conn.error
        if timeout is not None and not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds or None")
        if not conn.writable.is_set():
            timeout = await self._wait_writable(service_method, timeout)
        self._seq = seq = self._seq + 1
        try:
            data = p.encode_request(seq, service_method, args, kwargs, timeout)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"arguments of {service_method!r} cannot be encoded: {exc}") from exc
        if len(data) - 4 > self.max_frame_size:
            raise ValueError(f"request of {len(data) - 4} bytes exceeds the {self.max_frame_size}-byte frame limit")
        future: asyncio.Future[Any] = conn.loop.create_future()
        conn.pending[seq] = future
        assert conn.transport is not None
        conn.transport.write(data)
        timer = None if timeout is None else conn.loop.call_later(timeout, conn.expire, seq, service_method, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            if conn.pending.pop(seq, None) is not None:
                conn.send_cancel(seq)
            raise
        finally:
            if timer is not None:
                timer.cancel()

    async def _wait_writable(self, service_method: str, timeout: float | None) -> float | None:
        """The server is not reading: wait, within the call's timeout, before writing more.

        Returns the time left of ``timeout``. Raises CallTimeout, or ConnectionClosed
        if the connection goes meanwhile.
        """
        conn = self._conn
        loop = conn.loop
        start = loop.time()
        try:
            async with asyncio.timeout(timeout):
                while not conn.writable.is_set():
                    await conn.writable.wait()
        except TimeoutError:
            raise CallTimeout(f"{service_method} timed out after {timeout:g} s: the server is not "
                              "reading its connection") from None
        if conn.error is not None:
            raise conn.error
        if timeout is None:
            return None
        left = timeout - (loop.time() - start)
        if left <= 0:
            raise CallTimeout(f"{service_method} timed out after {timeout:g} s")
        return left

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionClosed. Idempotent."""
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
    connect_timeout: float = 10.0,
    handle_timeout: float | None = None,
    max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE,
) -> Client:
    """Connect to a server at ``tcp@host:port``, ``unix@/path`` or ``http@host:port``.

    ``http@`` dials the server's port and switches with ``CONNECT /_geerpc_`` first,
    as GeeRPC does (a geerpc server answers both on one port).

    ``connect_timeout`` covers the dial and the handshake. ``handle_timeout`` asks
    the server to limit every handler to that many seconds (the smaller of it and
    the server's own applies).

    Raises ConnectError (bad address, refused, unreachable, not a geerpc server) or
    ConnectTimeout.
    """
    try:
        parsed = parse_address(address)
    except ValueError as exc:
        raise ConnectError(f"cannot dial {address!r}: {exc}") from None
    loop = asyncio.get_running_loop()
    option = p.Option(connect_timeout=int(connect_timeout * 1e9),
                      handle_timeout=0 if handle_timeout is None else int(handle_timeout * 1e9),
                      max_frame_size=max_frame_size)
    line = p.encode_option(option)
    factory = lambda: _ClientConnection(address, max_frame_size, line, parsed.scheme == "http")  # noqa: E731
    conn: _ClientConnection | None = None
    try:
        async with asyncio.timeout(connect_timeout):
            if parsed.scheme == "unix":
                _, conn = await loop.create_unix_connection(factory, parsed.path)
            else:
                _, conn = await loop.create_connection(factory, parsed.host, parsed.port)
            ack = await conn.handshake
    except TimeoutError:
        _abort(conn)
        raise ConnectTimeout(f"dialing {address} took longer than {connect_timeout:g} s") from None
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
    return Client(conn, ack)


def _abort(conn: _ClientConnection | None) -> None:
    if conn is not None and conn.transport is not None:
        conn.transport.abort()
