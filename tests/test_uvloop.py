"""The same server and client on uvloop (the ``fast`` extra), whose transports differ."""

from __future__ import annotations

import asyncio

import pytest

import geerpc
from conftest import Arith
from geerpc.xclient import XClient

uvloop = pytest.importorskip("uvloop")


async def scenario() -> None:
    arith = Arith()
    servers = []
    for _ in range(2):
        server = geerpc.Server(handle_timeout=5)
        server.register(arith)
        await server.start("127.0.0.1", 0)
        servers.append(server)
    try:
        async with await geerpc.dial(servers[0].address) as client:
            assert await client.call("Arith.add", 1, 2) == 3
            assert await client.call("Arith.mul", 3, 4) == 12  # worker thread -> loop hand-off
            assert await asyncio.gather(*(client.call("Arith.add", i, i) for i in range(200))) == [
                2 * i for i in range(200)]
            with pytest.raises(geerpc.CallTimeout):
                await client.call("Arith.sleep", 5, timeout=0.05)
            with pytest.raises(geerpc.MethodNotFound):
                await client.call("Arith.nope")
        async with await geerpc.dial(servers[0].address.replace("tcp@", "http@")) as client:
            assert await client.call("Arith.add", 2, 2) == 4
        async with XClient([s.address for s in servers]) as xc:
            assert await xc.broadcast("Arith.add", 1, 1, timeout=2) == 2
    finally:
        for server in servers:
            await server.stop(grace=0.5)


def test_server_client_and_xclient_on_uvloop():
    uvloop.run(scenario())
