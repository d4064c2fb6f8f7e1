"""aiohttp's HTTP connections, made to let go of their transports once lost.

geerpc's own connections call ``tcp.release`` from ``connection_lost``, so a closed
socket transport is freed by reference counting instead of waiting, as a reference
cycle, for a full collection (Python 3.11 never breaks that cycle itself). The HTTP
connections of the registry, its heartbeats, the discoveries' watches and the etcd
client are aiohttp's, whose protocols are not ours: each closed one was such a
cycle, and a process that makes discoveries, or a registry that serves their
watches, gathered them for as long as no full collection ran.

- ``connector(ssl)`` is an ``aiohttp.TCPConnector`` whose protocol releases its
  transport when the connection is lost. It reaches into the connector's protocol
  factory; an aiohttp without one gets a plain connector, whose only cost is the cycle.
- ``releasing(factory)`` wraps a server's protocol factory (aiohttp's ``web.Server``)
  so that each protocol it makes releases its transport when its connection is lost.

Over TLS (HTTPS), the socket's transport beneath asyncio's TLS layer is released too
(``tcp.beneath_tls``, taken at ``connection_made``).

This module imports aiohttp: import it where a session or server is made, not at the
top of a module whose import must stay cheap.
"""

from __future__ import annotations

import asyncio
import functools
import ssl as _ssl
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from .tcp import beneath_tls, release

__all__ = ["connector", "releasing"]


class _ResponseHandler(ResponseHandler):
    """aiohttp's client protocol, releasing its transport when the connection is lost."""

    __slots__ = ("_made_with", "_beneath")

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # aiohttp's own arguments, whatever they are
        super().__init__(*args, **kwargs)
        self._made_with: asyncio.BaseTransport | None = None  # close() forgets self.transport first
        self._beneath: asyncio.BaseTransport | None = None  # over TLS, the socket's transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._made_with, self._beneath = transport, beneath_tls(transport)
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        transport, beneath, self._made_with, self._beneath = self._made_with, self._beneath, None, None
        super().connection_lost(exc)
        _release(transport, beneath)


def connector(ssl: _ssl.SSLContext | bool) -> aiohttp.TCPConnector:
    """An ``aiohttp.TCPConnector`` (``ssl`` as aiohttp takes it) whose connections,
    once lost, leave no reference cycle behind."""
    made = aiohttp.TCPConnector(ssl=ssl)
    factory = getattr(made, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        made._factory = functools.partial(_ResponseHandler, *factory.args, **factory.keywords)  # type: ignore[assignment]
    return made


class _Releasing(asyncio.Protocol):
    """A server's protocol as asyncio sees it: passes every event on to aiohttp's own,
    and releases the transport once the connection is lost."""

    __slots__ = ("_inner", "_transport", "_beneath")

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        self._beneath: asyncio.BaseTransport | None = None  # over TLS, the socket's transport

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport, self._beneath = transport, beneath_tls(transport)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        transport, beneath, self._transport, self._beneath = self._transport, self._beneath, None, None
        self._inner.connection_lost(exc)
        _release(transport, beneath)


def _release(*transports: asyncio.BaseTransport | None) -> None:
    for transport in transports:
        if transport is not None:
            release(transport)


def releasing(factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
    """``factory``'s protocols, each releasing its transport when its connection is lost."""
    return lambda: _Releasing(factory())
