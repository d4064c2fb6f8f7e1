"""A call's deadline: one point in monotonic time, carried from the caller to the handler.

A ``Deadline`` is made once, where the caller gives a timeout, and passed down as is:
XClient to Client, Client to the wire (sent as the time left), and rebuilt on the
server when the request arrives. Times are the event loop's clock (``loop.time()``);
logic that needs "now" takes it as an argument. ``expired_error`` is the one place an
expired deadline becomes a ``CallTimeout``, so every layer says it the same way, and
``check_timeout`` is the one rule for what a caller may pass as a timeout.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Final

from .errors import CallTimeout

__all__ = ["Deadline", "check_timeout"]

_NOT_POSITIVE: Final = "timeout must be a positive number of seconds or None"


def check_timeout(timeout: object) -> float | None:
    """``timeout`` as seconds, or None for no timeout (None or infinity).

    The one rule for every timeout a caller passes (calls, broadcasts, dials):

    Raises:
        TypeError: not a number (a bool or a str counts as not a number).
        ValueError: zero, negative or NaN.
    """
    if timeout is None:
        return None
    # bool is an int, but timeout=True is a mistake, not one second
    if (type(timeout) is not float and type(timeout) is not int
            and (isinstance(timeout, bool) or not isinstance(timeout, numbers.Real))):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    seconds = float(timeout)
    if not seconds > 0:  # NaN too
        raise ValueError(_NOT_POSITIVE)
    return None if math.isinf(seconds) else seconds


@dataclass(frozen=True, slots=True)
class Deadline:
    at: float  # loop time at which the call is given up
    timeout: float  # the seconds the caller gave, for messages

    @classmethod
    def after(cls, timeout: float | None, now: float) -> Deadline | None:
        """The deadline ``timeout`` seconds from ``now``; None for no timeout (or infinity).

        Raises TypeError or ValueError as ``check_timeout`` does.
        """
        seconds = check_timeout(timeout)
        return None if seconds is None else cls(now + seconds, seconds)

    def left(self, now: float) -> float:
        """Seconds left (zero or less once passed)."""
        return self.at - now

    def expired(self, now: float) -> bool:
        return now >= self.at

    def expired_error(self, service_method: str, doing: str = "") -> CallTimeout:
        """The error for a call whose deadline passed (``doing``: what it was waiting for)."""
        return CallTimeout(f"{service_method} timed out after {self.timeout:g} s" + (f" {doing}" if doing else ""))
