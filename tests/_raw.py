"""Raw-socket helpers for hostile tests: speak (or break) the wire protocol by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import msgpack

import geerpc
from geerpc import protocol as p
from geerpc.address import parse_address


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def option(**fields: Any) -> bytes:
    """An Option line; the defaults make a valid one, keyword arguments override fields."""
    base: dict[str, Any] = {"MagicNumber": p.MAGIC_NUMBER, "CodecType": p.CODEC_TYPE,
                            "ConnectTimeout": 0, "HandleTimeout": 0}
    base.update(fields)
    return json.dumps({k: v for k, v in base.items() if v is not None}).encode() + b"\n"


def request(seq: int, method: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> bytes:
    return p.encode_request(seq, method, list(args), kwargs, timeout)


class Raw:
    """One raw connection: write bytes, read the Option ack, frames, or the close."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, address: str, *, rcvbuf: int | None = None) -> Raw:
        parsed = parse_address(address)
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection(parsed.host, parsed.port)
        else:
            # A small receive buffer set before connecting keeps the TCP window small,
            # so a peer that is not read stalls quickly instead of filling megabytes.
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, (parsed.host, parsed.port))
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    @classmethod
    async def handshake(cls, address: str, **kwargs: Any) -> Raw:
        """Open, send a valid Option and check the server's acknowledgement."""
        raw = await cls.open(address, **kwargs)
        try:
            await raw.send(option())
            ack = await raw.read_ack()
            assert ack.get("MagicNumber") == p.MAGIC_NUMBER, ack
        except BaseException:
            await raw.close()
            raise
        return raw

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_ack(self, timeout: float = 2.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            line = await self.reader.readline()
        assert line.endswith(b"\n"), line
        return json.loads(line)

    async def read_frame(self, timeout: float = 2.0) -> bytes:
        async with asyncio.timeout(timeout):
            header = await self.reader.readexactly(4)
            return await self.reader.readexactly(int.from_bytes(header, "big"))

    async def read_response(self, timeout: float = 2.0) -> p.Response:
        return p.decode_response(await self.read_frame(timeout))

    async def read_until_closed(self, timeout: float = 2.0) -> bytes:
        """Everything the server sends until it closes (a reset counts as closed).

        Fails the test if the connection is still open after ``timeout``.
        """
        async with asyncio.timeout(timeout):
            try:
                return await self.reader.read()
            except ConnectionError:
                return b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def raw_connection(address: str, *, handshake: bool = True, **kwargs: Any) -> AsyncIterator[Raw]:
    raw = await (Raw.handshake(address, **kwargs) if handshake else Raw.open(address, **kwargs))
    try:
        yield raw
    finally:
        await raw.close()


@contextlib.asynccontextmanager
async def serving(*services: Any, **limits: Any) -> AsyncIterator[geerpc.Server]:
    """A real Server on 127.0.0.1 port 0 with ``services`` registered and the given limits."""
    server = geerpc.Server(**limits)
    for service in services:
        server.register(service)
    await server.start("127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.stop(grace=0.5)


async def assert_serving(server: geerpc.Server) -> None:
    """A fresh client can still dial and call Arith.add."""
    assert server.address is not None
    async with asyncio.timeout(5):
        client = await geerpc.dial(server.address, connect_timeout=2)
        try:
            assert await client.call("Arith.add", 1, 2) == 3
        finally:
            await client.close()


async def dial_when_possible(address: str, timeout: float = 2.0) -> geerpc.Client:
    """Dial, retrying refusals until ``timeout`` (for a server that frees a slot soon)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await geerpc.dial(address, connect_timeout=1)
        except geerpc.ConnectError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.01)


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def fake_server(behaviour: Behaviour) -> AsyncIterator[str]:
    """A raw asyncio server running ``behaviour`` per connection; yields its address.

    Handler tasks still running at the end are cancelled and awaited, and every
    connection is closed, so nothing outlives the test.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await behaviour(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            tasks.discard(task)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"tcp@127.0.0.1:{port}"
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def read_message(reader: asyncio.StreamReader) -> p.Request | p.Cancel:
    """The next frame a client sent, decoded: a Request or a Cancel."""
    header = await reader.readexactly(4)
    return p.decode_request(await reader.readexactly(int.from_bytes(header, "big")))


async def read_request(reader: asyncio.StreamReader) -> p.Request:
    message = await read_message(reader)
    assert type(message) is p.Request
    return message


ACK = p.encode_option(p.Option(max_frame_size=p.DEFAULT_MAX_FRAME_SIZE))
