"""When RegistryDiscovery asks its registry, and what it makes of the answers.

Layer: xclient, the pure half of ``RegistryDiscovery``: freshness, backoff, watch
refusals and the restart hold, as a state machine with no I/O and no clock of its
own. Every method takes ``now`` (a monotonic clock in seconds) and returns what to
do: whether a read may serve the list it has, whether to apply an answer, whether to
warn about a failure, and what the watch loop does next. The loop around it
(``registry_discovery.py``) does the requests, the sleeping and the logging. This
module imports nothing from asyncio or aiohttp.

Strategy: two counts of failures. Every failed request (plain GET or watch) is one
more in a run of *trouble*, which any good answer ends; it drives the retry backoff
and the "failed" / "answers again" log lines. Failed watches are also counted on
their own, and only a good *watch* clears that count, so a watch that keeps being cut
while plain GETs work (a proxy that drops long polls) still backs off and is warned
about once, not once per cycle.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..backoff import Backoff, FailureLog, Recovery
from .registry_reply import Answer

__all__ = ["MAX_WATCH_PAUSE", "MIN_WATCH_GAP", "RESTART_TOLERANCE", "Applied", "DiscoveryPolicy", "Outcome", "Refusal",
           "Step"]

MIN_WATCH_GAP: Final = 0.1  # coalesces bursts of changes into fewer watch answers
# A registry's start time, as we infer it (now less its uptime), wobbles by the time a
# reply takes to arrive plus its render cache (0.1 s); a move larger than this is a
# restart. A restart within a second of the previous one may go unseen this way, but
# it also breaks the request in flight, which counts as well.
RESTART_TOLERANCE: Final = 1.0
MAX_WATCH_PAUSE: Final = 300.0  # the longest we poll before trying a refused watch again
_FIRST_RETRY: Final = 0.5


class Applied(NamedTuple):
    """What to do with a good answer."""

    apply: bool  # replace the list with the answer's (False: hold the list we have)
    recovered: Recovery | None  # a warned-about run of failures ended: log it
    watch_recovered: Recovery | None  # a warned-about run of watch refusals ended: log it


class Refusal(NamedTuple):
    """What to do after the registry refused a watch (a 4xx): it is up, but says no."""

    warn: bool  # log it at WARNING (else DEBUG)
    pause: float  # seconds of polling before the next watch


@dataclass(frozen=True, slots=True)
class Step:
    """What the watch loop does next: sleep ``delay`` seconds, then GET (``index`` None) or watch."""

    index: int | None
    delay: float


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one request came to."""

    ok: bool
    index: int | None = None  # a good answer's index
    error: str = ""  # why it failed
    refused: bool = False  # a watch answered with a 4xx


