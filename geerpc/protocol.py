"""The wire protocol, sans I/O: the message codecs, with the Option line (``option``)
and framing (``framing``) re-exported, so ``geerpc.protocol`` is the one name to use.

Bytes go in, messages come out, and back; nothing here touches sockets or asyncio,
so every rule can be tested byte by byte. docs/protocol.md is the normative text.

Strategy: a connection opens with one JSON line (GeeRPC's Option). After it, each
message is a frame: a 4-byte big-endian length, then that many bytes holding one
msgpack array. The length is checked against the maximum frame size *before* any of
the body is buffered, so a hostile peer cannot make us allocate more than that.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgpack

from .decoding import DEFAULT_MAX_ELEMENTS, SMALL, SMALL_COST, UNPACK_OPTIONS, TooManyElements, unpack
from .errors import ProtocolError
from .framing import DEFAULT_MAX_FRAME_SIZE, FrameDecoder, frame
from .framing import pack_length as _pack_length
from .metadata import incoming_problem
from .option import (
    CODEC_TYPE, MAGIC_NUMBER, MAX_OPTION_SIZE, BadOption, Option, OptionReader, decode_option, encode_option,
)

__all__ = [
    "MAGIC_NUMBER", "CODEC_TYPE", "MAX_OPTION_SIZE", "DEFAULT_MAX_FRAME_SIZE", "DEFAULT_MAX_ELEMENTS",
    "MAX_METHOD_LENGTH",
    "MsgType", "ErrorCode", "Option", "BadOption", "OptionReader", "FrameDecoder",
    "Request", "Cancel", "Ping", "PONG_PREFIX", "Response", "BadRequest", "BadResponse",
    "StreamOpen", "Credit", "ITEM_PREFIX", "MAX_WINDOW_ITEMS", "MAX_WINDOW_BYTES",
    "encode_option", "decode_option", "encode_request", "encode_cancel",
    "encode_ping", "encode_pong", "decode_pong",
    "encode_stream_open", "encode_credit", "encode_item", "decode_item",
    "encode_response", "encode_error", "decode_request", "decode_request_sized", "decode_response", "frame",
]

MAX_METHOD_LENGTH: Final = 256
_MAX_SEQ: Final = 2**63 - 1


class MsgType(enum.IntEnum):
    """The first element of every message array."""

    REQUEST = 0
    RESPONSE = 1
    CANCEL = 2
    PING = 3  # client to server, when keepalive was agreed: [3, id]
    PONG = 4  # server to client: [4, id], the ping's id (0: unasked, "still here")
    STREAM = 5  # client to server, when streams were agreed: a request whose reply is a stream
    ITEM = 6  # server to client: [6, seq, item], one item of stream seq
    CREDIT = 7  # client to server: [7, seq, items, bytes], more room for stream seq's items


class ErrorCode(enum.IntEnum):
    """Why a call failed; the first element of a response's error triple."""

    APPLICATION = 1  # the handler raised
    NOT_FOUND = 2  # no such service or method
    INVALID_ARGUMENT = 3  # arguments did not fit; the handler did not run
    TIMEOUT = 4  # the server's handle timeout or the caller's deadline passed
    INTERNAL = 5  # the server could not finish the call (e.g. unencodable result)
    UNAVAILABLE = 6  # the server is stopping; the handler did not run
    UNAUTHENTICATED = 7  # the call carries no credential, or one that does not check out
    PERMISSION_DENIED = 8  # the caller is known but may not make this call


# --------------------------------------------------------------------------- messages


class Request(NamedTuple):
    seq: int
    service_method: str
    timeout: float | None  # seconds the caller will still wait, or None
    args: list[Any]
    kwargs: dict[str, Any]
    metadata: dict[str, str | bytes] | None = None  # None when the request had none


class Cancel(NamedTuple):
    seq: int


class StreamOpen(NamedTuple):
    """A request whose reply is a stream of items, and the window the client grants."""

    request: Request
    items: int  # items the server may send before more credit arrives
    bytes: int  # payload bytes likewise (an item may take it below zero: one item always fits)


class Credit(NamedTuple):
    """The client consumed ``items`` items of ``bytes`` payload bytes: the server may send as many more."""

    seq: int
    items: int
    bytes: int


#: A server keeps at most this much credit per stream, whatever a client grants: what
#: one stream can push at a client that does not read is bounded by the server.
MAX_WINDOW_ITEMS: Final = 1024
MAX_WINDOW_BYTES: Final = 4 * 1024 * 1024


class Ping(NamedTuple):
    id: int


#: The first two bytes of every PONG payload (a 2-element array, then type 4): a client
#: tells a pong from a response by them without decoding.
PONG_PREFIX: Final = b"\x92\x04"
#: The first two bytes of every stream ITEM payload (a 3-element array, then type 6).
ITEM_PREFIX: Final = b"\x93\x06"


class Response(NamedTuple):
    seq: int
    error: tuple[int, str, str] | None  # (ErrorCode, type name, message)
    result: Any
    metadata: dict[str, str | bytes] | None = None  # None when the response had none


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


