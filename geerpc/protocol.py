"""The wire protocol, sans I/O: the Option handshake, framing and message codecs.

Bytes go in, messages come out, and back; nothing here touches sockets or asyncio,
so every rule can be tested byte by byte. docs/protocol.md is the normative text.

Strategy: a connection opens with one JSON line (GeeRPC's Option). After it, each
message is a frame: a 4-byte big-endian length, then that many bytes holding one
msgpack array. The length is checked against the maximum frame size *before* any of
the body is buffered, so a hostile peer cannot make us allocate more than that.
"""

from __future__ import annotations

import enum
import json
import math
import struct
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgpack

from .decoding import DEFAULT_MAX_ELEMENTS, SMALL, SMALL_COST, UNPACK_OPTIONS, TooManyElements, unpack
from .errors import ProtocolError

__all__ = [
    "MAGIC_NUMBER", "CODEC_TYPE", "MAX_OPTION_SIZE", "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_MAX_ELEMENTS",
    "MAX_METHOD_LENGTH",
    "MsgType", "ErrorCode", "Option", "BadOption", "OptionReader", "FrameDecoder",
    "Request", "Cancel", "Ping", "PONG_PREFIX", "Response", "BadRequest", "BadResponse",
    "encode_option", "decode_option", "encode_request", "encode_cancel", "encode_ping", "encode_pong", "decode_pong",
    "encode_response", "encode_error", "decode_request", "decode_request_sized", "decode_response", "frame",
    "DECODE_ERRORS", "request_decode_error", "request_from",
]

MAGIC_NUMBER: Final = 0x3BEF5C  # 3927900, as in GeeRPC
CODEC_TYPE: Final = "application/msgpack"
MAX_OPTION_SIZE: Final = 1024  # bytes, newline included
DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
MAX_METHOD_LENGTH: Final = 256
_MAX_SEQ: Final = 2**63 - 1
_MAX_OPTION_INT: Final = 2**63 - 1  # ConnectTimeout, HandleTimeout, MaxFrameSize
_LENGTH: Final = struct.Struct(">I")
_unpack_length = _LENGTH.unpack_from
_pack_length = _LENGTH.pack
_INITIAL_BUFFER: Final = 16 * 1024  # per connection, grown only as large frames arrive
_MIN_READ: Final = 16 * 1024
_SHRINK_ABOVE: Final = 1024 * 1024


class MsgType(enum.IntEnum):
    """The first element of every message array."""

    REQUEST = 0
    RESPONSE = 1
    CANCEL = 2
    PING = 3  # client to server, when keepalive was agreed: [3, id]
    PONG = 4  # server to client: [4, id], the ping's id (0: unasked, "still here")


class ErrorCode(enum.IntEnum):
    """Why a call failed; the first element of a response's error triple."""

    APPLICATION = 1  # the handler raised
    NOT_FOUND = 2  # no such service or method
    INVALID_ARGUMENT = 3  # arguments did not fit; the handler did not run
    TIMEOUT = 4  # the server's handle timeout or the caller's deadline passed
    INTERNAL = 5  # the server could not finish the call (e.g. unencodable result)
    UNAVAILABLE = 6  # the server is stopping; the handler did not run


# --------------------------------------------------------------------------- Option


class Option(NamedTuple):
    """The handshake line. Durations are nanoseconds, as GeeRPC's Go side writes them."""

    magic_number: int = MAGIC_NUMBER
    codec_type: str = CODEC_TYPE
    connect_timeout: int = 10_000_000_000
    handle_timeout: int = 0  # 0 = none
    error: str | None = None  # set only in a server's refusal
    max_frame_size: int = 0  # in the server's acknowledgement; 0 = not stated
    keepalive: int = 0  # the client's ping interval, echoed by a server that answers pings; 0 = none


class BadOption(ProtocolError):
    """An Option with the right magic number but a field that is wrong: worth a refusal line."""


