"""The server's side of a connection's first bytes, sans I/O.

The first byte decides what the peer speaks: ``{`` opens GeeRPC's Option line, an
upper-case letter an HTTP request (a ``CONNECT /_geerpc_`` switch, after which the
Option follows, or a plain request such as the debug page, answered once), and
anything else is a protocol error. ``ServerHandshake.feed`` takes whatever arrived
and returns a ``Step``: what to write, whether to close, and, once the Option is in,
the Option and the bytes after it (the first frames).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import http
from . import protocol as p
from .errors import ProtocolError

__all__ = ["ServerHandshake", "Step"]


@dataclass(frozen=True, slots=True)
class Step:
    """What the connection must do after feeding some bytes to the handshake."""

    write: bytes = b""  # send this to the peer first
    close: str | None = None  # then close the connection, for this reason
    abort: bool = False  # close without flushing: the peer broke the protocol
    protocol_error: bool = False  # count it against the peer
    option: p.Option | None = None  # set when the handshake is complete
    rest: bytes = b""  # what followed the Option line: the first frames


class ServerHandshake:
    """Reads a client's Option (maybe behind an HTTP CONNECT) or serves one HTTP request.

    Args:
        route: answers an HTTP request with a whole response, or None to switch the
            connection to RPC (``CONNECT /_geerpc_``).
    """

    def __init__(self, route: Callable[[http.Request], bytes | None]) -> None:
        self._route = route
        self._option = p.OptionReader()
        self._started = False  # the Option line has begun
        self._http: http.HeadReader | None = None
        self._http_allowed = True

    def feed(self, data: bytes) -> Step:
        prefix = b""
        if self._http is None and not self._started and self._http_allowed and b"A" <= data[:1] <= b"Z":
            self._http = http.HeadReader(check_request=True)
        if self._http is not None:
            try:
                head, data = self._http.feed(data)
                if head is None:
                    return Step()
                answer = self._route(http.parse_request(head))
            except ProtocolError as exc:
                return Step(http.response(400, "Bad Request", f"{exc}\n"), close=str(exc), protocol_error=True)
            self._http = None
            self._http_allowed = False  # one switch per connection
            if answer is not None:
                return Step(answer, close="HTTP request answered")
            prefix = http.CONNECTED
            if not data:
                return Step(prefix)
        return self._feed_option(data, prefix)

    def _feed_option(self, data: bytes, prefix: bytes) -> Step:
        if not self._started and data[:1] != b"{":
            return Step(prefix, close=f"expected the Option, got {bytes(data[:16])!r}", abort=True,
                        protocol_error=True)
        self._started = True
        try:
            line, rest = self._option.feed(data)
            if line is None:
                return Step(prefix)
            option = p.decode_option(line)
        except ProtocolError as exc:
            return Step(prefix, close=str(exc), abort=True, protocol_error=True)
        if option.error is not None:
            return Step(prefix, close="a client sent a refusal", abort=True, protocol_error=True)
        if option.codec_type != p.CODEC_TYPE:
            reason = f"unsupported codec {option.codec_type[:64]!r}, this server speaks {p.CODEC_TYPE}"
            return Step(prefix + p.encode_option(p.Option(error=reason)), close=reason)
        return Step(prefix, option=option, rest=rest)
