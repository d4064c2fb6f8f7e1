"""Both sides of a connection's first bytes, sans I/O: no sockets, no event loop.

Server: the first byte decides what the peer speaks: ``{`` opens GeeRPC's Option
line, an upper-case letter an HTTP request (a ``CONNECT /_geerpc_`` switch, after
which the Option follows, or a plain request such as the debug page, answered once),
and anything else is a protocol error. ``ServerHandshake.feed`` takes whatever
arrived and returns a ``Step``: what to write, whether to close, and, once the Option
is in, the Option and the bytes after it (the first frames).

Client: ``ClientHandshake.start`` gives the first bytes to send (the Option, or a
CONNECT for ``http@`` addresses), ``feed`` returns a ``ClientStep``: the Option to
send once the CONNECT is answered, or the server's acknowledging Option and the
bytes after it, or the HandshakeError (a ConnectError) to raise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from . import http
from . import protocol as p
from .errors import HandshakeError, ProtocolError

__all__ = ["Agreed", "ClientHandshake", "ClientStep", "ServerHandshake", "Step", "agree"]


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
        if not data:
            return Step()
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
        except p.BadOption as exc:  # one of ours, with a wrong field: say which
            return Step(prefix + p.encode_option(p.Option(error=str(exc))), close=str(exc), protocol_error=True)
        except ProtocolError as exc:
            return Step(prefix, close=str(exc), abort=True, protocol_error=True)
        if option.error is not None:
            return Step(prefix, close="a client sent a refusal", abort=True, protocol_error=True)
        if option.codec_type != p.CODEC_TYPE:
            reason = f"unsupported codec {option.codec_type[:64]!r}, this server speaks {p.CODEC_TYPE}"
            return Step(prefix + p.encode_option(p.Option(error=reason)), close=reason)
        return Step(prefix, option=option, rest=rest)


@dataclass(frozen=True, slots=True)
class Agreed:
    """What a server and the client whose Option it read settled on, and the Option
    that says so to the client."""

    frame_limit: int  # the largest reply frame to send: the smaller of the two sides'
    handle_timeout: float | None  # seconds a call may run: the smaller of the two; None: no limit
    keepalive: float | None  # the client's ping interval, in seconds, if it pings
    metadata: bool  # replies may carry metadata
    ack: p.Option  # the server's answer


def agree(option: p.Option, *, frame_limit: int, handle_timeout: float | None, max_frame_size: int) -> Agreed:
    """Settle a connection's terms: the client's ``option`` against the server's own
    ``frame_limit`` (for replies), ``handle_timeout`` (seconds, or None) and
    ``max_frame_size`` (for requests, announced in the answer).

    Where both sides set a limit, the smaller applies; a client's frame limit is
    taken as at least 1 KiB. Keepalive is echoed, so the client knows its pings are
    answered. Metadata is taken on requests whatever the client says, and goes on
    replies only to a client that said it takes it; streams are acknowledged when asked.
    """
    if option.max_frame_size:
        frame_limit = min(frame_limit, max(option.max_frame_size, 1024))
    if option.handle_timeout:
        client = option.handle_timeout / 1e9
        handle_timeout = client if handle_timeout is None else min(client, handle_timeout)
    ack = p.Option(handle_timeout=0 if handle_timeout is None else max(1, int(handle_timeout * 1e9)),
                   max_frame_size=max_frame_size, keepalive=option.keepalive,
                   metadata=1 if option.metadata else 0, streams=1 if option.streams else 0)
    return Agreed(frame_limit, handle_timeout, option.keepalive / 1e9 if option.keepalive else None,
                  option.metadata >= 1, ack)


@dataclass(frozen=True, slots=True)
class ClientStep:
    """What the client must do after feeding some bytes to the handshake.

    Send ``write`` first (it is empty when ``error`` is set); then ``error`` set means
    abort the connection and raise it, ``option`` set means the handshake is done.
    """

    write: bytes = b""  # send this next (the Option line once a CONNECT is answered 200)
    error: HandshakeError | None = None  # the handshake failed: abort the connection and raise this
    option: p.Option | None = None  # the server's acknowledging Option: handshake done
    rest: bytes = b""  # bytes after the server's Option line (first reply frames)


class ClientHandshake:
    """Sends the client's Option (behind an HTTP CONNECT with ``via_http``), reads the answer.

    With ``via_http`` the Option goes out only after a ``200`` answer to the CONNECT:
    GeeRPC's Go server drops bytes sent behind the CONNECT head. The CONNECT asks for
    GeeRPC's own path spelling, ``/_geeprc_``, the only one its Go servers answer.

    Call ``start()`` once, then ``feed()`` what arrives until a step has ``option`` or
    ``error`` set. After an error every later ``feed`` returns the same error step
    (a transport may deliver one more chunk before its abort takes effect); feeding
    after the handshake is done raises RuntimeError, because those bytes are reply
    frames and belong to the frame decoder. ``start`` twice, or ``feed`` before
    ``start``, raises RuntimeError too.

    Args:
        address: the server's address, as the error messages name it.
        option: the client's Option, sent as one line.
        via_http: switch with ``CONNECT /_geeprc_ HTTP/1.0`` first (``http@`` addresses).
    """

    def __init__(self, address: str, option: p.Option, *, via_http: bool) -> None:
        self._address = address
        self._line = p.encode_option(option)
        self._http = http.HeadReader(check_request=False) if via_http else None
        self._option = p.OptionReader()
        self._started = False
        self._done = False
        self._failed: ClientStep | None = None

    def start(self) -> bytes:
        """The first bytes to send: the CONNECT request (``via_http``) or the Option line."""
        if self._started:
            raise RuntimeError("ClientHandshake.start() called twice")
        self._started = True
        return http.connect_request() if self._http is not None else self._line

    def feed(self, data: bytes) -> ClientStep:
        """Take bytes from the server; see the class docstring for what the step means."""
        if self._failed is not None:
            return self._failed
        if self._done or not self._started:
            raise RuntimeError("ClientHandshake.feed() " + ("after the handshake is done" if self._done
                                                           else "before start()"))
        write = b""
        if self._http is not None:
            try:
                head, data = self._http.feed(data)
                if head is None:
                    return ClientStep()
                status, reason = http.parse_response_status(head)
            except ProtocolError as exc:
                return self._fail(f"{self._address}: bad answer to CONNECT ({exc})")
            if status != 200:
                return self._fail(f"{self._address} answered CONNECT with {status} {reason}: "
                                  f"an HTTP server, but not a geerpc or GeeRPC RPC port")
            self._http = None
            write = self._line
            if not data:
                return ClientStep(write)
        try:
            line, rest = self._option.feed(data)
            if line is None:
                return ClientStep(write)
            option = p.decode_option(line)
        except ProtocolError as exc:
            return self._fail(f"{self._address}: not a geerpc server ({exc})")
        if option.error is not None:
            return self._fail(f"{self._address} refused the connection: {option.error}")
        self._done = True
        return ClientStep(write, option=option, rest=rest)

    def _fail(self, message: str) -> ClientStep:
        self._failed = ClientStep(error=HandshakeError(message))
        return self._failed
