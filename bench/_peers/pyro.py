"""Pyro5 with its msgpack serializer and its default thread-pool server.

A Pyro5 proxy makes one call at a time (and belongs to the thread that made it), so
64 calls in flight take 64 threads with a proxy each; the server gives each
connection a worker thread (its pool holds 80). TCP_NODELAY is set on both sides,
as for every other peer here.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

from . import workloads

NAME = "Pyro5"
NEEDS = ("Pyro5", "msgpack")
HOW = "64 threads, one proxy each"


def _configure() -> None:
    from Pyro5.api import config

    config.SERIALIZER = "msgpack"
    config.SOCK_NODELAY = True
    config.COMMTIMEOUT = 30.0


def serve() -> None:
    from Pyro5.api import Daemon, expose

    _configure()

    @expose
    class Arith:
        def add(self, a: int, b: int) -> int:
            return a + b

        def echo(self, value: Any) -> Any:
            return value

    daemon = Daemon(host="127.0.0.1", port=0)
    uri = daemon.register(Arith(), "bench.arith")
    loop = threading.Thread(target=daemon.requestLoop, daemon=True)
    loop.start()
    print(uri, flush=True)
    sys.stdin.read()  # until the parent closes our stdin
    daemon.shutdown()
    loop.join(10)


def _connect(uri: str) -> tuple[workloads.SyncCall, workloads.SyncCall, Any]:
    from Pyro5.api import Proxy

    proxy = Proxy(uri)
    proxy._pyroBind()
    return proxy.add, proxy.echo, proxy._pyroRelease


def _adder(address: str) -> tuple[workloads.SyncCall, Any]:
    add, _, close = _connect(address)
    return add, close


def run(address: str, sizes: workloads.Sizes) -> dict[str, float]:
    _configure()
    add, echo, close = _connect(address)
    try:
        return workloads.run_sync(add, echo, lambda: _adder(address), sizes)
    finally:
        close()
