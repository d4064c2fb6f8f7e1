"""Least-loaded selection: peak-EWMA latency, power of two choices, outlier ejection.

Layer: pure bookkeeping under ``XClient``'s LEAST_LOADED mode. No I/O, no event loop,
no clock of its own: every method that depends on the time takes ``now`` (the loop's
clock, in seconds) and picks take a ``random.Random``, so tests replay any sequence
with a seeded RNG and a number for a clock. Costs come only from what the XClient
measures itself: when it sends an attempt, when the reply (or the failure) comes.

Strategy (Finagle's ``PeakEwma`` with ``P2C``, and gRFC A50's outlier ejection):

- *Cost.* Each server keeps ``ewma``, an estimate of its latency that a slower reply
  raises at once (the peak) and that otherwise moves toward each reply's latency with
  weight ``1 - exp(-dt / decay)`` (``dt``: time since the last observation). Read at
  ``now``, it has decayed toward zero by ``exp(-dt / decay)``: a server nobody called
  for a while looks cheap again and gets tried. A call still waiting counts as a lower
  bound: the estimate is never below the age of the oldest pending call, so a server
  that stopped answering stops being chosen before any timeout tells us so.
- *Load.* ``estimate * (pending + 1)``; an estimate of zero (nothing measured yet)
  with calls pending is a penalty, so a cold start spreads calls instead of piling
  them on one server.
- *Pick.* Two distinct servers at random, the lower load wins; one server is itself.
- *New servers* start at the median estimate of the others: neither flooded (as a
  zero would be) nor starved (as a penalty would be).
- *Ejection.* ``EJECT_AFTER`` failures in a row (a connection failure, a timeout, an
  Unavailable reply) eject a server for ``EJECT_BASE * times ejected`` seconds, at
  most ``EJECT_MAX``; never more than half the listed servers at once. When its time
  is up, the next pick gives it one probe call: an answer brings it back, anything
  else ejects it again (for longer). Each ``EJECT_BASE`` seconds back without
  ejection forgets one past ejection.
"""

from __future__ import annotations

import enum
import itertools
import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "DECAY",
    "EJECT_AFTER",
    "EJECT_BASE",
    "EJECT_MAX",
    "PENALTY",
    "Balancer",
    "Outcome",
    "ServerStats",
    "Ticket",
]

DECAY: Final = 10.0  # seconds: the time constant of the latency estimate
EJECT_AFTER: Final = 5  # failures in a row that eject a server
EJECT_BASE: Final = 30.0  # seconds of the first ejection; the n-th lasts n times as long
EJECT_MAX: Final = 300.0  # seconds: no ejection lasts longer
PENALTY: Final = 1e6  # the load of a server with calls pending and nothing measured yet


class Outcome(enum.Enum):
    """How one attempt on one server ended, as the balancer counts it."""

    REPLY = "reply"  # an answer, an error reply included: the latency is known, the server is fine
    TIMEOUT = "timeout"  # no answer in time: a failure, and the latency is at least the time waited
    FAILED = "failed"  # a connection failure or Unavailable: a failure, no latency
    CANCELLED = "cancelled"  # given up (a hedge's loser): the latency is at least the time waited


@dataclass(frozen=True, slots=True)
class ServerStats:
    """What the XClient measured of one server (``XClient.stats()``)."""

    pending: int  # attempts sent by this XClient and not finished
    ewma_latency: float | None  # seconds, as of the call to stats(); None when not measured
    ejected_until: float | None  # loop time its ejection ends; None when not ejected
    failures: int  # failures in a row
    ejections: int  # times ejected, less those forgotten


class Ticket:
    """One attempt in flight on ``address``, from ``Balancer.begin`` to ``Balancer.end``.

    ``sent`` is when the request went out (after any dial); the XClient moves it.
    """

    __slots__ = ("address", "key", "probe", "sent")

    def __init__(self, address: str, key: int, now: float, probe: bool) -> None:
        self.address = address
        self.key = key
        self.sent = now
        self.probe = probe


class _Server:
    __slots__ = ("back_at", "ejected_until", "ejections", "ewma", "failures", "pending", "probing", "stamp")

    def __init__(self, ewma: float, now: float) -> None:
        self.ewma = ewma  # the estimate as of ``stamp``
        self.stamp = now
        self.pending: dict[int, float] = {}  # ticket key -> when it began, oldest first
        self.failures = 0
        self.ejections = 0
        self.ejected_until: float | None = None
        self.probing = False  # its probe call is out
        self.back_at = now  # when it last came back from an ejection

    def estimate(self, now: float, decay: float) -> float:
        value = self.ewma * math.exp(-max(0.0, now - self.stamp) / decay) if self.ewma else 0.0
        if self.pending:
            value = max(value, now - next(iter(self.pending.values())))
        return value


