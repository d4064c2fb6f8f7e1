"""Retrying politely: backoff with jitter, and logging a run of failures without spam.

Layer: pure helpers shared by every retry loop (heartbeats, discoveries, etcd). Nothing
here sleeps, reads a clock or logs: ``Backoff`` says how long to wait, ``FailureLog``
says which failures deserve a warning, and the caller's loop does the waiting and the
logging. Time comes in as ``now``, a reading of a monotonic clock in seconds, so tests
move a number instead of waiting. This module imports only the standard library.
"""

from __future__ import annotations

import math
import random
from typing import NamedTuple

__all__ = ["Backoff", "FailureLog", "Recovery"]


class Backoff:
    """Exponential backoff with jitter: ``initial``, ``initial * factor``, ... up to ``maximum``.

    ``jitter`` is the random share of each delay: 0.5 ("equal jitter", the default)
    waits between half and all of the exponential step, so a retry never comes at
    once and a fleet of clients that failed together does not retry in lockstep;
    0 is no randomness, 1 is "full jitter". ``rng`` makes the randomness
    reproducible in tests.

    Use it either way: ``delay(n)`` is the delay after the ``n``-th failure in a row
    (for a caller that counts failures itself), or ``next_delay()`` counts for you
    and ``reset()`` starts over after a success. ``maximum`` may be changed at any
    time (a heartbeat caps its backoff at a period that follows the registry).

    ``maximum`` caps every step, the first included. Raises ``ValueError`` unless
    ``initial`` and ``maximum`` are positive, ``factor >= 1`` and ``0 <= jitter <= 1``.
    """

    def __init__(
        self,
        initial: float,
        maximum: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if not (math.isfinite(initial) and initial > 0 and maximum > 0):
            raise ValueError(f"initial and maximum must be positive, not {initial!r} and {maximum!r}")
        if not factor >= 1:
            raise ValueError(f"factor must be >= 1, not {factor!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {jitter!r}")
        self.initial = float(initial)
        self.maximum = float(maximum)
        self.factor = float(factor)
        self.jitter = float(jitter)
        self.failures = 0  # counted by next_delay(), cleared by reset()
        self._rng = rng if rng is not None else random.Random()

    def step(self, failures: int) -> float:
        """The exponential step (before jitter) after ``failures`` failures in a row."""
        exponent = max(failures, 1) - 1
        try:
            grown = self.initial * self.factor ** min(exponent, 1000)
        except OverflowError:
            grown = math.inf
        return min(self.maximum, grown)

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (1 for the first)."""
        step = self.step(failures)
        return step * (1 - self.jitter) + self._rng.uniform(0, step * self.jitter)

    def next_delay(self) -> float:
        """Count one more failure and return the delay after it."""
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        """A success: the next failure waits ``initial`` (with jitter) again."""
        self.failures = 0


class Recovery(NamedTuple):
    """A run of failures that ended, and was worth a warning when it began."""

    failures: int
    seconds: float  # from its first failure to the recovery


class FailureLog:
    """Which failures of a run deserve a WARNING, and whether its end deserves an INFO.

    The first failure of a run is worth a warning; the rest are not (log them at
    DEBUG), except one every ``every`` seconds (never, by default) so a long outage
    is not silent after its first minute. ``failed(now)`` counts a failure and says
    whether to warn; ``recovered(now)`` ends the run and returns a ``Recovery`` when
    the run was warned about (so the reader who saw the warning learns it is over),
    else None.

    ``failed(now, quiet=True)`` counts a failure but never warns for it: for a
    failure that repeats one already reported elsewhere (a watch that keeps being
    cut while plain requests work).
    """

    def __init__(self, *, every: float = math.inf) -> None:
        self.every = every
        self.failures = 0  # in the current run; 0 when none
        self._since = 0.0  # the run's first failure
        self._warned_at: float | None = None  # the run's last warning, None if it had none
        self._reminded_at = 0.0  # the run's start, or its last warning

    def failed(self, now: float, *, quiet: bool = False) -> bool:
        """Count a failure at ``now``; True when it should be logged at WARNING."""
        self.failures += 1
        if self.failures == 1:
            self._since = self._reminded_at = now
            warn = not quiet
        else:
            warn = not quiet and now - self._reminded_at >= self.every
        if warn:
            self._warned_at = self._reminded_at = now
        return warn

    def recovered(self, now: float) -> Recovery | None:
        """End the run at ``now``; a ``Recovery`` to log if the run was warned about."""
        recovery = None
        if self.failures and self._warned_at is not None:
            recovery = Recovery(self.failures, max(0.0, now - self._since))
        self.failures = 0
        self._warned_at = None
        return recovery
