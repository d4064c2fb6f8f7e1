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
    # GeeRPC's Go client writes "CONNECT /_geeprc_ HTTP/1.0\n\n"; here the Option and
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


# ------------------------------------------------------------- parsing, no sockets


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["bare LF", "CRLF"])
def test_head_reader_hands_the_bytes_after_the_head_on_untouched(newline):
    head = b"CONNECT /_geeprc_ HTTP/1.0" + newline + b"X-A: b" + newline * 2
    tail = b"\n\n\r\n{frames}\r\n\r\n"
    assert gh.HeadReader(check_request=True).feed(head + tail) == (head, tail)
    reader = gh.HeadReader(check_request=True)
    for i in range(len(head) - 1):
        assert reader.feed(head[i : i + 1]) == (None, b"")
    assert reader.feed(head[-1:] + tail) == (head, tail)


def test_head_reader_takes_a_head_of_max_head_bytes_and_refuses_one_more():
    def head(size: int) -> bytes:
        start = b"GET / HTTP/1.0\r\nX: "
        return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"

    assert gh.HeadReader(check_request=True).feed(head(gh.MAX_HEAD))[0] == head(gh.MAX_HEAD)
    with pytest.raises(geerpc.ProtocolError, match="malformed HTTP: head longer than 8192 bytes"):
        gh.HeadReader(check_request=True).feed(head(gh.MAX_HEAD + 1))
    with pytest.raises(geerpc.ProtocolError, match="malformed HTTP: head longer than 8192 bytes"):
        gh.HeadReader(check_request=False).feed(b"HTTP/1.0 200 OK\r\n" + b"a" * gh.MAX_HEAD)


@pytest.mark.parametrize("line", [b"GARBAGE /x\r\n", b"GET /x\r\n", b"GET  HTTP/1.0\n", b"GET /x HTTP/1.0x\r\n"])
def test_head_reader_refuses_a_malformed_request_line_once_it_is_complete(line):
    reader = gh.HeadReader(check_request=True)
    assert reader.feed(line[:-1]) == (None, b"")
    with pytest.raises(geerpc.ProtocolError, match="^malformed HTTP: "):
        reader.feed(line[-1:])


def test_head_reader_checks_only_the_request_line_early():
    # HTTP/1.1 needs a Host header, which may come on the next line
    assert gh.HeadReader(check_request=True).feed(b"GET / HTTP/1.1\r\n") == (None, b"")
    assert gh.HeadReader(check_request=False).feed(b"GARBAGE\r\n") == (None, b"")


@pytest.mark.parametrize(("head", "parsed"), [
    (b"CONNECT /_geerpc_ HTTP/1.0\n\n", gh.Request("CONNECT", "/_geerpc_")),
    (b"GET /debug/geerpc?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", gh.Request("GET", "/debug/geerpc?x=1")),
    (b"get /debug/geerpc HTTP/1.0\r\n\r\n", gh.Request("get", "/debug/geerpc")),  # case kept
])
def test_parse_request(head, parsed):
    assert gh.parse_request(head) == parsed


@pytest.mark.parametrize("head", [
    b"GET /debug/geerpc HTTP/1.1\r\nBad header line\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",  # HTTP/1.1 without Host
    b"GET /\xff HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.0\r\n",  # no blank line
])
def test_parse_request_refuses_malformed_heads(head):
    with pytest.raises(geerpc.ProtocolError, match="^malformed HTTP: "):
        gh.parse_request(head)


@pytest.mark.parametrize(("head", "status"), [
    (gh.CONNECTED, (200, "Connected to Gee RPC")),
    (b"HTTP/1.0 200 Connected to Gee RPC\n\n", (200, "Connected to Gee RPC")),
    (b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", (404, "Not Found")),
    (b"HTTP/1.0 200\r\n\r\n", (200, "")),
])
def test_parse_response_status(head, status):
    assert gh.parse_response_status(head) == status


@pytest.mark.parametrize("head", [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"\r\n\r\n", b"HTTP/1.0 2000 OK\r\n\r\n",
                                  b"HTTP/1.0 200 OK\r\n"])
def test_parse_response_status_refuses_malformed_heads(head):
    with pytest.raises(geerpc.ProtocolError, match="^malformed HTTP: "):
        gh.parse_response_status(head)


@pytest.mark.parametrize(("method", "path", "status"), [
    ("CONNECT", "/_geerpc_", None), ("CONNECT", "/_geeprc_", None), ("CONNECT", "/elsewhere", b"404"),
    ("GET", "/debug/geerpc", b"200"), ("HEAD", "/debug/geerpc?x", b"200"), ("GET", "/", b"404"),
    ("get", "/debug/geerpc", b"405"), ("DELETE", "/debug/geerpc", b"405"),
])
def test_route(method, path, status):
    answer = gh.route(gh.Request(method, path), lambda: "<p>page</p>")
    assert (answer if answer is None else answer.split(b" ")[1]) == status
    if status == b"200" and method == "GET":
        assert answer is not None and b"text/html" in answer and answer.endswith(b"\r\n\r\n<p>page</p>")


@pytest.mark.parametrize("path", ["/debug/geerpc", "/elsewhere"])
def test_a_head_request_gets_the_get_headers_and_no_body(path):
    get = gh.route(gh.Request("GET", path), lambda: "<p>page</p>")
    head = gh.route(gh.Request("HEAD", path), lambda: "<p>page</p>")
    assert get is not None and head is not None
    headers, _, body = get.partition(b"\r\n\r\n")
    assert body and head == headers + b"\r\n\r\n"  # Content-Length still names the GET's body
    assert f"Content-Length: {len(body)}".encode() in head


async def test_head_of_the_debug_page_over_a_socket_ends_after_the_headers(server):
    answer = await exchange(server.address, b"HEAD /debug/geerpc HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.0 200 OK") and answer.endswith(b"\r\n\r\n")
    assert answer.count(b"\r\n\r\n") == 1


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0 s"), (59.9, "59 s"), (60, "1 min 0 s"), (3599, "59 min 59 s"), (3600, "1 h 0 min"),
    (86399, "23 h 59 min"), (90000, "1 d 1 h"), (-3, "0 s"),
])
def test_uptime_reads_as_on_the_registry_dashboard(seconds, shown):
    from geerpc.debug import duration

    assert duration(seconds) == shown


def test_route_renders_the_debug_page_only_when_asked():
    def page() -> str:
        raise AssertionError("rendered")

    assert gh.route(gh.Request("CONNECT", "/_geerpc_"), page) is None
    assert gh.route(gh.Request("GET", "/"), page) is not None
