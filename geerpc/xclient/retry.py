"""Retries and hedged calls: the policy (``Retry``), the budget both spend, and the
running latency percentile a hedge can wait for.

Layer: pure values and arithmetic under ``XClient`` (``attempts.py`` runs them). No
I/O, no event loop, no clock: what depends on the time takes ``now``. Imports only
``geerpc.backoff`` and the standard library.

Strategy: a retry or a hedge is extra load on servers that may already be in
trouble, so both draw on one ``RetryBudget`` (Finagle's ``RetryBudget``, gRFC A6's
throttling): over the last ``WINDOW`` seconds, the retries and hedges sent stay at
most ``budget`` times the calls made, plus a small ``RESERVE`` so that a client that
makes few calls (or has just started) can still retry one. A failing cluster then
sees at most ``1 + budget`` times its load (and ``RESERVE`` calls a window more),
not ``attempts`` times. A budget of 0 has no reserve: nothing is ever retried.
"""

from __future__ import annotations

import math
import numbers
import random
from dataclasses import dataclass
from typing import Final

from ..backoff import Backoff

__all__ = [
    "DEFAULT_BUDGET",
    "RESERVE",
    "WINDOW",
    "LatencyWindow",
    "Retry",
    "RetryBudget",
    "attempt_share",
    "check_hedge_after",
]

DEFAULT_BUDGET: Final = 0.1  # the budget of an XClient that hedges without a Retry
WINDOW: Final = 10.0  # seconds of calls the budget counts
RESERVE: Final = 10  # retries and hedges a window allows beyond its share (Finagle's minimum)
_BUCKETS: Final = 10


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    number = float(value)
    if math.isnan(number):
        raise ValueError(f"{name} must be a number, not NaN")
    return number


@dataclass(frozen=True, slots=True)
class Retry:
    """How an XClient retries calls marked ``idempotent=True``.

    Args:
        attempts: attempts in all, the first included (1: never retry); default 3.
        backoff: seconds before the first retry, doubling for each next one, with
            jitter (half of each step is random); 0 retries at once. Default 0.05.
        max_backoff: the longest wait between attempts, default 1.0.
        budget: retries and hedges over the last 10 s stay at most this share of the
            calls made in them, plus 10 (0 to 1; 0.1: one extra attempt per ten
            calls; 0: none at all).
        attempt_timeout: seconds one attempt may take before it counts as timed out
            and is retried; default None: each attempt gets an equal share of the
            time the call has left (the last one all of it). A call without a
            timeout has attempts without one too, unless this is set.

    An attempt is retried only after its own timeout, an ``Unavailable`` reply or a
    connection failure, never after any other ``RemoteError``; on another server when
    there is one; only within the call's timeout and the budget.

    Raises:
        TypeError: a value that is not a number (``attempts``: not an int).
        ValueError: ``attempts < 1``, a negative ``backoff``, ``max_backoff`` below
            ``backoff``, ``budget`` outside [0, 1], an ``attempt_timeout`` that is
            not positive.
    """

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0
    budget: float = 0.1
    attempt_timeout: float | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"Retry(attempts=) must be an int, not {type(self.attempts).__name__}")
        if self.attempts < 1:
            raise ValueError(f"Retry(attempts=) must be at least 1 (the first attempt counts), not {self.attempts}")
        backoff = _number(self.backoff, "Retry(backoff=)")
        if not (backoff >= 0 and math.isfinite(backoff)):
            raise ValueError(f"Retry(backoff=) must be zero or a positive number of seconds, not {self.backoff!r}")
        max_backoff = _number(self.max_backoff, "Retry(max_backoff=)")
        if not (max_backoff >= backoff and math.isfinite(max_backoff)):
            raise ValueError(f"Retry(max_backoff=) must be finite and at least backoff ({self.backoff!r}), "
                             f"not {self.max_backoff!r}")
        budget = _number(self.budget, "Retry(budget=)")
        if not 0 <= budget <= 1:
            raise ValueError(f"Retry(budget=) must be between 0 and 1 (a share of the calls made), "
                             f"not {self.budget!r}")
        if self.attempt_timeout is not None:
            timeout = _number(self.attempt_timeout, "Retry(attempt_timeout=)")
            if not timeout > 0:
                raise ValueError(f"Retry(attempt_timeout=) must be a positive number of seconds or None, "
                                 f"not {self.attempt_timeout!r}")

    def backoffs(self, rng: random.Random) -> Backoff | None:
        """The delays between attempts (``Backoff.delay(n)`` before retry n), or None
        when retries go at once."""
        if self.backoff == 0:
            return None
        return Backoff(self.backoff, self.max_backoff, rng=rng)