def encode_request(seq: int, service_method: str, args: Any, kwargs: Any, timeout: float | None,
                   metadata: dict[str, str | bytes] | None = None) -> bytes:
    """A whole request frame. Raises TypeError/ValueError/OverflowError for unencodable args.

    With ``metadata`` (only for a server that agreed to it in the Option) the request
    has seven elements; without, the six every geerpc server takes.
    """
    if metadata:
        body = _packb([0, seq, service_method, timeout, args, kwargs, metadata])
    else:
        body = _packb([0, seq, service_method, timeout, args, kwargs])
    return _pack_length(len(body)) + body


def encode_stream_open(seq: int, service_method: str, args: Any, kwargs: Any, timeout: float | None,
                       metadata: dict[str, str | bytes] | None, items: int, bytes_: int) -> bytes:
    """A whole STREAM frame: a request, and the first window of ``items`` items and ``bytes_`` bytes."""
    body = _packb([5, seq, service_method, timeout, args, kwargs, metadata or None, items, bytes_])
    return _pack_length(len(body)) + body


def encode_credit(seq: int, items: int, bytes_: int) -> bytes:
    body = _packb([7, seq, items, bytes_])
    return _pack_length(len(body)) + body


def encode_item(seq: int, item: Any) -> bytes:
    """A whole ITEM frame. Raises TypeError/ValueError/OverflowError for an unencodable item."""
    body = _packb([6, seq, item])
    return _pack_length(len(body)) + body


