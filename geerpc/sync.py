"""Blocking clients for code that does not run asyncio: scripts, notebooks, threads.

A layer over ``Client`` and ``XClient``, never under them. Each blocking client owns
one event loop running in a daemon thread; a call is submitted to that loop with
``asyncio.run_coroutine_threadsafe`` and the calling thread blocks on the result.
So results, timeouts and exceptions are exactly those of the async clients (the very
same geerpc exception classes), and any number of threads may share one client.

Because the client's loop is its own, the caller's thread may block even while an
event loop runs in it: a Jupyter cell (ipykernel runs cells on its running loop), or
a coroutine that calls the client without ``await``. That loop stalls for the call's
duration, which is the caller's choice. The one place a blocking call can never
finish is the client's own loop thread (a callback or task scheduled on it): the
call would wait for the loop that has to run it, so it raises RuntimeError instead.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import warnings
import weakref
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterator, Mapping, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import Any, Final, Self, TypeVar

from .client import Client, dial
from .context import Reply
from .interceptors import ClientInterceptor
from .errors import ConnectionClosed
from .stream import Stream
from .xclient import Discovery, SelectMode, XClient
from .xclient.balance import ServerStats

__all__ = ["SyncClient", "SyncXClient"]

T = TypeVar("T")

# A client dropped without close() is cleaned up by its finalizer, which may run in
# any thread, in the middle of a garbage collection: it waits that long at most.
_FINALIZE_CLOSE_TIMEOUT: Final = 2.0
_FINALIZE_JOIN_TIMEOUT: Final = 3.0

_OWN_LOOP_MESSAGE: Final = (
    "{name} cannot block on its own loop thread (this callback or task runs on the loop that "
    "would have to run the call, so it would wait forever); await the async client there instead: "
    "geerpc.dial(...) or geerpc.xclient.XClient(...)")


class _LoopThread:
    """The machinery both blocking clients share: a private loop in a daemon thread.

    Strategy: ``_submit`` holds ``_lock`` only while checking ``_closed`` and handing
    the coroutine to the loop, never while waiting. ``close`` sets ``_closed`` under
    the same lock, so after it nothing new reaches the loop; what was handed over
    before is queued ahead of the close and runs (and fails with ConnectionClosed)
    before the loop stops.

    A client dropped without ``close()`` must still be collectable, so nothing the
    loop thread holds refers back to it: the thread runs a plain function on the
    loop. A ``weakref.finalize`` then does the close's work (see ``_finalize``) and
    warns, as asyncio does for a transport nobody closed.
    """

    def __init__(self, name: str) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=_run_loop, args=(self._loop,), name=name, daemon=True)
        # What the finalizer closes; the subclass fills it in once it has a connection.
        self._resources = _Resources(type(self).__name__)
        self._finalizer = weakref.finalize(self, _finalize, self._loop, self._thread, self._resources)
        # At exit, a client still referenced is left to the process's end, as before:
        # the daemon thread dies with it, and the OS closes the sockets.
        self._finalizer.atexit = False
        self._thread.start()

    def _submit(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it; Ctrl-C in the waiting thread cancels it."""
        if threading.current_thread() is self._thread:
            coro.close()  # never awaited: close it so Python does not warn
            raise RuntimeError(_OWN_LOOP_MESSAGE.format(name=type(self).__name__))
        with self._lock:
            if self._closed:
                coro.close()
                raise ConnectionClosed(f"{type(self).__name__} is closed")
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            # Only close() cancels what is left on the loop.
            raise ConnectionClosed(f"{type(self).__name__} closed during the call") from None
        except BaseException:
            # The wait was interrupted (KeyboardInterrupt): cancel the call on the loop,
            # which also tells the server. A no-op when the call itself raised.
            future.cancel()
            del future  # it holds the error, whose traceback holds this frame: a cycle
            raise

    def _stop(self, last: Coroutine[Any, Any, None] | None) -> None:
        """Run ``last`` (the client's own close), then stop the loop and join its thread."""
        if threading.current_thread() is self._thread:
            if last is not None:
                last.close()
            raise RuntimeError(f"{type(self).__name__}.close() cannot run on its own loop thread")
        with self._lock:
            if self._closed:
                if last is not None:
                    last.close()
                return
            self._closed = True
        self._finalizer.detach()  # closed as it should be: nothing left for it, no warning
        try:
            if last is not None:
                asyncio.run_coroutine_threadsafe(last, self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def close(self) -> None:
        """Close the connections, stop the loop thread and join it. Idempotent."""
        self._stop(None)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class SyncClient(_LoopThread):
    """A blocking ``Client``: ``SyncClient("tcp@host:port").call("Arith.add", 1, 2)``.

    Dials in the constructor, which raises ConnectError or ConnectTimeout (and leaves
    no thread behind) when that fails. Safe to share between threads. Use it as a
    context manager, or call ``close()``; one garbage-collected unclosed is cleaned up
    then, with a ResourceWarning.

    It works in a thread that runs an event loop too (a Jupyter cell, a coroutine),
    blocking that loop while it waits; ``await geerpc.dial(...)`` does not block it.
    A server running on that same loop cannot answer while it is blocked: call such a
    server with ``await``. Used from this client's own loop thread (a callback on
    it), a call raises RuntimeError rather than wait for itself forever.
    """

    def __init__(self, address: str, *, connect_timeout: float | None = 10.0,
                 handle_timeout: float | None = None,
                 interceptors: Sequence[ClientInterceptor] | None = None, ssl: SSLContext | None = None,
                 token: str | None = None, insecure_token: bool = False) -> None:
        super().__init__(name=f"geerpc-sync {address}")
        self.address = address
        try:
            self._client: Client = self._submit(
                dial(address, connect_timeout=connect_timeout, handle_timeout=handle_timeout,
                     interceptors=interceptors, ssl=ssl, token=token, insecure_token=insecure_token))
        except BaseException:
            self._stop(None)
            raise
        self._resources.name = f"SyncClient {address}"
        self._resources.close = self._client.close

    def call(self, service_method: str, /, *args: Any, timeout: float | None = None,
             metadata: Mapping[str, str | bytes] | None = None, **kwargs: Any) -> Any:
        """Call ``"Service.method"`` and block until its result; as ``Client.call``.

        Called from a plain ``def`` handler, the handler's deadline follows the call
        as it does for the async client. Raises CallTimeout, RemoteError (and its
        subclasses), ConnectionClosed (also after ``close()``), TypeError and
        ValueError, as the async client does.
        """
        return self._submit(self._client.call(service_method, *args, timeout=timeout, metadata=metadata, **kwargs))

    def invoke(self, service_method: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
               timeout: float | None = None, metadata: Mapping[str, str | bytes] | None = None) -> Reply:
        """The result and the reply's metadata; as ``Client.invoke``."""
        return self._submit(self._client.invoke(service_method, args, kwargs, timeout=timeout, metadata=metadata))

    def stream(self, service_method: str, /, *args: Any, timeout: float | None = None,
               metadata: Mapping[str, str | bytes] | None = None, **kwargs: Any) -> Iterator[Any]:
        """Open a stream and iterate its items: ``for item in sync_client.stream("Feed.count", 10)``.

        As ``Client.stream``: it is opened here (so NotSupported and a refused
        connection raise at once); each item blocks until it arrives; errors raise at
        the point in the stream where they happened. Leaving the loop early (or
        ``close()`` on the iterator) closes the server's generator.
        """
        client = self._client

        async def open_stream() -> Stream:
            stream = client.stream(service_method, *args, timeout=timeout, metadata=metadata, **kwargs)
            await stream.__aenter__()
            return stream

        return self._items(self._submit(open_stream()))

    def _items(self, stream: Stream) -> Iterator[Any]:
        try:
            while True:
                try:
                    item = self._submit(stream.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._closed:
                self._submit(stream.aclose())

    @property
    def closed(self) -> bool:
        """True once closed, or once the connection is lost."""
        return self._closed or self._client.closed

    def close(self) -> None:
        """Close the connection (pending calls fail with ConnectionClosed), then the loop thread."""
        self._stop(self._client.close())

    def __repr__(self) -> str:
        return f"<geerpc.SyncClient {self.address}{' closed' if self.closed else ''}>"


class SyncXClient(_LoopThread):
    """A blocking ``XClient``: ``call`` picks one server, ``broadcast`` calls them all.

    ``discovery`` is a registry URL (``http://...``, ``etcd://...``), a list of
    addresses, or a Discovery; the other options are ``XClient``'s. Creating it does
    not connect: servers are dialled by the first calls. A URL or a list is the
    safer choice: the discovery then lives on this client's own loop from the start.
    Like ``SyncClient``, it works in a thread that runs an event loop (a Jupyter
    cell), and refuses with RuntimeError to block its own loop thread.
    """

    def __init__(self, discovery: Discovery | str | list[str], mode: SelectMode = SelectMode.RANDOM,
                 **xclient_options: Any) -> None:
        super().__init__(name="geerpc-sync-xclient")
        try:
            # Built on the loop thread: discoveries may create loop-bound objects.
            self._xclient: XClient = self._submit(_make_xclient(discovery, mode, xclient_options))
        except BaseException:
            self._stop(None)
            raise
        if isinstance(discovery, str):
            self._resources.name = f"SyncXClient {discovery}"
        self._resources.close = self._xclient.close

    @property
    def xclient(self) -> XClient:
        """The XClient underneath (its methods must run on this client's loop)."""
        return self._xclient

    def call(self, service_method: str, /, *args: Any, timeout: float | None = None,
             metadata: Mapping[str, str | bytes] | None = None, idempotent: bool = False, **kwargs: Any) -> Any:
        """Call one server chosen by the select mode, with failover (and retries or
        hedges for ``idempotent=True`` calls); as ``XClient.call``."""
        return self._submit(self._xclient.call(service_method, *args, timeout=timeout, metadata=metadata,
                                               idempotent=idempotent, **kwargs))

    def invoke(self, service_method: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
               timeout: float | None = None, metadata: Mapping[str, str | bytes] | None = None,
               idempotent: bool = False) -> Reply:
        """The result and the reply's metadata; as ``XClient.invoke``."""
        return self._submit(self._xclient.invoke(service_method, args, kwargs, timeout=timeout, metadata=metadata,
                                                 idempotent=idempotent))


    def stream(self, service_method: str, /, *args: Any, timeout: float | None = None,
               metadata: Mapping[str, str | bytes] | None = None, **kwargs: Any) -> Iterator[Any]:
        """Iterate a stream from one server chosen as for ``call``; as ``XClient.stream``.

        The server is chosen, and the first item awaited, before this returns (so
        NoServerAvailable and a refused stream raise here); leaving the loop early
        closes the server's generator.
        """
        xclient = self._xclient

        async def first() -> tuple[AsyncGenerator[Any, None], list[Any]]:
            items = xclient.stream(service_method, *args, timeout=timeout, metadata=metadata, **kwargs)
            try:
                return items, [await items.__anext__()]
            except StopAsyncIteration:
                return items, []

        items, head = self._submit(first())
        return self._iterate(items, head)

    def _iterate(self, items: AsyncGenerator[Any, None], head: list[Any]) -> Iterator[Any]:
        try:
            if not head:
                return
            yield head[0]
            while True:
                try:
                    item = self._submit(items.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._closed:
                self._submit(items.aclose())
    def stats(self) -> dict[str, ServerStats]:
        """What the XClient measured of each server; as ``XClient.stats``."""
        return self._submit(_stats(self._xclient))

    def broadcast(self, service_method: str, /, *args: Any, timeout: float | None = None,
                  metadata: Mapping[str, str | bytes] | None = None, **kwargs: Any) -> Any:
        """Call every server offering the service; as ``XClient.broadcast``."""
        return self._submit(self._xclient.broadcast(service_method, *args, timeout=timeout, metadata=metadata,
                                                    **kwargs))

    def close(self) -> None:
        """Close every connection and the discovery (unless told not to), then the loop thread."""
        self._stop(self._xclient.close())


class _Resources:
    """What a blocking client's finalizer needs besides the loop: never the client itself."""

    __slots__ = ("close", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.close: Callable[[], Coroutine[Any, Any, None]] | None = None


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The loop thread: run ``loop`` until stopped, then clean up as ``asyncio.run`` does."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # What asyncio.run does on the way out: nothing left running, executor joined.
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()


def _finalize(loop: asyncio.AbstractEventLoop, thread: threading.Thread, resources: _Resources) -> None:
    """Clean up after a blocking client that was dropped without ``close()``.

    Runs from the garbage collector, in whatever thread dropped the last reference
    (the loop thread included), so it waits only within bounds: the connection's
    close gets ``_FINALIZE_CLOSE_TIMEOUT`` on the loop, after which the loop stops and
    its thread cancels whatever is left and closes the loop; the join is bounded too.
    Nobody can be waiting on a call: a waiting caller holds a reference to the client.
    """
    close = resources.close

    async def shutdown() -> None:
        try:
            # Best effort: whatever the close leaves, the loop's own shutdown cancels.
            with contextlib.suppress(Exception):
                if close is not None:
                    async with asyncio.timeout(_FINALIZE_CLOSE_TIMEOUT):
                        await close()
        finally:
            asyncio.get_running_loop().stop()

    try:
        coro = shutdown()
        try:
            asyncio.run_coroutine_threadsafe(coro, loop)
        except RuntimeError:  # the loop is closed already: nothing left to stop
            coro.close()
        else:
            if threading.current_thread() is not thread:
                thread.join(_FINALIZE_JOIN_TIMEOUT)
    finally:
        # Last, so that a warnings filter turning it into an error cannot skip the cleanup.
        warnings.warn(f"unclosed {resources.name}; call close() or use 'with'", ResourceWarning)


async def _stats(xclient: XClient) -> dict[str, ServerStats]:
    return xclient.stats()  # on the loop thread, whose clock the numbers are in


async def _make_xclient(discovery: Discovery | str | list[str], mode: SelectMode,
                        options: dict[str, Any]) -> XClient:
    return XClient(discovery, mode, **options)
