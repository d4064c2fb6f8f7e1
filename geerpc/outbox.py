"""The reply frames of one server connection on their way to the transport.

Replies are collected and written once per read (and once per loop iteration for
calls that finish later), so a read that carried 64 requests is usually answered by
one ``write``: the biggest single win on the per-call path. While the transport is
paused (the peer does not read) nothing more is handed to it: frames wait here, each
counted once, and go out when it resumes. Large batches are written frame by frame,
each let go once the transport has it, so they are never all held twice (joined,
then copied into the transport's buffer).
"""

from __future__ import annotations

import asyncio

__all__ = ["Outbox"]

JOIN_BELOW = 1024 * 1024  # queued bytes joined into one write below this; written one by one above


class Outbox:
    __slots__ = ("_loop", "transport", "_frames", "size", "paused", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._frames: list[bytes] = []
        self.size = 0  # bytes queued, not yet handed to the transport
        self.paused = False  # the transport asked us to stop writing
        self._scheduled = False

    def __bool__(self) -> bool:
        return bool(self._frames)

    def queue(self, frame: bytes) -> None:
        """Add a frame to the batch written at the end of this read."""
        self._frames.append(frame)
        self.size += len(frame)

    def reply(self, frame: bytes) -> None:
        """Add a frame and make sure it is written soon (at the end of this loop iteration)."""
        self._frames.append(frame)
        self.size += len(frame)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self, force: bool = False) -> None:
        """Hand the queued frames to the transport (unless it is paused, or ``force``)."""
        self._scheduled = False
        frames = self._frames
        if not frames or (self.paused and not force):
            return  # resuming flushes: the transport's buffer would only grow
        size = self.size
        self._frames = []
        self.size = 0
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if len(frames) == 1 or size < JOIN_BELOW:
            transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
            return
        for i, frame in enumerate(frames):
            frames[i] = b""
            transport.write(frame)
        del frame

    def clear(self) -> None:
        """The connection is gone: drop what was not sent."""
        self._frames.clear()
        self.size = 0
