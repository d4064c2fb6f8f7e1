"""The Client: one connection, many calls in flight, matched by seq.

Three layers, each below the next:

- ``handshake.ClientHandshake`` (sans-IO): the CONNECT switch for ``http@`` and the
  Option exchange.
- ``pending.PendingCalls`` (sans-IO): numbers calls, builds request frames, matches
  replies, turns error replies into exceptions.
- ``client_connection.ClientConnection``, the thin ``asyncio.BufferedProtocol`` that feeds them bytes
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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import Any

from . import protocol as p
from . import tls
from .address import Address, is_local_host, parse_address
from .client_connection import ClientConnection
from .context import CURRENT, ClientCall, Reply, outgoing_deadline
from .deadline import Deadline, check_timeout
from .errors import (
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    NotSupported,
)
from .handshake import ClientHandshake
from .interceptors import ClientInterceptor, check_interceptors, client_chain
from .metadata import outgoing
from .stream import DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_ITEMS, Stream

__all__ = ["Client", "dial"]


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

    def __init__(self, connection: ClientConnection, option: p.Option,
                 redial: Callable[[], Awaitable[tuple[ClientConnection, p.Option]]] | None = None,
                 interceptors: tuple[ClientInterceptor, ...] = (), token: str | None = None) -> None:
        self.address = connection.address
        self.interceptors = interceptors  # run around every call, outermost first
        # sent as metadata with every call: "authorization: Bearer <token>"
        self._authorization: dict[str, str | bytes] | None = (
            None if token is None else {"authorization": f"Bearer {token}"})
        self._adopt(connection, option)
        self._redial = redial
        self._redialing: asyncio.Future[ClientConnection] | None = None
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
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                conn.cancel(seq)
            # The error's traceback holds this frame, whose future holds the error: a
            # reference cycle (with the call's arguments) for every failed call, left for
            # the cyclic GC, unless the future goes first.
            del future
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

    async def connection_for(self, service_method: str, deadline: Deadline | None) -> ClientConnection:
        """The connection to send on: this one, or a new one if the server closed it while idle."""
        conn = self._conn
        if conn.error is not None:
            conn = await self._reconnect(conn, service_method, deadline)
        return conn

    async def wait_writable(self, service_method: str, deadline: Deadline | None) -> None:
        """Wait, within ``deadline``, until the server reads its connection again."""
        await self._wait_writable(service_method, deadline)

    async def _reconnect(self, lost: ClientConnection, service_method: str,
                         deadline: Deadline | None) -> ClientConnection:
        """Dial again for a connection the server closed while idle, or raise why not.

        Concurrent callers share one dial. Raises the lost connection's
        ConnectionClosed when it was not idle or this client was closed, else what
        dialing raises (ConnectError, ConnectTimeout), or CallTimeout at the deadline.
        """
        assert lost.error is not None
        if self._closed_by_user or self._redial is None or not lost.lost_idle:
            raise lost.closed_error()
        if self._redialing is None:
            # No local name for it: a failed dial holds its error, whose traceback holds
            # this frame, and the frame would hold the dial (a cycle).
            self._redialing = asyncio.ensure_future(self._dial_again())
            # Retrieved here too: every caller may have given up at its deadline first.
            self._redialing.add_done_callback(lambda done: done.cancelled() or done.exception())
        scope = asyncio.timeout_at(None if deadline is None else deadline.at)
        try:
            async with scope:
                return await asyncio.shield(self._redialing)
        except TimeoutError:
            if not scope.expired():
                raise  # the dial's own ConnectTimeout
            assert deadline is not None
            raise deadline.expired_error(service_method, f"while dialing {self.address} again") from None

    async def _dial_again(self) -> ClientConnection:
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

    def _adopt(self, conn: ClientConnection, ack: p.Option) -> None:
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
            raise conn.closed_error()

    async def close(self) -> None:
        """Close the connection; pending calls fail with ConnectionClosed. Idempotent."""
        self._closed_by_user = True
        conn = self._conn
        conn.lose(ConnectionClosed(f"client for {self.address} closed"))
        transport = conn.transport  # a local: connection_lost lets go of conn.transport
        if transport is not None:
            transport.close()
            try:
                async with asyncio.timeout(1.0):
                    await asyncio.shield(conn.closed)
            except TimeoutError:
                transport.abort()
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

    def connect() -> Awaitable[tuple[ClientConnection, p.Option]]:
        return _connect(address, parsed, option, connect_seconds, max_frame_size,
                        keepalive_seconds, keepalive_timeout_seconds, context)

    conn, ack = await connect()
    return Client(conn, ack, connect, chain, token)


async def _connect(address: str, parsed: Address, option: p.Option, connect_seconds: float | None,
                   max_frame_size: int, keepalive: float | None, keepalive_timeout: float,
                   context: SSLContext | None = None) -> tuple[ClientConnection, p.Option]:
    """Dial and shake hands: the connection and the server's acknowledgement."""
    loop = asyncio.get_running_loop()

    def factory() -> ClientConnection:
        handshake = ClientHandshake(address, option, via_http=parsed.scheme == "http")
        made = ClientConnection(address, max_frame_size, handshake, keepalive, keepalive_timeout)
        made.tls = context is not None
        return made

    conn: ClientConnection | None = None
    ack: p.Option | None = None
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
    finally:
        if ack is None:
            # Failed: the error raised holds this frame, and conn's handshake future
            # may hold the error (a reference cycle), so conn goes.
            conn = None
    assert conn is not None
    return conn, ack


def _nanoseconds(seconds: float | None) -> int:
    """An Option duration: 0 means none, so a positive one is at least 1 ns."""
    return 0 if seconds is None else max(1, int(seconds * 1e9))


def _abort(conn: ClientConnection | None) -> None:
    if conn is not None and conn.transport is not None:
        conn.transport.abort()
