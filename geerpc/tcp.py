"""Socket options the client and server transports share."""

from __future__ import annotations

import asyncio
import socket

__all__ = ["beneath_tls", "enable_keepalive", "release"]

KEEPALIVE_IDLE = 30  # seconds of silence before the kernel probes the peer
KEEPALIVE_INTERVAL = 10
KEEPALIVE_COUNT = 3  # unanswered probes before the connection is declared dead (~60 s)


def enable_keepalive(transport: asyncio.BaseTransport) -> None:
    """Let the kernel notice a peer that vanished without a FIN (half-open TCP).

    Without it a connection to a host that lost power stays open for ever: a client
    would wait for replies that cannot come (unless it set a timeout), and a server
    would keep the connection counted against max_connections.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
    except OSError:
        pass


def release(transport: asyncio.BaseTransport) -> None:
    """Let reference counting free a closed transport.

    asyncio's socket transport keeps bound methods of itself (``_read_ready_cb``; from
    Python 3.12 also ``_write_ready``), so a closed one is a reference cycle, with its
    socket objects and dicts (about 1 kB), left for the next full collection. Python
    3.12 clears them in ``close()`` (CPython gh-100348), but not when the transport is
    aborted or reset; 3.11 never does. A server whose clients come and go holds
    thousands of them between collections: its memory creeps up and falls back, for
    no reason of its own. Called from ``connection_lost``, once the transport will not
    read or write again: over TLS, the socket's transport beneath the TLS layer (a
    server's own, from ``start_tls``; a client's, from ``beneath_tls``).
    """
    if not transport.is_closing():
        return
    attributes = getattr(transport, "__dict__", None)
    if attributes is None:  # uvloop's transports: no cycle of this kind
        return
    for name in ("_read_ready_cb", "_write_ready"):
        if attributes.get(name) is not None:
            attributes[name] = None


def beneath_tls(transport: asyncio.BaseTransport) -> asyncio.BaseTransport | None:
    """The socket's transport beneath an asyncio TLS transport, or None (not TLS, uvloop).

    ``create_connection(ssl=...)`` hands its protocol only the TLS transport, and the
    TLS layer lets go of the socket's before the protocol hears of the loss: a client
    that wants to ``release`` it must take it at ``connection_made``.
    """
    inner = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    return inner if isinstance(inner, asyncio.BaseTransport) else None
