"""Mistakes a new user makes, and what geerpc tells them: each error says what happened
once, names the address once, and gives the likely cause."""

from __future__ import annotations

import asyncio
import socket

import pytest

import geerpc
from _raw import fake_server
from geerpc import protocol as p

GO_REFUSAL = p.encode_option(p.Option(error="unsupported codec 'application/msgpack', this server speaks gob"))


async def _close_after_option(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # what a GeeRPC Go server does with an Option naming a codec it lacks
    await reader.readline()


async def _refuse_option(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(GO_REFUSAL)
    await writer.drain()
    await reader.read()


async def _answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    await writer.drain()
    await reader.read()


async def _http_404(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await reader.read()


def _free_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _says_it_once(message: str, address: str) -> None:
    assert message.count(address) == 1, message
    assert "cannot connect" not in message and "cannot dial" not in message, message


@pytest.mark.parametrize(("behaviour", "scheme", "expected"), [
    (_close_after_option, "tcp", "{a} closed the connection during the handshake: not a geerpc server, "
                                 "or it does not speak application/msgpack"),
    (_refuse_option, "tcp", "{a} refused the connection: unsupported codec 'application/msgpack', "
                            "this server speaks gob"),
    (_answer_garbage, "tcp", "{a}: not a geerpc server (Option is not valid JSON"),
    (_http_404, "http", "{a} answered CONNECT with 404 Not Found: an HTTP server, but not a geerpc or "
                        "GeeRPC RPC port"),
], ids=["closed", "refusal Option", "bad Option line", "CONNECT 404"])
async def test_a_failed_handshake_is_said_once_with_its_likely_cause(behaviour, scheme, expected):
    async with fake_server(behaviour) as tcp_address:
        address = tcp_address.replace("tcp@", f"{scheme}@")
        with pytest.raises(geerpc.HandshakeError) as info:
            await geerpc.dial(address, connect_timeout=5)
    message = str(info.value)
    assert message.startswith(expected.format(a=address)), message
    _says_it_once(message, address)
    assert isinstance(info.value, geerpc.ConnectError)


async def test_a_refused_tcp_connect_names_the_address_once_and_is_no_handshake_error():
    address = f"tcp@127.0.0.1:{_free_port()}"
    with pytest.raises(geerpc.ConnectError) as info:
        await geerpc.dial(address, connect_timeout=5)
    assert str(info.value) == f"cannot connect to {address}: Connection refused"
    assert not isinstance(info.value, geerpc.HandshakeError)


async def test_an_unresolvable_host_names_the_address_once():
    address = "tcp@no-such-host.invalid:1"
    with pytest.raises(geerpc.ConnectError) as info:  # resolution fails without any network
        await geerpc.dial(address, connect_timeout=5)
    message = str(info.value)
    assert message.startswith(f"cannot connect to {address}: ") and message.count(address) == 1, message
    assert not isinstance(info.value, geerpc.HandshakeError)


async def test_a_malformed_address_is_named_once():
    with pytest.raises(geerpc.ConnectError) as info:
        await geerpc.dial("bogus@x:1")
    message = str(info.value)
    assert message.count("bogus@x:1") == 1 and "unknown protocol 'bogus'" in message, message
