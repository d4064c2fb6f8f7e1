"""The Option line, sans I/O: the one JSON line that opens a connection, both ways.

A client sends GeeRPC's Option; a server answers with its own (an acknowledgement, or
``{"Error": ...}`` and a close). docs/protocol.md, section 1, is the normative text.
``geerpc.protocol`` re-exports everything here.
"""

from __future__ import annotations

import json
from typing import Any, Final, NamedTuple

from .errors import ProtocolError

__all__ = ["MAGIC_NUMBER", "CODEC_TYPE", "MAX_OPTION_SIZE", "Option", "BadOption", "OptionReader",
           "encode_option", "decode_option"]

MAGIC_NUMBER: Final = 0x3BEF5C  # 3927900, as in GeeRPC
CODEC_TYPE: Final = "application/msgpack"
MAX_OPTION_SIZE: Final = 1024  # bytes, newline included
_MAX_OPTION_INT: Final = 2**63 - 1  # every integer field


class Option(NamedTuple):
    """The handshake line. Durations are nanoseconds, as GeeRPC's Go side writes them."""

    magic_number: int = MAGIC_NUMBER
    codec_type: str = CODEC_TYPE
    connect_timeout: int = 10_000_000_000
    handle_timeout: int = 0  # 0 = none
    error: str | None = None  # set only in a server's refusal
    max_frame_size: int = 0  # in the server's acknowledgement; 0 = not stated
    keepalive: int = 0  # the client's ping interval, echoed by a server that answers pings; 0 = none
    metadata: int = 0  # 1: this peer takes call metadata (requests of 7 elements, responses of 5); 0 = not
    streams: int = 0  # 1: this peer takes streams (STREAM, ITEM and CREDIT messages); 0 = not


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
    if option.metadata:
        fields["Metadata"] = option.metadata
    if option.streams:
        fields["Streams"] = option.streams
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
    for key in ("ConnectTimeout", "HandleTimeout", "MaxFrameSize", "Keepalive", "Metadata", "Streams"):
        value = fields.get(key, 0)
        # An int64, as Go's time.Duration: a larger one overflows a float conversion.
        if type(value) is not int or not 0 <= value <= _MAX_OPTION_INT:
            shown = json.dumps(value)[:32]
            raise BadOption(f"{key} must be an integer from 0 to {_MAX_OPTION_INT}, not {shown}")
        durations.append(value)
    return Option(MAGIC_NUMBER, codec, durations[0], durations[1], None, durations[2], durations[3], durations[4],
                  durations[5])


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
