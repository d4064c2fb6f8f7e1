"""aiorpc (msgpack-rpc over asyncio streams).

An aiorpc client waits for the reply to each call before it sends the next one, so
64 calls in flight take 64 clients, one connection each; its server serves each
connection with one coroutine. Two workarounds, both on the client only: its
connect passes ``loop=`` to ``asyncio.open_connection`` (gone since Python 3.10), so
the adapter opens the connection itself and hands it to aiorpc's ``Connection``; and
aiorpc's server sends bytes as msgpack *str*, so the client decodes with ``raw=True``
to get the echoed bytes back intact.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

import bench_rpc

from . import workloads

NAME = "aiorpc"
NEEDS = ("aiorpc",)
HOW = "64 connections, one task each"
_TIMEOUT = 30


async def _add(a: int, b: int) -> int:
    return a + b


async def _echo(value: Any) -> Any:
    return value


async def _serve() -> None:
    import aiorpc

    aiorpc.register("add", _add)
    aiorpc.register("echo", _echo)
    aiorpc.set_timeout(3600)  # its idle timeout closes connections; ours stay idle between workloads
    server = await asyncio.start_server(aiorpc.serve, "127.0.0.1", 0)
    print(f"127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await bench_rpc.wait_for_stdin_eof()
    server.close()


def serve() -> None:
    asyncio.run(_serve())


async def _client(host: str, port: int) -> Any:
    from aiorpc import RPCClient
    from aiorpc.connection import Connection

    client = RPCClient(host, port, timeout=_TIMEOUT)
    reader, writer = await asyncio.open_connection(host, port)
    client._conn = Connection(reader, writer, msgpack.Unpacker(raw=True, use_list=False))
    return client


async def _run(address: str, sizes: workloads.Sizes) -> dict[str, float]:
    host, port = address.rsplit(":", 1)
    clients = [await _client(host, int(port)) for _ in range(workloads.IN_FLIGHT)]
    try:
        first = clients[0]
        return await workloads.run_async(
            lambda a, b: first.call("add", a, b), lambda value: first.call("echo", value), sizes,
            adds=[lambda a, b, c=c: c.call("add", a, b) for c in clients])
    finally:
        for client in clients:
            client.close()


def run(address: str, sizes: workloads.Sizes) -> dict[str, float]:
    return asyncio.run(_run(address, sizes))
