"""The registry's liveness table: pure logic, no I/O, no clock of its own.

Every method that depends on time takes ``now``, a reading of a monotonic clock in
seconds, so tests move a fake clock instead of waiting minutes, and a wall-clock
jump cannot expire anyone. This module imports nothing from asyncio or aiohttp; the
HTTP endpoint in ``server.py`` wraps it.

Strategy: entries live in an insertion-ordered dict and every heartbeat moves its
entry to the end, so the dict stays sorted by last heartbeat as long as ``now``
never goes backwards. Expiry then pops from the front and stops at the first live
entry: O(expired), not O(table), which matters with 100,000 entries.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from ..address import parse_address
from .contract import MAX_SERVICE_NAME, MAX_SERVICES, check_service_name, parse_services

__all__ = [
    "MAX_SERVERS",
    "MAX_SERVICES",
    "MAX_SERVICE_NAME",
    "LivenessTable",
    "ServerInfo",
    "TableFull",
    "canonical_address",
    "check_service_name",
    "parse_services",
]

MAX_SERVERS: Final = 100_000
# Indexes stay below 2**53 so that JSON readers with float numbers (JavaScript) keep them exact.
_MAX_INDEX: Final = 2**53 - 1


class TableFull(Exception):
    """The table holds ``max_servers`` entries and a new address asked to join."""


class ServerInfo(NamedTuple):
    """One live server as a reader sees it (a tuple: cheap to build by the ten thousand)."""

    address: str
    services: frozenset[str] | None  # None: unknown, counts as offering every service
    age: float  # seconds since its last heartbeat


@dataclass(slots=True)
class _Entry:
    services: frozenset[str] | None
    last_seen: float


class LivenessTable:
    """Which servers are alive, what each offers, and an index that marks changes.

    ``timeout`` is how long a server stays listed without a heartbeat (0: forever).
    A server is dropped once ``now >= last heartbeat + timeout``, as GeeRPC does.
    ``index`` changes when membership or a server's services change, never on a
    plain heartbeat refresh. It starts at a random point unless ``first_index`` is
    given, so an index a watcher held from an earlier registry run is (with
    overwhelming probability) not a valid index of this one: compare for equality.
    """

    def __init__(
        self,
        timeout: float,
        *,
        max_servers: int = MAX_SERVERS,
        max_services: int = MAX_SERVICES,
        first_index: int | None = None,
    ) -> None:
        # Infinity would need no special case here, but JSON cannot carry it: 0 means never.
        if not (math.isfinite(timeout) and timeout >= 0):  # also rejects NaN
            raise ValueError(f"timeout must be a finite number of seconds >= 0 (0: never), not {timeout!r}")
        if max_servers < 1:
            raise ValueError("max_servers must be at least 1")
        self.timeout = float(timeout)
        self.max_servers = max_servers
        self.max_services = max_services
        self._entries: dict[str, _Entry] = {}
        # Sorted addresses, recomputed only when the index moves (every membership
        # change moves it), so reads of a large, stable table do not sort each time.
        self._sorted: list[str] = []
        self._sorted_index: int | None = None
        if first_index is None:
            # Leave room above the start so the counter never reaches _MAX_INDEX in practice.
            first_index = random.SystemRandom().randrange(1, 2**52)
        self.index = first_index
        self.expirations = 0  # servers dropped by expire() so far (read by the registry's metrics)

    def __len__(self) -> int:
        return len(self._entries)

    def _bump(self) -> None:
        self.index = self.index + 1 if self.index < _MAX_INDEX else 1

    def heartbeat(self, address: str, services: Iterable[str] | None, now: float) -> bool:
        """Register ``address`` or refresh its heartbeat; return True if the list changed.

        ``address`` must already be valid (see ``canonical_address``). Raises
        ``TableFull`` when a new address would exceed ``max_servers``; existing
        servers can always refresh. Expired entries are dropped first, so a full
        table with stale entries makes room.
        """
        offered = None if services is None else frozenset(services)
        if offered is not None and len(offered) > self.max_services:
            raise ValueError(f"too many services: {len(offered)} (at most {self.max_services})")
        changed = self.expire(now) != []
        entry = self._entries.pop(address, None)
        if entry is None:
            if len(self._entries) >= self.max_servers:
                raise TableFull(f"registry is full ({self.max_servers} servers)")
            entry = _Entry(offered, now)
            changed = True
        else:
            if entry.services != offered:
                entry.services = offered
                changed = True
            entry.last_seen = max(entry.last_seen, now)
        self._entries[address] = entry  # re-insert at the end: the dict stays sorted by last_seen
        if changed:
            self._bump()
        return changed

    def remove(self, address: str, now: float) -> bool:
        """Deregister ``address``; return True if it was listed (and alive)."""
        expired = self.expire(now)
        removed = self._entries.pop(address, None) is not None
        if removed and not expired:
            self._bump()  # expire() already bumped otherwise
        return removed

    def expire(self, now: float) -> list[str]:
        """Drop every server silent for ``timeout`` seconds; return their addresses."""
        if self.timeout == 0 or not self._entries:
            return []
        dropped: list[str] = []
        timeout = self.timeout
        for address, entry in self._entries.items():
            # Written as GeeRPC writes it (alive while last + timeout > now), not as
            # last > now - timeout, which rounds differently at the boundary.
            if entry.last_seen + timeout > now:
                break  # sorted by last_seen: everything after this one is alive too
            dropped.append(address)
        for address in dropped:
            del self._entries[address]
        if dropped:
            self.expirations += len(dropped)
            self._bump()
        return dropped

    def next_expiry(self) -> float | None:
        """When the next entry expires if nobody heartbeats (None: never or empty)."""
        if self.timeout == 0 or not self._entries:
            return None
        first = next(iter(self._entries.values()))
        return first.last_seen + self.timeout

    def _sorted_addresses(self) -> list[str]:
        if self._sorted_index != self.index:
            self._sorted = sorted(self._entries)
            self._sorted_index = self.index
        return self._sorted

    def alive(self, now: float, service: str | None = None) -> list[str]:
        """The live addresses offering ``service`` (every one when None), sorted."""
        self.expire(now)
        addresses = self._sorted_addresses()
        if service is None:
            return list(addresses)
        entries = self._entries
        return [a for a in addresses if (offered := entries[a].services) is None or service in offered]

    def snapshot(self, now: float, service: str | None = None) -> list[ServerInfo]:
        """Like ``alive`` but with each server's services and heartbeat age."""
        return [ServerInfo(a, s, max(0.0, now - seen)) for a, s, seen in self.entries(now, service)]

    def entries(self, now: float, service: str | None = None) -> list[tuple[str, frozenset[str] | None, float]]:
        """``(address, services, last heartbeat)`` of the live servers, sorted: the fast form."""
        self.expire(now)
        entries = self._entries
        if service is None:
            return [(a, (e := entries[a]).services, e.last_seen) for a in self._sorted_addresses()]
        return [
            (a, e.services, e.last_seen)
            for a in self._sorted_addresses()
            if (e := entries[a]).services is None or service in e.services
        ]


def canonical_address(text: str) -> str:
    """Validate an address and return its canonical ``protocol@host:port`` form.

    A bare ``host:port`` becomes ``tcp@host:port``, so two spellings of one server
    share one entry and Go clients (which need the ``protocol@`` prefix) can dial it.
    Raises ``ValueError`` naming the problem.
    """
    return str(parse_address(text))
