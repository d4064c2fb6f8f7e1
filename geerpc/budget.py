"""One server connection's byte budget: what it holds for its peer, in bytes.

The budget (``Server(connection_budget=...)``) covers the requests held, the
arguments of running calls as ``decoding`` charged them plus a reservation for each
one's reply (``dispatch.Calls.charged``), the replies not yet handed to the transport
(``outbox.Outbox``) and those in the transport's buffer, and the frame being received.
The connection asks it whether to take another frame, start a call, or encode a
result now; it keeps the rules of progress (one request within the budget always
runs on a connection that holds nothing else).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .service import Method

if TYPE_CHECKING:
    from .dispatch import Calls
    from .outbox import Outbox
    from .protocol import FrameDecoder

__all__ = ["Budget", "HIGH_WATER"]

HIGH_WATER = 64 * 1024  # the transport's write buffer limit the connection sets


class Budget:
    __slots__ = ("limit", "held", "_sure", "calls", "_outbox", "_frames", "transport")

    def __init__(self, limit: int, max_frame_size: int, outbox: Outbox, frames: FrameDecoder) -> None:
        self.limit = limit
        self.held = 0  # bytes charged for requests held, not yet started
        # While writing is not paused the transport holds under HIGH_WATER, and a frame
        # being received is at most one frame: below this, what the connection holds is
        # under the budget without asking either.
        self._sure = limit - max_frame_size - 4 - HIGH_WATER
        self.calls: Calls | None = None  # set once the connection has made its Calls
        self._outbox = outbox
        self._frames = frames
        self.transport: asyncio.Transport | None = None

    def used(self) -> int:
        """Bytes the connection holds against its budget."""
        assert self.calls is not None
        transport = self.transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        return self.held + self.calls.charged + self._outbox.size + buffered + self._frames.pending

    def reserve(self, method: Method) -> int:
        """Bytes a starting call reserves for its reply: its method's recent reply size,
        or a sixteenth of the budget for a method that has not replied yet (so a first
        burst of calls with large replies cannot all start before one is seen)."""
        size = method.reply_size
        return size if size >= 0 else self.limit >> 4

    def has_room(self) -> bool:
        assert self.calls is not None
        if not self._outbox.paused and self.held + self.calls.charged + self._outbox.size < self._sure:
            return True  # the common case, without asking the transport and the decoder
        return self.used() < self.limit

    def reply_room(self) -> bool:
        """Whether a result may be encoded now: within the budget, or nothing else unsent."""
        if self.has_room():
            return True
        transport = self.transport
        return not (self._outbox.size or (transport.get_write_buffer_size() if transport is not None else 0))
