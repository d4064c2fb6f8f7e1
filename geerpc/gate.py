"""A server-wide share of the event loop for decoding large frames.

``decoding`` bounds what one frame may cost (``max_elements``: tens of milliseconds at
most), but peers sending such frames back to back, on several connections, could
still keep the loop decoding nearly all the time, and every other client would wait
behind them. The gate caps decoding of frames over ``LARGE_FRAME`` bytes at
``share`` of the loop's time, as measured: each such decode's duration is charged to a
bucket that refills at ``share`` seconds a second and holds at most ``burst`` seconds.
While the bucket is empty, a connection with a large frame waits its turn, first
come first served, with its reading paused, so the waiting costs no memory beyond that
frame. Small frames, which carry every ordinary call, never wait; neither does
anything while nothing floods the loop, since one decode never empties a full bucket
by much.

A well-behaved client's request therefore waits behind at most about one large
decode, however many connections send them.

``DecodeBudget`` is the arithmetic, given ``now``; ``DecodeGate`` keeps the queue
on an event loop.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Final

__all__ = ["BURST", "LARGE_FRAME", "SHARE", "DecodeBudget", "DecodeGate"]

# A frame's own length (not what a read brought: many small frames pipelined are
# ordinary calls) above which it takes turns. Below it, decoding one frame costs
# well under a millisecond even at two elements per byte.
LARGE_FRAME: Final = 64 * 1024

SHARE: Final = 0.5  # of the loop's time, at most, decoding large frames while they queue
BURST: Final = 0.02  # seconds of decoding allowed at once before the share applies


class DecodeBudget:
    """Seconds of decoding allowed: refills at ``share`` a second, up to ``burst``."""

    __slots__ = ("_at", "_left", "burst", "share")

    def __init__(self, share: float = SHARE, burst: float = BURST) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], not {share!r}")
        if not burst > 0:
            raise ValueError(f"burst must be positive, not {burst!r}")
        self.share = share
        self.burst = burst
        self._left = burst  # may go below zero: a decode is charged after it ran
        self._at: float | None = None

    def _refill(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self._left = min(self.burst, self._left + (now - self._at) * self.share)
        if self._at is None or now > self._at:
            self._at = now

    def wait(self, now: float) -> float:
        """Seconds from ``now`` until a large decode may start; 0.0: at once."""
        self._refill(now)
        return 0.0 if self._left > 0 else -self._left / self.share

    def charge(self, seconds: float, now: float) -> None:
        """A decode that ended at ``now`` took ``seconds``."""
        self._refill(now)
        self._left -= seconds


class DecodeGate:
    """The queue of connections waiting to decode a large frame, on one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, budget: DecodeBudget | None = None) -> None:
        self._loop = loop
        self.budget = budget if budget is not None else DecodeBudget()
        self._waiting: collections.deque[Callable[[], None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self.waits = 0  # frames that had to wait their turn, for the debug page and tests

    def admit(self) -> bool:
        """Whether a large frame may be decoded now (no one waits before it, budget left)."""
        return not self._waiting and self.budget.wait(self._loop.time()) == 0.0

    def charge(self, seconds: float) -> None:
        self.budget.charge(seconds, self._loop.time())

    def wait(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` when it is this frame's turn; it decodes the frame, charged."""
        self.waits += 1
        self._waiting.append(resume)
        self._schedule()

    def __len__(self) -> int:
        return len(self._waiting)

    def _schedule(self) -> None:
        if self._timer is None and self._waiting:
            delay = self.budget.wait(self._loop.time())
            self._timer = self._loop.call_later(delay, self._wake)

    def _wake(self) -> None:
        self._timer = None
        while self._waiting and self.budget.wait(self._loop.time()) == 0.0:
            self._waiting.popleft()()
        self._schedule()

    def close(self) -> None:
        """Forget every waiter (the server stopped; their connections are closing)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._waiting.clear()
