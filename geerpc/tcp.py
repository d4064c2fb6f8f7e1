"""Socket options the client and server transports share."""

from __future__ import annotations

import asyncio
import socket

__all__ = ["enable_keepalive"]

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
