"""HTTP on the RPC port (GeeRPC day 5): the CONNECT switch and small GET responses.

No socket I/O here. A server connection whose first byte is an upper-case letter
is HTTP: ``HeadReader`` collects the request head, aiohttp's parser parses it, and
the server either switches the connection to the RPC protocol (``CONNECT
/_geerpc_``) or answers one response and closes.

Why we delimit the head ourselves: GeeRPC's Go client writes ``CONNECT /_geerpc_
HTTP/1.0\\n\\n`` with bare line feeds, which aiohttp's parsers refuse, and the bytes
after the head are RPC frames that no HTTP parser should touch. So this module finds
the blank line that ends the head (bounded to ``MAX_HEAD`` bytes), turns its line
endings into CRLF, and hands only the head to aiohttp. It never parses HTTP itself.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.http_parser import HttpRequestParserPy, HttpResponseParserPy

from .errors import ProtocolError

if TYPE_CHECKING:
    from .server import Server

__all__ = [
    "MAX_HEAD", "RPC_PATHS", "CONNECTED", "DEBUG_PATH", "HeadReader", "Request",
    "parse_request", "parse_response_status", "connect_request", "response", "route",
]

MAX_HEAD: Final = 8192
RPC_PATHS: Final = ("/_geerpc_", "/_geeprc_")  # the second is GeeRPC's own spelling
DEBUG_PATH: Final = "/debug/geerpc"
CONNECTED: Final = b"HTTP/1.0 200 Connected to Gee RPC\r\n\r\n"


class Request(NamedTuple):
    method: str
    path: str


def _normalise(head: bytes) -> bytes:
    return head.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


class HeadReader:
    """Collects an HTTP head from chunks; ``feed`` returns ``(head, tail)`` when whole.

    With ``check_request=True`` every complete line is checked as it arrives, so a
    malformed request line is refused at once instead of waiting for the blank line.
    Raises ProtocolError for a malformed request or a head over ``MAX_HEAD`` bytes.
    """

    def __init__(self, *, check_request: bool) -> None:
        self._buffer = bytearray()
        self._check = check_request

    def feed(self, data: bytes) -> tuple[bytes | None, bytes]:
        self._buffer += data
        buffer = self._buffer
        ends = [i for i in (buffer.find(b"\n\n"), buffer.find(b"\n\r\n")) if i >= 0]
        if ends:
            cut = min(ends)
            cut += 2 if buffer[cut : cut + 2] == b"\n\n" else 3
            if cut > MAX_HEAD:
                raise ProtocolError(f"HTTP head longer than {MAX_HEAD} bytes")
            return bytes(buffer[:cut]), bytes(buffer[cut:])
        if len(buffer) > MAX_HEAD:
            raise ProtocolError(f"HTTP head longer than {MAX_HEAD} bytes")
        first_line = buffer.find(b"\n")
        if self._check and first_line >= 0:
            # The request line alone, closed off as a head of its own: aiohttp checks
            # it now, so a malformed one is refused without waiting for more bytes.
            _parse(HttpRequestParserPy, bytes(buffer[: first_line + 1]) + b"\n")
            self._check = False
        return None, b""


def _parse(parser_class: Any, head: bytes) -> Any:
    loop = asyncio.get_running_loop()
    parser = parser_class(BaseProtocol(loop), loop, MAX_HEAD, max_line_size=MAX_HEAD, max_field_size=MAX_HEAD)
    try:
        messages, _, _ = parser.feed_data(_normalise(head))
    except HttpProcessingError as exc:
        raise ProtocolError(f"malformed HTTP: {exc.message}") from None
    except ValueError as exc:
        raise ProtocolError(f"malformed HTTP: {exc}") from None
    return messages[0][0] if messages else None


def parse_request(head: bytes) -> Request:
    """Method and path of a whole request head; ProtocolError when malformed."""
    message = _parse(HttpRequestParserPy, head)
    if message is None:
        raise ProtocolError("incomplete HTTP request head")
    return Request(message.method, message.path)


def parse_response_status(head: bytes) -> tuple[int, str]:
    """Status code and reason of a whole response head; ProtocolError when malformed."""
    message = _parse(HttpResponseParserPy, head)
    if message is None:
        raise ProtocolError("incomplete HTTP response head")
    return message.code, message.reason


def connect_request(path: str = RPC_PATHS[0]) -> bytes:
    return f"CONNECT {path} HTTP/1.0\r\n\r\n".encode()


def response(status: int, reason: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    """A whole HTTP/1.0 response that closes the connection after it."""
    payload = body.encode()
    head = (f"HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
    return head.encode() + payload


def route(request: Request, server: Server) -> bytes | None:
    """The answer to ``request`` on the RPC port, or None to switch to RPC (CONNECT)."""
    path = request.path.split("?", 1)[0]
    if request.method == "CONNECT":
        if path in RPC_PATHS:
            return None
        return response(404, "Not Found", f"no RPC endpoint at {path[:100]}; use {RPC_PATHS[0]}\n")
    if request.method in ("GET", "HEAD"):
        if path == DEBUG_PATH:
            from .debug import render_debug_page

            return response(200, "OK", render_debug_page(server), "text/html; charset=utf-8")
        return response(404, "Not Found", f"nothing at {path[:100]}; try {DEBUG_PATH}\n")
    return response(405, "Method Not Allowed", "this port answers CONNECT and GET only\n")