class DiscoveryPolicy:
    """The freshness, backoff and restart-hold rules of one ``RegistryDiscovery``.

    ``update_interval``: the longest a served list may be stale while the registry
    answers. ``restart_grace``: how long to hold a non-empty list against an empty
    answer after an evident restart, when the registry does not say its uptime and
    timeout. ``rng`` makes the retry jitter reproducible.

    The rules, in the order the methods apply them:

    * ``fresh()``: a read serves the list it has while a watch is live, while the
      list is younger than ``update_interval``, or while backing off after a failure.
    * ``failed()``: a request failed; retry after exponential backoff from 0.5 s with
      equal jitter, capped at ``update_interval``; warn about the first failure only.
    * ``refused()``: a watch was refused; poll for ``update_interval`` doubling with
      each refusal in a row (at most 300 s, at least ``Retry-After``), then watch again.
    * ``answered()``: an empty answer replaces a non-empty list at once, unless the
      registry evidently restarted (its start time, our clock less its uptime, moved;
      or a request failed since the last answer): a restarted registry starts empty,
      so the empty answer is held while the registry has been up for less than its
      timeout, after which every live server has beaten again, or (when it does not
      say) for ``restart_grace`` seconds.
    * ``next_step()``: after a good answer with an index, watch after a short gap;
      after a good answer without one (GeeRPC's registry) or a refusal, poll after
      ``update_interval``; after a failure, try again when the backoff ends.
    """

    def __init__(self, update_interval: float, restart_grace: float, *, rng: random.Random | None = None) -> None:
        self.update_interval = update_interval
        self.restart_grace = restart_grace
        self.watch_live = False  # the watch loop holds a watch the registry accepted
        self.watch_failures = 0  # failed watches in a row; only a good watch clears it
        self.last_error: str | None = None  # the last failure, until a good answer
        self.last_ok = -math.inf  # when the last good answer arrived
        self.next_attempt = -math.inf  # backing off until then
        self.watch_paused_until = -math.inf  # poll, do not watch, until then
        self._trouble = FailureLog()
        self._refusals = FailureLog()
        # Capped at update_interval: never wait much longer than a poll would.
        self._retry = Backoff(_FIRST_RETRY, update_interval, rng=rng)
        self._pause = Backoff(update_interval, max(MAX_WATCH_PAUSE, update_interval), jitter=0)
        self._registry_start: float | None = None  # the registry's start time on our clock
        self._restart_seen = False  # a restart is evident and no answer was applied since
        self._hold_until: float | None = None

    @property
    def failures(self) -> int:
        """Failed requests in a row; 0 after a good answer."""
        return self._trouble.failures

    def fresh(self, now: float, *, watching: bool) -> bool:
        """Whether a read may serve the list it has without asking the registry.

        ``watching``: the watch loop is running (its watch may be live).
        """
        return ((watching and self.watch_live) or now - self.last_ok < self.update_interval
                or now < self.next_attempt)

    def answered(self, now: float, answer: Answer, *, watch: bool, have_servers: bool) -> Applied:
        """A good answer arrived at ``now`` (to a watch if ``watch``); we hold a non-empty
        list if ``have_servers``."""
        recovered = self._trouble.recovered(now)
        watch_recovered = None
        if watch:
            watch_recovered = self._refusals.recovered(now)
            self.watch_failures = 0
        self.last_ok = now
        self.last_error = None
        self.next_attempt = -math.inf
        if answer.uptime is not None:
            start = answer.received - answer.uptime
            if self._registry_start is not None and abs(start - self._registry_start) > RESTART_TOLERANCE:
                self._restart_seen = True
            self._registry_start = start
        if not answer.servers and have_servers and self._hold(answer, now):
            return Applied(False, recovered, watch_recovered)
        self._restart_seen = False
        self._hold_until = None
        return Applied(True, recovered, watch_recovered)

    def _hold(self, answer: Answer, now: float) -> bool:
        # Only after an evident restart: otherwise an empty answer means the last server
        # left (a DELETE, an expiry), and serving it on would send calls to a dead address.
        if not self._restart_seen:
            return False
        if answer.uptime is not None and answer.timeout:
            return answer.uptime < answer.timeout
        if self._hold_until is None:
            self._hold_until = now + self.restart_grace
        return now < self._hold_until

    def failed(self, now: float, error: str, *, watch: bool) -> bool:
        """A request (a watch if ``watch``) failed at ``now`` with ``error``; True: warn about it."""
        # The first failed watch after good ones is news; later ones repeat it, even
        # when a good plain GET ended the run of trouble in between.
        warn = self._trouble.failed(now, quiet=watch and self.watch_failures > 0)
        self._restart_seen = True  # the registry may have restarted meanwhile
        self.last_error = error
        failures = self._trouble.failures
        if watch:
            self.watch_live = False
            self.watch_failures += 1
            failures = max(failures, self.watch_failures)
        self.next_attempt = now + self._retry.delay(failures)
        return warn

    def refused(self, now: float, retry_after: float) -> Refusal:
        """The registry answered a watch with a 4xx at ``now`` (``Retry-After``: 0 if not said)."""
        warn = self._refusals.failed(now, quiet=self.watch_failures > 0)
        self.watch_live = False
        self.watch_failures += 1
        # Poll for a while, longer while refusals go on, and no sooner than Retry-After.
        pause = max(self._pause.delay(self.watch_failures), min(retry_after, MAX_WATCH_PAUSE))
        self.watch_paused_until = now + pause
        return Refusal(warn, pause)

    def next_step(self, now: float, outcome: Outcome) -> Step:
        """What the watch loop does after ``outcome``."""
        if outcome.ok and outcome.index is not None and now >= self.watch_paused_until:
            self.watch_live = True
            return Step(outcome.index, MIN_WATCH_GAP)
        self.watch_live = False  # start over with a plain GET: the registry may have restarted
        if outcome.ok or outcome.refused:
            # The registry knows no indexes (GeeRPC's), or refuses watches for now: poll.
            return Step(None, self.update_interval)
        return Step(None, max(self.next_attempt - now, MIN_WATCH_GAP))