def decode_item(payload: bytes | memoryview, max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[int, Any]:
    """The seq and item of an ITEM payload (one starting with ``ITEM_PREFIX``).

    Raises BadResponse when only the seq can be read (the item will not decode: that
    stream fails), ProtocolError for anything worse.
    """
    try:
        if len(payload) <= SMALL and 2 * len(payload) <= max_elements:  # decoding.unpack's first case
            message = _unpackb(payload, **_UNPACK_OPTIONS)
        else:
            message = unpack(payload, max_elements)[0]
    except _DECODE_ERRORS as exc:
        seq = _salvage_seq(payload, MsgType.ITEM, (3,))
        if seq is None:
            raise ProtocolError(f"undecodable stream item: {_decode_error(exc)}") from None
        raise BadResponse(seq, f"a stream item could not be decoded: {_decode_error(exc)}") from None
    if type(message) is not list or len(message) != 3 or not _valid_seq(message[1]):
        raise ProtocolError("stream item must be [6, seq, item] with a positive seq")
    return message[1], message[2]


def encode_cancel(seq: int) -> bytes:
    body = _packb([2, seq])
    return _pack_length(len(body)) + body


def encode_ping(id: int) -> bytes:
    body = _packb([3, id])
    return _pack_length(len(body)) + body


def encode_pong(id: int) -> bytes:
    body = _packb([4, id])
    return _pack_length(len(body)) + body


def decode_pong(payload: bytes | memoryview) -> int:
    """The id of a PONG payload (one starting with ``PONG_PREFIX``); ProtocolError if malformed."""
    try:
        message = _unpackb(payload, **_UNPACK_OPTIONS)
    except _DECODE_ERRORS as exc:
        raise ProtocolError(f"undecodable pong: {_decode_error(exc)}") from None
    if (type(message) is not list or len(message) != 2 or type(message[1]) is not int
            or not 0 <= message[1] <= _MAX_SEQ):
        raise ProtocolError("pong must be [4, id] with an id from 0 to 2^63-1")
    return message[1]


def encode_response(seq: int, result: Any, metadata: dict[str, str | bytes] | None = None) -> bytes:
    """A whole success frame. Raises TypeError/ValueError/OverflowError if unencodable.

    ``metadata`` (only for a client that agreed to it) makes it a five-element response.
    """
    body = _packb([1, seq, None, result, metadata] if metadata else [1, seq, None, result])
    return _pack_length(len(body)) + body


def encode_error(seq: int, code: int, type: str, message: str,
                 metadata: dict[str, str | bytes] | None = None) -> bytes:
    error = [int(code), type, message]
    body = _packb([1, seq, error, None, metadata] if metadata else [1, seq, error, None])
    return _pack_length(len(body)) + body


def _decode_error(exc: BaseException) -> str:
    """What went wrong, in words: some of msgpack's errors have an empty message."""
    if isinstance(exc, msgpack.StackError):
        return "nested too deeply (msgpack's nesting limit)"
    return str(exc) or type(exc).__name__


def _valid_seq(seq: Any) -> bool:
    return type(seq) is int and 0 < seq <= _MAX_SEQ


def decode_request(payload: bytes | memoryview,
                   max_elements: int = DEFAULT_MAX_ELEMENTS) -> Request | Cancel | Ping | StreamOpen | Credit:
    """Decode and validate what a client sent (see ``decode_request_sized``)."""
    return decode_request_sized(payload, max_elements)[0]


def _undecodable(payload: bytes | memoryview, exc: BaseException) -> BadRequest | ProtocolError:
    """The error for a request payload that did not decode: BadRequest when its seq can be read."""
    seq = _salvage_seq(payload, MsgType.REQUEST, (6, 7))
    if seq is None:
        seq = _salvage_seq(payload, MsgType.STREAM, (9,))
    if seq is None:
        return ProtocolError(f"undecodable message: {_decode_error(exc)}")
    what = "request too large" if isinstance(exc, TooManyElements) else "undecodable request"
    return BadRequest(seq, ErrorCode.INVALID_ARGUMENT, "InvalidArguments", f"{what}: {_decode_error(exc)}")


def decode_request_sized(payload: bytes | memoryview,
                         max_elements: int = DEFAULT_MAX_ELEMENTS
                         ) -> tuple[Request | Cancel | Ping | StreamOpen | Credit, int]:
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
        raise _undecodable(payload, exc) from None
    if type(message) is not list or not message:
        raise ProtocolError("message must be a non-empty msgpack array")
    kind, length = message[0], len(message)
    if type(kind) is int and ((kind == 0 and 6 <= length <= 7) or (kind == 5 and length == 9)):
        # A request, or a stream's opening (a request with a window): checked here, not
        # in a function of their own, as this runs for every call.
        seq, method, timeout, args, kwargs = message[1:6]
        if kind == 5:
            items, window_bytes = message[7], message[8]
            if (not _valid_seq(seq) or not _window(items) or not _window(window_bytes) or not items
                    or not window_bytes):
                raise ProtocolError("stream: seq must be a positive integer and the window two integers "
                                    "from 1 to 2^63-1")
        elif not _valid_seq(seq):
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
        if length == 6 or message[6] is None:  # nil: no metadata
            request = Request(seq, method, timeout, args, kwargs)
        else:
            metadata = message[6]
            problem = incoming_problem(metadata)
            if problem is not None:
                raise BadRequest(seq, ErrorCode.INVALID_ARGUMENT, "InvalidArguments", f"metadata: {problem}")
            request = Request(seq, method, timeout, args, kwargs, metadata or None)
        return (request if kind == 0 else StreamOpen(request, items, window_bytes)), cost
    if kind == 2 and type(kind) is int and length == 2:
        if not _valid_seq(message[1]):
            raise ProtocolError("cancel: seq must be a positive integer")
        return Cancel(message[1]), cost
    if kind == 3 and type(kind) is int and length == 2:
        if type(message[1]) is not int or not 0 <= message[1] <= _MAX_SEQ:
            raise ProtocolError("ping: id must be an integer from 0 to 2^63-1")
        return Ping(message[1]), cost
    if kind == 7 and type(kind) is int and length == 4:
        seq, items, size = message[1:]
        if not _valid_seq(seq) or not _window(items) or not _window(size):
            raise ProtocolError("credit must be [7, seq, items, bytes] with integers from 0 to 2^63-1")
        return Credit(seq, items, size), cost
    raise ProtocolError(f"not a request, cancel, ping, stream or credit message (type {str(kind)[:16]}, {length} elements)")


def _window(value: Any) -> bool:
    return type(value) is int and 0 <= value <= _MAX_SEQ


def _salvage_seq(payload: bytes | memoryview, kind: int, lengths: tuple[int, ...]) -> int | None:
    """Read just the type and seq of a message whose body would not decode."""
    unpacker = msgpack.Unpacker(**_UNPACK_OPTIONS, max_buffer_size=len(payload) + 1)
    unpacker.feed(payload)
    try:
        if unpacker.read_array_header() not in lengths or unpacker.unpack() != kind:
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


def decode_response(payload: bytes | memoryview, max_elements: int = DEFAULT_MAX_ELEMENTS) -> Response:
    """Decode and validate what a server sent, at most ``max_elements`` elements of it.

    Raises BadResponse when only the seq can be read (e.g. a result with integer map
    keys, which we refuse to decode), ProtocolError for anything worse.
    """
    try:
        message = unpack(payload, max_elements)[0]
    except _DECODE_ERRORS as exc:
        seq = _salvage_seq(payload, MsgType.RESPONSE, (4, 5))
        if seq is None:
            raise ProtocolError(f"undecodable response: {_decode_error(exc)}") from None
        raise BadResponse(seq, f"the reply could not be decoded: {_decode_error(exc)}") from None
    if type(message) is not list or not 4 <= len(message) <= 5 or message[0] != 1 or type(message[0]) is not int:
        raise ProtocolError("response must be an array of 4 or 5 elements starting with 1")
    seq, error, result = message[1:4]
    if not _valid_seq(seq):
        raise ProtocolError("response seq must be a positive integer")
    metadata = None
    if len(message) == 5 and message[4] is not None:
        metadata = message[4]
        problem = incoming_problem(metadata)
        if problem is not None:
            raise BadResponse(seq, f"the reply's metadata breaks the rules: {problem}")
        metadata = metadata or None
    if error is not None:
        if (type(error) is not list or len(error) != 3 or type(error[0]) is not int
                or type(error[1]) is not str or type(error[2]) is not str):
            raise ProtocolError("response error must be [code, type, message]")
        return Response(seq, (error[0], error[1], error[2]), None, metadata)
    return Response(seq, None, result, metadata)