def encode_option(option: Option) -> bytes:
    """One line of JSON with GeeRPC's field names, newline-terminated."""
    fields: dict[str, Any] = {
        "MagicNumber": option.magic_number,
        "CodecType": option.codec_type,
        "ConnectTimeout": option.connect_timeout,
        "HandleTimeout": option.handle_timeout,
    }
    if option.max_frame_size:
        fields["MaxFrameSize"] = option.max_frame_size
    if option.keepalive:
        fields["Keepalive"] = option.keepalive
    if option.error is not None:
        fields = {"Error": option.error}
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


def decode_option(line: bytes) -> Option:
    """Parse and check one Option line (without or with its newline).

    Raises ProtocolError for anything but a JSON object with the right magic number;
    a refusal from a server (``{"Error": ...}``) comes back as ``Option(error=...)``.
    An unknown codec is *not* checked here: the caller decides what it supports.
    """
    # Decoded as UTF-8 first: json.loads(bytes) would guess UTF-16 or UTF-32 too.
    try:
        fields = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("Option must be UTF-8 JSON") from None
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"Option is not valid JSON: {exc}") from None
    if not isinstance(fields, dict):
        raise ProtocolError("Option must be a JSON object")
    if "Error" in fields:
        return Option(error=str(fields["Error"])[:MAX_OPTION_SIZE])
    magic = fields.get("MagicNumber")
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise ProtocolError(f"invalid magic number {str(magic)[:32]!r}, want {MAGIC_NUMBER}")
    codec = fields.get("CodecType", CODEC_TYPE)
    if not isinstance(codec, str):
        raise BadOption("CodecType must be a string")
    durations = []
    for key in ("ConnectTimeout", "HandleTimeout", "MaxFrameSize", "Keepalive"):
        value = fields.get(key, 0)
        # An int64, as Go's time.Duration: a larger one overflows a float conversion.
        if type(value) is not int or not 0 <= value <= _MAX_OPTION_INT:
            raise BadOption(f"{key} must be an integer from 0 to {_MAX_OPTION_INT}, not {json.dumps(value)[:32]}")
        durations.append(value)
    return Option(MAGIC_NUMBER, codec, durations[0], durations[1], None, durations[2], durations[3])


class OptionReader:
    """Collects the Option line from arbitrary chunks, never taking a byte past it.

    ``feed()`` returns ``(line, leftover)`` once the newline has arrived (``leftover``
    is what followed it: the first frames, to hand on), else ``(None, b"")``.
    """

    def __init__(self, limit: int = MAX_OPTION_SIZE) -> None:
        self._buffer = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> tuple[bytes | None, bytes]:
        start = len(self._buffer)
        self._buffer += data
        end = self._buffer.find(b"\n", start)
        if end < 0:
            if len(self._buffer) >= self._limit:
                raise ProtocolError(f"Option line longer than {self._limit} bytes")
            return None, b""
        if end + 1 > self._limit:
            raise ProtocolError(f"Option line longer than {self._limit} bytes")
        line = bytes(self._buffer[:end])
        leftover = bytes(self._buffer[end + 1 :])
        self._buffer = bytearray()
        return line, leftover


