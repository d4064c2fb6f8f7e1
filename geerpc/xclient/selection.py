"""Select modes, the pure functions that pick a server, and the servers to skip: no I/O,
no event loop (what depends on the time takes ``now``)."""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence

__all__ = ["SelectMode", "Skipped", "pick"]


class SelectMode(enum.Enum):
    """How an XClient picks one server for a call (GeeRPC's SelectMode)."""

    RANDOM = "random"
    ROUND_ROBIN = "round_robin"
    #: power of two choices over peak-EWMA latency x (pending + 1), which the XClient
    #: measures itself (``xclient.balance``); a discovery asked for it picks at random
    LEAST_LOADED = "least_loaded"


def pick(servers: Sequence[str], mode: SelectMode, index: int, rng: random.Random) -> tuple[str, int]:
    """Pick one of ``servers`` (non-empty); return it and the next round-robin index.

    Round-robin takes ``servers[index % len(servers)]``, so with a stable list the
    order is exact; a list that changes keeps the counter and simply wraps.
    LEAST_LOADED needs loads only an XClient has: here it is a random pick.
    """
    if not servers:
        raise ValueError("no servers to pick from")
    if mode is SelectMode.RANDOM or mode is SelectMode.LEAST_LOADED:
        return servers[rng.randrange(len(servers))], index
    if mode is SelectMode.ROUND_ROBIN:
        return servers[index % len(servers)], index + 1
    raise ValueError(f"unknown select mode {mode!r}")


class Skipped:
    """Servers not to pick for a while, each with the reason, as of ``now`` (loop time).

    Strategy: an XClient skips a server whose handshake failed (it took the
    connection but is not a geerpc server: a GeeRPC Go server sharing the registry
    speaks gob). Dialing it again on every pick would only fail over each time, so it
    is left out for ``period`` seconds, then tried once more. Entries expire by
    themselves; an empty table costs a pick nothing.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self._until: dict[str, tuple[float, str]] = {}  # address -> (skipped until, why)

    def __bool__(self) -> bool:
        return bool(self._until)

    def add(self, address: str, reason: str, now: float) -> bool:
        """Skip ``address`` until ``now + period``. True if it was not skipped already
        (so the caller logs it once per period, not once per caller that saw it fail)."""
        new = not self.holds(address, now)
        if new:
            self._until = {a: entry for a, entry in self._until.items() if entry[0] > now}
            self._until[address] = (now + self.period, reason)
        return new

    def holds(self, address: str, now: float) -> bool:
        """True while ``address`` is skipped."""
        entry = self._until.get(address)
        return entry is not None and entry[0] > now

    def fit(self, servers: Sequence[str], now: float) -> list[str]:
        """``servers`` without those skipped, in order. Forgets the expired entries, so
        the table is empty (false) again once the last one has expired."""
        if any(until <= now for until, _ in self._until.values()):
            self._until = {a: entry for a, entry in self._until.items() if entry[0] > now}
        return [a for a in servers if a not in self._until] if self._until else list(servers)

    def why(self, servers: Sequence[str], now: float) -> str:
        """Why ``servers`` (all skipped) may not be called: for NoServerAvailable."""
        reasons = "; ".join(self._until[a][1] for a in servers if self.holds(a, now))
        return (f"{len(servers)} skipped for up to {self.period:g} s because their handshake failed, "
                f"so they are probably not geerpc servers ({reasons})")
