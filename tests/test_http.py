"""HTTP on the RPC port: GeeRPC's CONNECT switch, the debug page, and bad requests."""

from __future__ import annotations

import asyncio

import pytest

import geerpc
from geerpc import http as gh
from geerpc import protocol as p


async def exchange(address: str, data: bytes, read_until_close: bool = True) -> bytes:
    host, port = address.split("@")[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        async with asyncio.timeout(2):
            return await reader.read() if read_until_close else await reader.readuntil(b"\n\n")
    finally:
        writer.close()
        await writer.wait_closed()


async def test_dial_http_address_switches_with_connect(server):
    address = server.address.replace("tcp@", "http@")
    async with await geerpc.dial(address) as client:
        assert await client.call("Arith.add", 1, 2) == 3
        assert await asyncio.gather(*(client.call("Arith.mul", i, 2) for i in range(10))) == [2 * i for i in range(10)]


@pytest.mark.parametrize("path", ["/_geerpc_", "/_geeprc_"])
@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
async def test_go_style_connect_then_option_and_call_in_one_write(server, path, newline):
    # GeeRPC's Go client writes "CONNECT /_geerpc_ HTTP/1.0\n\n"; here the Option and
    # a request follow in the same packet and must not be lost.
    host, port = server.address.split("@")[1].rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(f"CONNECT {path} HTTP/1.0".encode() + newline * 2 + p.encode_option(p.Option())
                     + p.encode_request(1, "Arith.add", [2, 3], {}, None))
        async with asyncio.timeout(2):
            assert await reader.readuntil(b"\r\n\r\n") == gh.CONNECTED
            assert b"MagicNumber" in await reader.readline()
            size = int.from_bytes(await reader.readexactly(4), "big")
            assert p.decode_response(await reader.readexactly(size)) == p.Response(1, None, 5)
    finally:
        writer.close()
        await writer.wait_closed()


async def test_debug_page_lists_services_methods_and_stats(server, client):
    for i in range(10):
        await client.call("Arith.add", i, 1)
    with pytest.raises(geerpc.RemoteError):
        await client.call("Arith.fail", "x")
    answer = await exchange(server.address, b"GET /debug/geerpc HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK") and b"text/html" in head
    page = body.decode()
    assert "<h2>Arith</h2>" in page
    assert "add(a, b)" in page and "fail(message)" in page and "_secret" not in page
    row = page.split("add(a, b)")[1].split("</tr>")[0]
    assert '<td class="num">10</td>' in row  # ten calls
    assert "µs" in row or "ms" in row  # p50/p99 shown
    fail_row = page.split("fail(message)")[1].split("</tr>")[0]
    assert 'class="errors">1<' in fail_row


async def test_debug_page_escapes_names(arith):
    class Evil:
        async def x(self, a="<script>alert(1)</script>"):
            return a

    server = geerpc.Server()
    server.register(Evil(), name="Evil")
    async with server:
        await server.start("127.0.0.1", 0)
        page = (await exchange(server.address, b"GET /debug/geerpc HTTP/1.0\r\n\r\n")).decode()
    assert "<script>alert" not in page and "&lt;script&gt;" in page


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GET /nothing HTTP/1.0\r\n\r\n", b"404"),
    (b"CONNECT /elsewhere HTTP/1.0\r\n\r\n", b"404"),
    (b"DELETE /debug/geerpc HTTP/1.0\r\n\r\n", b"405"),
    (b"GET /debug/geerpc HTTP/1.1\r\nBad header line\r\n\r\n", b"400"),
])
async def test_other_requests_get_4xx_and_close(server, request_bytes, status):
    answer = await exchange(server.address, request_bytes)
    assert answer.split(b" ")[1] == status
    assert b"Traceback" not in answer


@pytest.mark.parametrize("line", [b"GARBAGE /x\r\n", b"GET /x\r\n", b"GET  HTTP/1.0\n"])
async def test_malformed_request_line_is_refused_at_once(server, line):
    # Only the line is sent, no blank line: the server must not wait for more.
    loop = asyncio.get_running_loop()
    start = loop.time()
    answer = await exchange(server.address, line)
    assert answer.startswith(b"HTTP/1.0 400")
    assert loop.time() - start < 1  # the handshake timeout (10 s) did not run out
    assert server.protocol_errors == 1


async def test_oversized_http_head_is_refused(server):
    answer = await exchange(server.address, b"GET /debug/geerpc HTTP/1.0\r\nX-Big: " + b"a" * 10000)
    assert answer.startswith(b"HTTP/1.0 400")


async def test_server_still_serves_after_http_traffic(server, client):
    await exchange(server.address, b"GARBAGE\r\n")
    await exchange(server.address, b"GET /debug/geerpc HTTP/1.0\r\n\r\n")
    assert await client.call("Arith.add", 1, 1) == 2


async def test_dial_http_to_a_non_geerpc_http_server_fails_clearly():
    async def handle(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    other = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = other.sockets[0].getsockname()[1]
    try:
        with pytest.raises(geerpc.ConnectError, match="404"):
            await geerpc.dial(f"http@127.0.0.1:{port}", connect_timeout=2)
    finally:
        other.close()
        await other.wait_closed()
