"""grpc.aio with generic handlers: msgpack for add's arguments, raw bytes for echo.

No code generation: ``method_handlers_generic_handler`` on the server, and
``channel.unary_unary`` with the same serializers on the client. All 64 calls share
one channel (HTTP/2 streams on one connection).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack

import bench_rpc

from . import workloads

NAME = "grpc.aio"
NEEDS = ("grpc",)
HOW = "one channel, 64 tasks"
_SERVICE = "bench.Arith"


def _same(value: bytes) -> bytes:
    return value


async def _add(request: list[int], context: Any) -> int:
    return int(request[0] + request[1])


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _serve() -> None:
    import grpc

    handler = grpc.method_handlers_generic_handler(_SERVICE, {
        "add": grpc.unary_unary_rpc_method_handler(_add, request_deserializer=msgpack.unpackb,
                                                   response_serializer=msgpack.packb),
        "echo": grpc.unary_unary_rpc_method_handler(_echo, request_deserializer=_same,
                                                    response_serializer=_same),
    })
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"127.0.0.1:{port}", flush=True)
    await bench_rpc.wait_for_stdin_eof()
    await server.stop(None)


def serve() -> None:
    asyncio.run(_serve())


async def _run(address: str, sizes: workloads.Sizes) -> dict[str, float]:
    import grpc

    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        add_stub = channel.unary_unary(f"/{_SERVICE}/add", request_serializer=msgpack.packb,
                                       response_deserializer=msgpack.unpackb)
        echo_stub = channel.unary_unary(f"/{_SERVICE}/echo", request_serializer=_same,
                                        response_deserializer=_same)

        async def add(a: int, b: int) -> Any:
            return await add_stub((a, b), timeout=30)

        async def echo(value: bytes) -> Any:
            return await echo_stub(value, timeout=30)

        return await workloads.run_async(add, echo, sizes)


def run(address: str, sizes: workloads.Sizes) -> dict[str, float]:
    return asyncio.run(_run(address, sizes))