def check_hedge_after(hedge_after: object) -> float | str | None:
    """``XClient(hedge_after=)`` checked: None, a positive number of seconds, or ``"p95"``.

    Raises TypeError for another type (a bool included) and ValueError for a number
    that is not positive and finite, or another string.
    """
    if hedge_after is None:
        return None
    if isinstance(hedge_after, str):
        if hedge_after != "p95":
            raise ValueError(f"hedge_after must be a number of seconds or 'p95', not {hedge_after!r}")
        return hedge_after
    seconds = _number(hedge_after, "hedge_after")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"hedge_after must be a positive, finite number of seconds, not {hedge_after!r}")
    return seconds


def attempt_share(left: float | None, retries_left: int, attempt_timeout: float | None) -> float | None:
    """Seconds the next attempt may take: ``attempt_timeout`` if set (within ``left``),
    else an equal share of ``left`` among it and the ``retries_left`` after it.
    None: no limit (the call has no deadline and no attempt timeout is set)."""
    if left is None:
        return attempt_timeout
    if attempt_timeout is not None:
        return min(left, attempt_timeout)
    return left / (retries_left + 1)


class RetryBudget:
    """Retries and hedges allowed: at most ``ratio`` times the calls of the last
    ``window`` seconds, plus ``reserve`` (``RESERVE``; none when ``ratio`` is 0).

    Counted in ``_BUCKETS`` slices of the window, so reading costs a few additions
    and old calls fall out a slice at a time.
    """

    def __init__(self, ratio: float, window: float = WINDOW, reserve: int | None = None) -> None:
        self.ratio = ratio
        self.reserve = (RESERVE if ratio > 0 else 0) if reserve is None else reserve
        self._width = window / _BUCKETS
        self._slots = [-1] * _BUCKETS  # which slice of time each bucket holds now
        self._calls = [0] * _BUCKETS
        self._spent = [0] * _BUCKETS

    def _bucket(self, now: float) -> int:
        slot = int(now // self._width)
        index = slot % _BUCKETS
        if self._slots[index] != slot:
            self._slots[index] = slot
            self._calls[index] = self._spent[index] = 0
        return index

    def _sums(self, now: float) -> tuple[int, int]:
        oldest = int(now // self._width) - _BUCKETS + 1
        calls = spent = 0
        for index, slot in enumerate(self._slots):
            if slot >= oldest:
                calls += self._calls[index]
                spent += self._spent[index]
        return calls, spent

    def record_call(self, now: float) -> None:
        """A call was made (its first attempt, not a retry)."""
        self._calls[self._bucket(now)] += 1

    def try_spend(self, now: float) -> bool:
        """Take one retry or hedge from the budget; False when it is used up."""
        calls, spent = self._sums(now)
        if spent + 1 > self.ratio * calls + self.reserve:
            return False
        self._spent[self._bucket(now)] += 1
        return True

    def refund(self, now: float) -> None:
        """Give back a retry or hedge taken but not sent."""
        index = self._bucket(now)
        if self._spent[index]:
            self._spent[index] -= 1

    def usage(self, now: float) -> tuple[int, int]:
        """(calls, retries and hedges) in the window as of ``now``."""
        return self._sums(now)


class LatencyWindow:
    """The running 95th percentile of the last ``size`` latencies (``hedge_after="p95"``).

    The percentile is recomputed every ``every`` new samples, so recording costs O(1)
    and reading nothing; until ``least`` samples are in, there is none (None).
    """

    def __init__(self, size: int = 512, every: int = 32, least: int = 20, q: float = 0.95) -> None:
        self._samples: list[float] = []
        self._size, self._every, self._least, self._q = size, every, least, q
        self._next = 0  # where the next sample goes once the ring is full
        self._fresh = 0  # samples since the last recompute
        self.value: float | None = None

    def record(self, latency: float) -> None:
        samples = self._samples
        if len(samples) < self._size:
            samples.append(latency)
        else:
            samples[self._next] = latency
            self._next = (self._next + 1) % self._size
        self._fresh += 1
        if len(samples) >= self._least and (self.value is None or self._fresh >= self._every):
            self._fresh = 0
            ordered = sorted(samples)
            self.value = ordered[min(len(ordered) - 1, int(len(ordered) * self._q))]
