"""Client side of a stream: ``async for item in stream``, with credit sent as items are read.

``Client.stream()`` returns a ``Stream``. Opening it sends a STREAM request granting
the server a window of items and bytes (docs/protocol.md, "Streams"); the items that
arrive wait here, at most a window of them, and each one read frees room that goes
back to the server as CREDIT once half a window has been read (or at once when the
consumer has read everything and waits), so a fast consumer never waits a round trip
per item and a slow one holds the server's generator still.

The stream ends when the server's end arrives (StopAsyncIteration, or the error the
generator raised, as the same ``RemoteError`` family as a call's), at its deadline
(``CallTimeout``), when the connection goes (``ConnectionClosed``), or when the
consumer leaves: ``aclose()``, leaving ``async with``, ``break`` inside ``async with``,
or the consuming task being cancelled all send a Cancel, and the server closes its
generator. A stream dropped unclosed sends its Cancel when it is collected.
"""

from __future__ import annotations

import asyncio
import collections
import weakref
from collections.abc import Awaitable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import Any, Final, Protocol

from .context import ClientCall, Reply
from .deadline import Deadline
from .errors import ConnectionClosed, GeeRPCError, NotSupported
from .interceptors import ClientInterceptor, client_chain
from .metadata import outgoing
from .pending import PendingCalls
from .protocol import encode_credit



class _Connection(Protocol):
    """What a stream uses of the client's connection (``client_connection.ClientConnection``)."""

    loop: asyncio.AbstractEventLoop
    calls: PendingCalls[asyncio.Future[Any]]
    streams: weakref.WeakValueDictionary[int, Stream]
    streams_ok: bool
    metadata_ok: bool
    writable: asyncio.Event

    def send(self, frame: bytes) -> None: ...
    def send_request(self, frame: bytes) -> None: ...
    def expire(self, seq: int) -> None: ...
    def cancel(self, seq: int) -> None: ...


class _Client(Protocol):
    """What a stream uses of its ``Client``."""

    @property
    def address(self) -> str: ...
    @property
    def authorization(self) -> dict[str, str | bytes] | None: ...
    async def connection_for(self, service_method: str, deadline: Deadline | None) -> Any: ...
    async def wait_writable(self, service_method: str, deadline: Deadline | None) -> None: ...

__all__ = ["Stream", "DEFAULT_WINDOW_ITEMS", "DEFAULT_WINDOW_BYTES"]

DEFAULT_WINDOW_ITEMS: Final = 64
DEFAULT_WINDOW_BYTES: Final = 1024 * 1024