class Balancer:
    """Per-server latency, pending calls and ejections, and the least-loaded pick.

    ``decay``: the estimate's time constant (seconds). ``eject``: whether servers
    that keep failing are ejected. Times are the caller's clock.
    """

    def __init__(self, *, decay: float = DECAY, eject: bool = True, eject_after: int = EJECT_AFTER,
                 eject_base: float = EJECT_BASE, eject_max: float = EJECT_MAX) -> None:
        if not (math.isfinite(decay) and decay > 0):
            raise ValueError(f"decay must be a positive number of seconds, not {decay!r}")
        self.decay = decay
        self.eject = eject
        self.eject_after, self.eject_base, self.eject_max = eject_after, eject_base, eject_max
        self._servers: dict[str, _Server] = {}
        self._ejected: set[str] = set()
        self._listed = 0  # servers in the last list seen: at most half of them are ejected
        self._keys = itertools.count(1)

    # ----------------------------------------------------------------- the list

    def update(self, servers: Iterable[str], now: float) -> None:
        """The discovery's list changed: forget servers no longer in it (once idle)."""
        listed = set(servers)
        self._listed = len(listed)
        for address in [a for a, s in self._servers.items() if a not in listed and not s.pending]:
            del self._servers[address]
            self._ejected.discard(address)
        for address in listed:
            self._server(address, now)

    def _server(self, address: str, now: float) -> _Server:
        server = self._servers.get(address)
        if server is None:
            known = [s.estimate(now, self.decay) for s in self._servers.values()]
            measured = [value for value in known if value > 0]
            server = self._servers[address] = _Server(statistics.median(measured) if measured else 0.0, now)
            self._listed = max(self._listed, len(self._servers))
        return server

    # ----------------------------------------------------------------- picking

    def load(self, address: str, now: float) -> float:
        """``estimate * (pending + 1)``, or the penalty when nothing was measured yet."""
        server = self._server(address, now)
        value = server.estimate(now, self.decay)
        if value <= 0.0:
            return PENALTY + len(server.pending) if server.pending else 0.0
        return value * (len(server.pending) + 1)

    def pick(self, servers: Sequence[str], now: float, rng: random.Random,
             avoid: frozenset[str] | set[str] = frozenset(), strict: bool = False) -> str | None:
        """The server for the next attempt among ``servers`` (non-empty), or None.

        Servers in ``avoid`` (those a call already tried) are taken only when there is
        no other, and never when ``strict`` (a hedge must go elsewhere: None then).
        A server whose ejection is over gets this call as its probe; ejected servers
        are otherwise left out while any other remains.
        """
        if not servers:
            raise ValueError("no servers to pick from")
        eligible: Sequence[str] = servers
        if self._ejected:
            due = self._due(servers, avoid, now)
            if due is not None:
                return due
            eligible = [a for a in servers if a not in self._ejected] or servers
        if avoid:
            preferred = [a for a in eligible if a not in avoid]
            if preferred:
                eligible = preferred
            elif strict:
                return None
        count = len(eligible)
        if count == 1:
            return eligible[0]
        first = rng.randrange(count)
        second = rng.randrange(count - 1)
        if second >= first:
            second += 1
        a, b = eligible[first], eligible[second]
        return b if self.load(b, now) < self.load(a, now) else a

    def _due(self, servers: Sequence[str], avoid: frozenset[str] | set[str], now: float) -> str | None:
        """An ejected server whose time is up and whose probe is not out, if any is listed."""
        for address in self._ejected:
            server = self._servers[address]
            assert server.ejected_until is not None
            if not server.probing and server.ejected_until <= now and address not in avoid and address in servers:
                server.probing = True
                return address
        return None

    # ----------------------------------------------------------------- measuring

    def begin(self, address: str, now: float) -> Ticket:
        """An attempt on ``address`` starts (it counts as pending from now)."""
        server = self._server(address, now)
        key = next(self._keys)
        server.pending[key] = now
        probe = server.probing and address in self._ejected
        return Ticket(address, key, now, probe)

    def end(self, ticket: Ticket, outcome: Outcome, now: float) -> None:
        """The attempt ``ticket`` ended with ``outcome`` at ``now``."""
        server = self._servers.get(ticket.address)
        if server is None:  # left the list meanwhile: nothing to learn
            return
        server.pending.pop(ticket.key, None)
        waited = max(0.0, now - ticket.sent)
        if outcome is Outcome.REPLY:
            self._observe(server, waited, now)
            server.failures = 0
            if ticket.probe:
                self._return(ticket.address, server, now)
            return
        if outcome is Outcome.CANCELLED:
            if waited > server.estimate(now, self.decay):  # a lower bound: it can only raise the peak
                server.ewma, server.stamp = waited, now
            if ticket.probe:
                self._eject(ticket.address, server, now, again=True)
            return
        if outcome is Outcome.TIMEOUT:
            self._observe(server, waited, now)
        server.failures += 1
        if ticket.probe:
            self._eject(ticket.address, server, now, again=True)
        elif self.eject and server.failures >= self.eject_after and server.ejected_until is None:
            self._eject(ticket.address, server, now, again=False)

    def _observe(self, server: _Server, latency: float, now: float) -> None:
        decayed = server.ewma * math.exp(-max(0.0, now - server.stamp) / self.decay)
        if latency > decayed:
            server.ewma = latency
        else:
            weight = math.exp(-max(0.0, now - server.stamp) / self.decay)
            server.ewma = server.ewma * weight + latency * (1.0 - weight)
        server.stamp = now

    def _eject(self, address: str, server: _Server, now: float, again: bool) -> None:
        if not again:
            if len(self._ejected) >= max(self._listed, len(self._servers)) // 2:
                return  # never more than half of them: the failures keep counting
            # A server that stayed back a while has part of its record forgotten.
            server.ejections = max(0, server.ejections - int((now - server.back_at) // self.eject_base))
        server.ejections += 1
        server.ejected_until = now + min(self.eject_base * server.ejections, self.eject_max)
        server.probing = False
        self._ejected.add(address)

    def _return(self, address: str, server: _Server, now: float) -> None:
        server.ejected_until = None
        server.probing = False
        server.back_at = now
        self._ejected.discard(address)

    # ----------------------------------------------------------------- reading

    def ejected(self) -> frozenset[str]:
        """The servers ejected now (their probe included)."""
        return frozenset(self._ejected)

    def stats(self, now: float) -> dict[str, ServerStats]:
        """Every known server's numbers as of ``now``, by address."""
        return {address: ServerStats(len(s.pending), s.estimate(now, self.decay) if s.ewma or s.pending else None,
                                     s.ejected_until, s.failures, s.ejections)
                for address, s in sorted(self._servers.items())}
