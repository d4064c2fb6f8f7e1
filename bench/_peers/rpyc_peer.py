"""RPyC with a ThreadedServer (one thread per connection).

An RPyC connection serves one request at a time here, so 64 calls in flight take 64
threads with a connection each. The client looks the remote methods up once
(``conn.root.add``) and calls that reference, so a call is one round trip. TCP_NODELAY
is set on both sides (on the listening socket, which accepted sockets inherit on
Linux), as for every other peer here.
"""

from __future__ import annotations

import socket
import sys
import threading
from typing import Any

from . import workloads

NAME = "RPyC"
NEEDS = ("rpyc",)
HOW = "64 threads, one connection each"
_CONFIG = {"sync_request_timeout": 30, "allow_public_attrs": False}


def serve() -> None:
    import rpyc
    from rpyc.utils.server import ThreadedServer

    class ArithService(rpyc.Service):  # type: ignore[misc]
        def exposed_add(self, a: int, b: int) -> int:
            return a + b

        def exposed_echo(self, value: Any) -> Any:
            return value

    server = ThreadedServer(ArithService, hostname="127.0.0.1", port=0, protocol_config=_CONFIG)
    server.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    loop = threading.Thread(target=server.start, daemon=True)
    loop.start()
    print(f"127.0.0.1:{server.port}", flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    server.close()
    loop.join(10)


def _connect(address: str) -> tuple[workloads.SyncCall, workloads.SyncCall, Any]:
    from rpyc.core.stream import SocketStream
    from rpyc.utils.factory import connect_stream

    host, port = address.rsplit(":", 1)
    conn = connect_stream(SocketStream.connect(host, int(port), nodelay=True), config=_CONFIG)
    return conn.root.add, conn.root.echo, conn.close


def _adder(address: str) -> tuple[workloads.SyncCall, Any]:
    add, _, close = _connect(address)
    return add, close


def run(address: str, sizes: workloads.Sizes) -> dict[str, float]:
    add, echo, close = _connect(address)
    try:
        return workloads.run_sync(add, echo, lambda: _adder(address), sizes)
    finally:
        close()