# --------------------------------------------------------------------------- framing


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte big-endian length."""
    return _pack_length(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into frame payloads, enforcing the maximum frame size.

    Bytes come in either by ``feed(data)``, or straight into the decoder's own buffer:
    ``get_buffer()`` hands out room to read into and ``buffer_updated(n)`` says how
    much arrived (``asyncio.BufferedProtocol``, so the transport's ``recv_into`` needs
    no allocation per read). ``next_frame()`` hands out complete payloads one at a time
    (so a caller applying backpressure can stop taking them), ``None`` when no complete
    frame is buffered. A bad length raises ProtocolError as soon as its four bytes are
    in, before any of the body is buffered.

    The buffer is never resized in place (a memoryview handed out may still exist): it
    is compacted by moving bytes within it, or replaced by a larger one when a frame
    needs the room, and replaced by a small one again once a large frame is gone.
    """

    __slots__ = ("_buffer", "_start", "_end", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray(_INITIAL_BUFFER)
        self._start = 0  # first byte not yet taken
        self._end = 0  # end of the bytes received
        self.max_frame_size = max_frame_size

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Room to receive into: at least ``_MIN_READ`` bytes, or the rest of a started frame."""
        need = _MIN_READ
        buffered = self._end - self._start
        if buffered >= 4:
            (size,) = _unpack_length(self._buffer, self._start)
            if 0 < size <= self.max_frame_size:
                # Room for the rest of the frame, but never more than what has already
                # arrived: a peer must send bytes to make us allocate (at most doubling
                # per read), not merely announce a large length.
                need = max(need, min(4 + size - buffered, buffered))
        self._make_room(need)
        return memoryview(self._buffer)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        self._end += nbytes

    def feed(self, data: bytes) -> None:
        self._make_room(len(data))
        self._buffer[self._end : self._end + len(data)] = data
        self._end += len(data)

    def take_all(self) -> bytes:
        """Everything buffered and not taken (for a connection still in its handshake)."""
        data = bytes(self._buffer[self._start : self._end])
        self._start = self._end = 0
        return data

    def _make_room(self, need: int) -> None:
        buffered = self._end - self._start
        if not buffered:
            self._start = self._end = 0
            if len(self._buffer) > _SHRINK_ABOVE:  # a large frame has gone: give the memory back
                self._buffer = bytearray(_INITIAL_BUFFER)
        if len(self._buffer) - self._end >= need:
            return
        if len(self._buffer) - buffered >= need:  # compact: an equal-size move, no resize
            self._buffer[:buffered] = self._buffer[self._start : self._end]
        else:
            # double (fewer copies for a growing frame), but never past one whole frame
            grown = bytearray(max(buffered + need, min(2 * len(self._buffer), 4 + self.max_frame_size)))
            grown[:buffered] = self._buffer[self._start : self._end]
            self._buffer = grown
        self._start, self._end = 0, buffered

    def next_frame(self) -> bytes | None:
        buffer, pos = self._buffer, self._start
        available = self._end - pos
        if available < 4:
            return None
        (size,) = _unpack_length(buffer, pos)
        if size == 0 or size > self.max_frame_size:
            raise ProtocolError(f"frame length {size} outside 1..{self.max_frame_size}")
        if available < 4 + size:
            return None
        end = pos + 4 + size
        with memoryview(buffer) as view:  # one copy (slicing the bytearray, then bytes(), is two)
            payload = bytes(view[pos + 4 : end])
        self._start = end
        return payload

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame (or were not taken)."""
        return self._end - self._start


# --------------------------------------------------------------------------- messages


class Request(NamedTuple):
    seq: int
    service_method: str
    timeout: float | None  # seconds the caller will still wait, or None
    args: list[Any]
    kwargs: dict[str, Any]


class Cancel(NamedTuple):
    seq: int


class Ping(NamedTuple):
    id: int


#: The first two bytes of every PONG payload (a 2-element array, then type 4): a client
#: tells a pong from a response by them without decoding.
PONG_PREFIX: Final = b"\x92\x04"


class Response(NamedTuple):
    seq: int
    error: tuple[int, str, str] | None  # (ErrorCode, type name, message)
    result: Any


class BadRequest(Exception):
    """A request whose seq is known but which cannot be served: answer it with an error.

    Raised by ``decode_request``; anything worse is a ProtocolError (close).
    """

    def __init__(self, seq: int, code: ErrorCode, type: str, message: str) -> None:
        super().__init__(message)
        self.seq, self.code, self.type, self.message = seq, code, type, message


_UNPACK_OPTIONS: Final = UNPACK_OPTIONS
_unpackb = msgpack.unpackb
_packb: Callable[[Any], bytes] = msgpack.Packer(use_bin_type=True, autoreset=True).pack
# What msgpack raises for bytes that do not decode (StackError and FormatError are
# ValueError subclasses; ExtraData too).
_DECODE_ERRORS: Final = (ValueError, TypeError, msgpack.UnpackException)


def encode_request(seq: int, service_method: str, args: Any, kwargs: Any, timeout: float | None) -> bytes:
    """A whole request frame. Raises TypeError/ValueError/OverflowError for unencodable args."""
    body = _packb([0, seq, service_method, timeout, args, kwargs])
    return _pack_length(len(body)) + body


def encode_cancel(seq: int) -> bytes:
    body = _packb([2, seq])
    return _pack_length(len(body)) + body


def encode_ping(id: int) -> bytes:
    body = _packb([3, id])
    return _pack_length(len(body)) + body


def encode_pong(id: int) -> bytes:
    body = _packb([4, id])
    return _pack_length(len(body)) + body


def decode_pong(payload: bytes) -> int:
    """The id of a PONG payload (one starting with ``PONG_PREFIX``); ProtocolError if malformed."""
    try:
        message = _unpackb(payload, **_UNPACK_OPTIONS)
    except _DECODE_ERRORS as exc:
        raise ProtocolError(f"undecodable pong: {_decode_error(exc)}") from None
    if type(message) is not list or len(message) != 2 or type(message[1]) is not int or not 0 <= message[1] <= _MAX_SEQ:
        raise ProtocolError("pong must be [4, id] with an id from 0 to 2^63-1")
    return message[1]


def encode_response(seq: int, result: Any) -> bytes:
    """A whole success frame. Raises TypeError/ValueError/OverflowError if unencodable."""
    body = _packb([1, seq, None, result])
    return _pack_length(len(body)) + body


def encode_error(seq: int, code: ErrorCode, type: str, message: str) -> bytes:
    body = _packb([1, seq, [int(code), type, message], None])
    return _pack_length(len(body)) + body


def _decode_error(exc: BaseException) -> str:
    """What went wrong, in words: some of msgpack's errors have an empty message."""
    if isinstance(exc, msgpack.StackError):
        return "nested too deeply (msgpack's nesting limit)"
    return str(exc) or type(exc).__name__


def _valid_seq(seq: Any) -> bool:
    return type(seq) is int and 0 < seq <= _MAX_SEQ


def decode_request(payload: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Request | Cancel | Ping:
    """Decode and validate what a client sent (see ``decode_request_sized``)."""
    return decode_request_sized(payload, max_elements)[0]


def decode_request_sized(payload: bytes,
                         max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[Request | Cancel | Ping, int]:
    """Decode and validate what a client sent; return it and the memory it is charged.

    At most ``max_elements`` elements are decoded (``decoding.unpack``). Raises
    BadRequest when the seq can be read but the rest is wrong (answer with an error,
    keep the connection), ProtocolError when not even that (close).
    """
    size = len(payload)
    try:
        if size <= SMALL and 2 * size <= max_elements:  # decoding.unpack's first case, inlined
            message, cost = _unpackb(payload, **_UNPACK_OPTIONS), size + SMALL_COST * size
        else:
            message, cost = unpack(payload, max_elements)
    except _DECODE_ERRORS as exc:
        raise request_decode_error(payload, exc) from None
    return request_from(message, cost)


#: What msgpack raises for bytes that do not decode (see ``request_decode_error``).
DECODE_ERRORS: Final = (ValueError, TypeError, msgpack.UnpackException)


def request_decode_error(payload: bytes, exc: BaseException) -> BadRequest | ProtocolError:
    """The error for a request payload that did not decode: BadRequest when its seq can be read."""
    seq = _salvage_seq(payload, MsgType.REQUEST, 6)
    if seq is None:
        return ProtocolError(f"undecodable message: {_decode_error(exc)}")
    what = "request too large" if isinstance(exc, TooManyElements) else "undecodable request"
    return BadRequest(seq, ErrorCode.INVALID_ARGUMENT, "InvalidArguments", f"{what}: {_decode_error(exc)}")


def request_from(message: Any, cost: int) -> tuple[Request | Cancel | Ping, int]:
    """Validate a decoded request, cancel or ping (see ``decode_request_sized``)."""
    if type(message) is not list or not message:
        raise ProtocolError("message must be a non-empty msgpack array")
    kind = message[0]
    if kind == 0 and type(kind) is int and len(message) == 6:
        _, seq, method, timeout, args, kwargs = message
        if not _valid_seq(seq):
            raise ProtocolError(f"seq must be an integer from 1 to {_MAX_SEQ}")
        if type(method) is not str:
            raise BadRequest(seq, ErrorCode.INVALID_ARGUMENT, "InvalidArguments", "service_method must be a string")
        if len(method) > MAX_METHOD_LENGTH:
            raise BadRequest(seq, ErrorCode.NOT_FOUND, "MethodNotFound",
                             f"service_method is {len(method)} characters, over {MAX_METHOD_LENGTH}")
        if timeout is not None and (type(timeout) not in (int, float) or not timeout >= 0 or math.isinf(timeout)):
            raise BadRequest(seq, ErrorCode.INVALID_ARGUMENT, "InvalidArguments",
                             "timeout must be a non-negative finite number or nil")
        if type(args) is not list or type(kwargs) is not dict:
            raise BadRequest(seq, ErrorCode.INVALID_ARGUMENT, "InvalidArguments",
                             "args must be an array and kwargs a map")
        return Request(seq, method, timeout, args, kwargs), cost
    if kind == 2 and type(kind) is int and len(message) == 2:
        if not _valid_seq(message[1]):
            raise ProtocolError("cancel: seq must be a positive integer")
        return Cancel(message[1]), cost
    if kind == 3 and type(kind) is int and len(message) == 2:
        if type(message[1]) is not int or not 0 <= message[1] <= _MAX_SEQ:
            raise ProtocolError("ping: id must be an integer from 0 to 2^63-1")
        return Ping(message[1]), cost
    raise ProtocolError(f"not a request or cancel message (type {str(kind)[:16]}, {len(message)} elements)")


def _salvage_seq(payload: bytes, kind: int, length: int) -> int | None:
    """Read just the type and seq of a message whose body would not decode."""
    unpacker = msgpack.Unpacker(**_UNPACK_OPTIONS, max_buffer_size=len(payload) + 1)
    unpacker.feed(payload)
    try:
        if unpacker.read_array_header() != length or unpacker.unpack() != kind:
            return None
        seq = unpacker.unpack()
    except _DECODE_ERRORS:
        return None
    return seq if _valid_seq(seq) else None


class BadResponse(Exception):
    """A response whose seq is known but whose value cannot be decoded: fail that call."""

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(message)
        self.seq = seq


def decode_response(payload: bytes, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Response:
    """Decode and validate what a server sent, at most ``max_elements`` elements of it.

    Raises BadResponse when only the seq can be read (e.g. a result with integer map
    keys, which we refuse to decode), ProtocolError for anything worse.
    """
    try:
        message = unpack(payload, max_elements)[0]
    except _DECODE_ERRORS as exc:
        seq = _salvage_seq(payload, MsgType.RESPONSE, 4)
        if seq is None:
            raise ProtocolError(f"undecodable response: {_decode_error(exc)}") from None
        raise BadResponse(seq, f"the reply could not be decoded: {_decode_error(exc)}") from None
    if type(message) is not list or len(message) != 4 or message[0] != 1 or type(message[0]) is not int:
        raise ProtocolError("response must be a 4-element array starting with 1")
    _, seq, error, result = message
    if not _valid_seq(seq):
        raise ProtocolError("response seq must be a positive integer")
    if error is not None:
        if (type(error) is not list or len(error) != 3 or type(error[0]) is not int
                or type(error[1]) is not str or type(error[2]) is not str):
            raise ProtocolError("response error must be [code, type, message]")
        return Response(seq, (error[0], error[1], error[2]), None)
    return Response(seq, None, result)
