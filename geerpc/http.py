"""HTTP on the RPC port (GeeRPC day 5), sans I/O: the CONNECT switch and small answers.

A server connection whose first byte is an upper-case letter is HTTP: ``HeadReader``
collects the request head, h11 parses it, and ``route`` either switches the
connection to the RPC protocol (``CONNECT /_geerpc_``) or gives the one response the
server sends before it closes. A client dialling ``http@`` reads the answer to its
CONNECT the same way.

No I/O, no asyncio, and nothing from the server: ``route`` gets the debug page as a
callable.

Why we delimit the head ourselves: the bytes after it are RPC frames, which no HTTP
parser should see or buffer. So ``HeadReader`` finds the blank line that ends the head
(within ``MAX_HEAD`` bytes) and only the head goes to h11, which takes bare line feeds
(GeeRPC's Go client writes ``CONNECT /_geeprc_ HTTP/1.0\\n\\n``) as well as CRLF.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final, NamedTuple

import h11

from .errors import ProtocolError

__all__ = [
    "MAX_HEAD", "RPC_PATHS", "CONNECTED", "DEBUG_PATH", "METRICS_PATH", "HeadReader", "Request",
    "parse_request", "parse_response_status", "connect_request", "response", "route",
]

MAX_HEAD: Final = 8192
RPC_PATHS: Final = ("/_geerpc_", "/_geeprc_")  # the second is GeeRPC's own spelling
DEBUG_PATH: Final = "/debug/geerpc"
METRICS_PATH: Final = "/metrics"  # Prometheus's text format (``metrics.py``)
CONNECTED: Final = b"HTTP/1.0 200 Connected to Gee RPC\r\n\r\n"

_HEAD_END: Final = re.compile(rb"\n\r?\n")  # what h11 takes for the end of a head
_TOO_LONG: Final = f"malformed HTTP: head longer than {MAX_HEAD} bytes"


class Request(NamedTuple):
    method: str  # case-sensitive, as sent
    path: str  # the request target, as sent (query included)


class HeadReader:
    """Collects an HTTP head from chunks; ``feed`` returns ``(head, tail)`` when whole.

    ``head`` ends with the blank line; ``tail`` is everything after it, untouched.
    Until then ``feed`` returns ``(None, b"")``. With ``check_request=True`` the first
    line is parsed as soon as it is complete, so a malformed request line is refused
    at once instead of waiting for the blank line.

    Raises ProtocolError for a malformed request line or a head over ``MAX_HEAD`` bytes.
    """

    def __init__(self, *, check_request: bool) -> None:
        self._buffer = bytearray()
        self._check = check_request

    def feed(self, data: bytes) -> tuple[bytes | None, bytes]:
        buffer = self._buffer
        start = max(len(buffer) - 2, 0)  # the blank line may straddle two chunks
        buffer += data
        end = _HEAD_END.search(buffer, start)
        if end is not None:
            cut = end.end()
            if cut > MAX_HEAD:
                raise ProtocolError(_TOO_LONG)
            head, tail = bytes(buffer[:cut]), bytes(buffer[cut:])
            self._buffer = bytearray()
            return head, tail
        if len(buffer) > MAX_HEAD:
            raise ProtocolError(_TOO_LONG)
        if self._check and (line_end := buffer.find(b"\n")) >= 0:
            self._check = False
            # h11 judges whole heads, so the line is closed off as one, with a stand-in
            # for the Host header HTTP/1.1 requires (the real headers are judged later).
            parse_request(bytes(buffer[: line_end + 1]) + b"Host: -\r\n\r\n")
        return None, b""


def _first_event(role: type[h11.CLIENT] | type[h11.SERVER], head: bytes) -> object:
    connection = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)
    try:
        connection.receive_data(head)
        return connection.next_event()
    except h11.ProtocolError as exc:
        raise ProtocolError(f"malformed HTTP: {str(exc)[:200]}") from None


def parse_request(head: bytes) -> Request:
    """Method and path of a whole request head.

    Raises ProtocolError ("malformed HTTP: ...") when the head is malformed or
    incomplete; HTTP/1.1 without a Host header counts as malformed (RFC 9112, 3.2).
    """
    event = _first_event(h11.SERVER, head)
    if not isinstance(event, h11.Request):
        raise ProtocolError("malformed HTTP: incomplete request head")
    # h11 admits only ASCII in both; latin-1 cannot fail
    return Request(event.method.decode("latin-1"), event.target.decode("latin-1"))


def parse_response_status(head: bytes) -> tuple[int, str]:
    """Status code and reason of a whole response head (a 1xx one included).

    Raises ProtocolError ("malformed HTTP: ...") when the head is malformed or incomplete.
    """
    event = _first_event(h11.CLIENT, head)
    if not isinstance(event, (h11.Response, h11.InformationalResponse)):
        raise ProtocolError("malformed HTTP: incomplete response head")
    return event.status_code, event.reason.decode("latin-1")


def connect_request(path: str = RPC_PATHS[1]) -> bytes:
    """The CONNECT head a client sends; by default to GeeRPC's own ``/_geeprc_``.

    GeeRPC's Go servers answer only that spelling; a geerpc server answers both.
    """
    return f"CONNECT {path} HTTP/1.0\r\n\r\n".encode()


def response(status: int, reason: str, body: str | bytes, content_type: str = "text/plain; charset=utf-8", *,
             head_only: bool = False) -> bytes:
    """A whole HTTP/1.0 response that closes the connection after it.

    ``head_only`` (the answer to a HEAD request) sends the headers a GET would get,
    Content-Length included, and no body.
    """
    payload = body.encode() if isinstance(body, str) else body
    head = (f"HTTP/1.0 {status} {reason}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(payload)}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n")
    return head.encode() if head_only else head.encode() + payload


def route(request: Request, debug_page: Callable[[], str],
          metrics: Callable[[], tuple[bytes, str]] | None = None) -> bytes | None:
    """The answer to ``request`` on the RPC port, or None to switch to RPC.

    CONNECT to one of ``RPC_PATHS`` switches (None); GET or HEAD of ``DEBUG_PATH``
    answers ``debug_page()`` as HTML, of ``METRICS_PATH`` the body and content type
    ``metrics()`` gives (404 without it); other paths get 404, other methods 405.
    """
    path = request.path.split("?", 1)[0]
    if request.method == "CONNECT":
        if path in RPC_PATHS:
            return None
        return response(404, "Not Found", f"no RPC endpoint at {path[:100]}; use {RPC_PATHS[0]}\n")
    if request.method in ("GET", "HEAD"):
        head_only = request.method == "HEAD"
        if path == DEBUG_PATH:
            return response(200, "OK", debug_page(), "text/html; charset=utf-8", head_only=head_only)
        if path == METRICS_PATH and metrics is not None:
            return response(200, "OK", *metrics(), head_only=head_only)
        return response(404, "Not Found", f"nothing at {path[:100]}; try {DEBUG_PATH}\n", head_only=head_only)
    return response(405, "Method Not Allowed", "this port answers CONNECT and GET only\n")
