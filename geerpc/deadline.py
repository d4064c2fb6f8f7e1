"""A call's deadline: one point in monotonic time, carried from the caller to the handler.

A ``Deadline`` is made once, where the caller gives a timeout, and passed down as is:
XClient to Client, Client to the wire (sent as the time left), and rebuilt on the
server when the request arrives. Times are the event loop's clock (``loop.time()``);
logic that needs "now" takes it as an argument. ``expired_error`` is the one place an
expired deadline becomes a ``CallTimeout``, so every layer says it the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import CallTimeout

__all__ = ["Deadline"]


@dataclass(frozen=True, slots=True)
class Deadline:
    at: float  # loop time at which the call is given up
    timeout: float  # the seconds the caller gave, for messages

    @classmethod
    def after(cls, timeout: float | None, now: float) -> Deadline | None:
        """The deadline ``timeout`` seconds from ``now``; None for no timeout (or infinity)."""
        if timeout is None or timeout == float("inf"):
            return None
        if not timeout > 0:
            raise ValueError("timeout must be a positive number of seconds or None")
        return cls(now + timeout, timeout)

    def left(self, now: float) -> float:
        """Seconds left (zero or less once passed)."""
        return self.at - now

    def expired(self, now: float) -> bool:
        return now >= self.at

    def expired_error(self, service_method: str, doing: str = "") -> CallTimeout:
        """The error for a call whose deadline passed (``doing``: what it was waiting for)."""
        return CallTimeout(f"{service_method} timed out after {self.timeout:g} s" + (f" {doing}" if doing else ""))
