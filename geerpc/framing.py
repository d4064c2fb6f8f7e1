"""Frames, sans I/O: a 4-byte big-endian length, then that many bytes of payload.

The length is checked against the maximum frame size *before* any of the body is
buffered, so a hostile peer cannot make us allocate more than that.
docs/protocol.md, section 2, is the normative text. ``geerpc.protocol`` re-exports
everything here.
"""

from __future__ import annotations

import struct
from typing import Final

from .errors import ProtocolError

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "FrameDecoder", "frame"]

DEFAULT_MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
_LENGTH: Final = struct.Struct(">I")
_unpack_length = _LENGTH.unpack_from
pack_length: Final = _LENGTH.pack  # the 4-byte prefix alone, for encoders that frame a body of their own
_INITIAL_BUFFER: Final = 16 * 1024  # per connection, grown only as large frames arrive
_MIN_READ: Final = 16 * 1024
_SHRINK_ABOVE: Final = 1024 * 1024
_KEEP: Final = 64 * 1024  # a buffer grown past this is given back once it is not needed
_RELEASE_AFTER: Final = 16  # frames in a row that fit in _KEEP before a grown buffer goes


def frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its 4-byte big-endian length."""
    return pack_length(len(payload)) + payload


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
    needs the room, and replaced by a small one again once large frames stop: when it
    is empty after ``_RELEASE_AFTER`` frames in a row that would fit in ``_KEEP``. So a
    connection whose large frames have stopped gives their memory back within its next
    ``_RELEASE_AFTER`` frames, rather than holding it until it closes, and one that gets large frames all
    the time does not pay for the growth (fresh pages) again each frame.
    """

    __slots__ = ("_buffer", "_start", "_end", "_fitting", "max_frame_size")

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self._buffer = bytearray(_INITIAL_BUFFER)
        self._start = 0  # first byte not yet taken
        self._end = 0  # end of the bytes received
        self._fitting = 0  # frames in a row, taken from a grown buffer, that fit in _KEEP
        self.max_frame_size = max_frame_size

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Room to receive into: at least ``_MIN_READ`` bytes, or the rest of a started frame."""
        need = _MIN_READ
        size = self.head_size()
        if 0 < size <= self.max_frame_size:
            # Room for the rest of the frame, but never more than what has already
            # arrived: a peer must send bytes to make us allocate (at most doubling
            # per read), not merely announce a large length.
            buffered = self._end - self._start
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
        # Bytes move through a memoryview: slicing the bytearray would copy them twice.
        with memoryview(self._buffer) as view:
            if len(self._buffer) - buffered >= need:  # compact: an equal-size move, no resize
                view[:buffered] = view[self._start : self._end]
            else:
                # double (fewer copies for a growing frame), but never past one whole frame
                grown = bytearray(max(buffered + need, min(2 * len(self._buffer), 4 + self.max_frame_size)))
                grown[:buffered] = view[self._start : self._end]
                self._buffer = grown
        self._start, self._end = 0, buffered

    def next_frame(self) -> bytes | memoryview | None:
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
        if size > _SHRINK_ABOVE:
            # A large frame: hand out the buffer itself, not a copy (which would hold the
            # frame twice until it is decoded, and cost its page faults again). What
            # follows the frame moves to a new buffer; this one is never written again.
            rest = self._end - end
            fresh = bytearray(max(_INITIAL_BUFFER, rest))
            with memoryview(buffer) as view:
                fresh[:rest] = view[end : self._end]
            self._buffer, self._start, self._end, self._fitting = fresh, 0, rest, 0
            return memoryview(buffer)[pos + 4 : end]
        with memoryview(buffer) as view:  # one copy (slicing the bytearray, then bytes(), is two)
            payload = bytes(view[pos + 4 : end])
        self._start = end
        if len(buffer) > _KEEP:
            self._fitting = self._fitting + 1 if size + 4 <= _KEEP else 0
            if self._fitting >= _RELEASE_AFTER and end == self._end:
                # Taken here, not at the next read, which on an idle connection may never come.
                self._buffer = bytearray(_INITIAL_BUFFER)
                self._start = self._end = self._fitting = 0
        return payload

    def head_size(self) -> int:
        """The length the first frame not yet taken announces; 0 before its four bytes are in."""
        if self._end - self._start < 4:
            return 0
        (size,) = _unpack_length(self._buffer, self._start)
        return int(size)

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a whole frame (or were not taken)."""
        return self._end - self._start