class Stream:
    """One stream from a server: an async iterator of its items, and an async context manager.

    Made by ``Client.stream()``; opened by ``async with`` or the first ``async for``
    step. ``metadata`` is the end's reply metadata, once the stream has ended.
    """

    def __init__(self, client: _Client, service_method: str, args: Sequence[Any], kwargs: dict[str, Any],
                 deadline: Deadline | None, metadata: Mapping[str, str | bytes] | None,
                 window_items: int = DEFAULT_WINDOW_ITEMS, window_bytes: int = DEFAULT_WINDOW_BYTES,
                 interceptors: tuple[ClientInterceptor, ...] = ()) -> None:
        if type(window_items) is not int or not 1 <= window_items <= 1024:
            raise ValueError(f"window_items must be an int from 1 to 1024, not {window_items!r}")
        if type(window_bytes) is not int or not 1024 <= window_bytes <= 4 * 1024 * 1024:
            raise ValueError(f"window_bytes must be an int from 1024 to 4 MiB, not {window_bytes!r}")
        self._client = client
        self.service_method = service_method
        self._args, self._kwargs, self._metadata_out = args, kwargs, metadata
        self._deadline = deadline
        self._window = (window_items, window_bytes)
        self._interceptors = interceptors
        self._items: collections.deque[tuple[Any, int]] = collections.deque()
        self._conn: _Connection | None = None
        self._seq = 0
        self._end: asyncio.Future[Any] | None = None  # the end response, as a call's future
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._read_items = self._read_bytes = 0  # read since the last credit
        self._opening: asyncio.Task[Any] | None = None  # the interceptors' chain, while the stream lives
        self._error: BaseException | None = None  # what ended it, once it ended badly
        self._finished = False  # ended (by the server, an error, or the consumer)
        self.metadata: Mapping[str, str | bytes] = MappingProxyType({})

    # ------------------------------------------------------------- opening

    async def _open(self) -> None:
        if self._conn is not None or self._finished:
            return
        if not self._interceptors:
            await self._send_open(self.service_method, self._args, self._kwargs, self._metadata_out, self._deadline)
            return
        await self._open_through_chain()

    async def _send_open(self, service_method: str, args: Sequence[Any], kwargs: dict[str, Any],
                         metadata: Mapping[str, str | bytes] | None, deadline: Deadline | None) -> None:
        client = self._client
        conn: _Connection = await client.connection_for(service_method, deadline)
        authorization = client.authorization
        if authorization is not None:
            metadata = {**authorization, **metadata} if metadata else authorization
        checked = outgoing(metadata) if metadata else None
        if not conn.streams_ok:
            raise NotSupported(f"{client.address} does not take streams (a geerpc server older than streams): "
                               f"{service_method} was not sent")
        if checked and not conn.metadata_ok:
            raise NotSupported(f"{client.address} does not take call metadata: {service_method} was not sent")
        if not conn.writable.is_set():
            await client.wait_writable(service_method, deadline)
        loop = conn.loop
        end: asyncio.Future[Any] = loop.create_future()
        now = 0.0 if deadline is None else loop.time()
        seq, frame = conn.calls.add(service_method, args, kwargs, deadline, now, end, checked, True, self._window)
        self._conn, self._seq, self._end = conn, seq, end
        conn.streams[seq] = self  # weakly: a stream dropped unclosed is collected, and cancels
        alive = weakref.ref(self)

        def ended(done: asyncio.Future[Any]) -> None:
            stream = alive()
            if stream is not None:
                stream._ended(done)

        end.add_done_callback(ended)
        conn.send_request(frame)
        if deadline is not None:
            self._timer = loop.call_at(deadline.at, conn.expire, seq)

    async def _open_through_chain(self) -> None:
        """Open through the client's interceptors: their ``proceed()`` opens the stream
        and returns once it has ended, so an interceptor sees both (a span covers it all)."""
        loop = asyncio.get_running_loop()
        given = None if self._deadline is None else self._deadline.left(loop.time())
        call = ClientCall(self.service_method, list(self._args), dict(self._kwargs),
                          dict(self._metadata_out) if self._metadata_out else {}, given, self._client.address,
                          streaming=True)
        opened: asyncio.Future[None] = loop.create_future()
        first_deadline, alive = self._deadline, weakref.ref(self)

        async def proceed() -> Reply:
            # Holds the stream only while opening it: a stream dropped unclosed is still collected.
            deadline = first_deadline if call.timeout == given else Deadline.after(call.timeout, loop.time())
            stream = alive()
            if stream is None:
                raise asyncio.CancelledError
            await stream._send_open(call.service_method, call.args, call.kwargs, call.metadata, deadline)
            end = stream._end
            del stream
            assert end is not None
            opened.set_result(None)
            await asyncio.wait([end])
            result = end.result()  # raises what ended the stream, CancelledError if the consumer left
            return result if type(result) is Reply else Reply(result)

        def send() -> Awaitable[Reply]:
            return proceed()

        interceptors = self._interceptors

        async def run() -> Reply:
            return await client_chain(interceptors, call, send)

        chain: asyncio.Task[Reply] = loop.create_task(run())
        self._opening = chain
        chain.add_done_callback(_retrieve)
        await asyncio.wait([opened, chain], return_when=asyncio.FIRST_COMPLETED)  # type: ignore[type-var]
        if not opened.done():  # an interceptor refused, or opening failed
            opened.cancel()
            self._finished = True
            chain.result()  # raises what the chain raised
            raise GeeRPCError(f"a client interceptor returned before opening the stream {self.service_method}")

    # ------------------------------------------------------------- items

    def deliver(self, item: Any, size: int) -> None:
        """An ITEM arrived for this stream (called by the connection)."""
        if self._finished:
            return
        self._items.append((item, size))
        self._wake()

    def _ended(self, end: asyncio.Future[Any]) -> None:
        if end.cancelled():  # the consumer left
            self._stop_timer()
            return
        if end.exception() is not None:
            self._error = end.exception()
        else:
            result = end.result()
            if type(result) is Reply:
                self.metadata = result.metadata
        self._stop_timer()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Any:
        if self._end is None:
            if self._finished:
                raise StopAsyncIteration
            await self._open()
        while True:
            if self._error is not None and isinstance(self._error, (TimeoutError, ConnectionClosed)):
                self._finish()
                raise self._error  # the deadline bounds the whole stream; a lost connection ends it
            if self._items:
                item, size = self._items.popleft()
                self._read(size)
                return item
            end = self._end
            assert end is not None
            if end.done() or self._finished:
                if end.done():  # its callback may not have run yet
                    self._ended(end)
                self._finish()
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._grant()  # read everything we have: whatever was read goes back now
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            except asyncio.CancelledError:
                self._abandon()
                raise
            finally:
                self._waiter = None

    def _read(self, size: int) -> None:
        self._read_items += 1
        self._read_bytes += size
        items, size_window = self._window
        if self._read_items >= items >> 1 or self._read_bytes >= size_window >> 1:
            self._grant()

    def _grant(self) -> None:
        if not self._read_items or self._conn is None or self._finished:
            return
        self._conn.send(encode_credit(self._seq, self._read_items, self._read_bytes))
        self._read_items = self._read_bytes = 0

    # ------------------------------------------------------------- closing

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self) -> None:
        """Ended, by the server or an error: forget it on the connection."""
        if self._finished:
            return
        self._finished = True
        self._stop_timer()
        self._items.clear()
        if self._conn is not None and self._conn.streams.get(self._seq) is self:
            del self._conn.streams[self._seq]

    def _abandon(self) -> None:
        """The consumer left before the end: cancel the stream on the server."""
        if self._finished:
            return
        conn, ended = self._conn, self._end is not None and self._end.done()
        self._finish()
        if conn is not None and not ended:
            conn.cancel(self._seq)  # forgets the call and sends a Cancel
            if self._end is not None and not self._end.done():
                self._end.cancel()
        if self._opening is not None and not self._opening.done():
            self._opening.cancel()

    async def aclose(self) -> None:
        """Stop reading: the server closes its generator. Idempotent."""
        self._abandon()

    async def __aenter__(self) -> Stream:
        await self._open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._abandon()

    def __del__(self) -> None:
        if not getattr(self, "_finished", True) and self._conn is not None:  # not if __init__ raised
            try:
                self._abandon()
            except Exception:  # noqa: BLE001 - a finaliser must not raise (the loop may be gone)
                pass

    def __repr__(self) -> str:
        state = "ended" if self._finished else ("open" if self._conn is not None else "not opened")
        return f"<geerpc.Stream {self.service_method} {state}>"


def _retrieve(task: asyncio.Task[Any]) -> None:
    """The interceptors' task ends unawaited when the stream ends: its outcome is read here."""
    if not task.cancelled():
        task.exception()

