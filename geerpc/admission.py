"""Who gets a connection slot: a cap in all and per peer address, idle ones evicted.

One client must not take every slot. Each peer address (IP) may hold at most
``max_per_ip`` connections, and the server at most ``max_connections``. At either cap
a new connection is not refused while an idle one can go instead: the one that has
been quiet longest is evicted (of that address at the per-address cap; of the address
holding the most connections at the server's cap). Idle means nothing in flight: no
call running, held or waiting to be written, or still no Option. Only when every
connection concerned is busy is the newcomer refused.

Sans-IO: the policy keeps no clock and touches no socket; the server closes what it
is told to evict.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["Admission", "Slot"]


class Slot(Protocol):
    """What the policy reads of a connection."""

    @property
    def idle(self) -> bool: ...

    @property
    def last_active(self) -> float: ...


S = TypeVar("S", bound=Slot)


class Admission(Generic[S]):
    def __init__(self, max_connections: int, max_per_ip: int) -> None:
        self.max_connections = max_connections
        self.max_per_ip = max_per_ip
        self._ips: dict[S, str | None] = {}
        self._by_ip: dict[str, dict[S, None]] = {}

    def __len__(self) -> int:
        return len(self._ips)

    def slots(self) -> list[S]:
        return list(self._ips)

    def count(self, ip: str) -> int:
        return len(self._by_ip.get(ip, ()))

    def admit(self, slot: S, ip: str | None) -> tuple[str | None, S | None]:
        """Admit ``slot`` from ``ip`` (None: a unix socket, no per-address cap).

        Returns ``(refusal, evicted)``: why it is refused (None if admitted), and a
        connection to close to make room, already forgotten here.
        """
        evicted = None
        if ip is not None and self.count(ip) >= self.max_per_ip:
            evicted = _quietest(self._by_ip[ip])
            if evicted is None:
                return f"too many connections from {ip} (max_connections_per_ip={self.max_per_ip})", None
            self.remove(evicted)
        if len(self._ips) >= self.max_connections:
            crowded = max(self._by_ip.values(), key=len, default={})
            victim = _quietest(crowded) or _quietest(self._ips)
            if victim is None:
                return "server has too many connections", None
            self.remove(victim)
            assert evicted is None  # the per-address eviction freed a slot already
            evicted = victim
        self._ips[slot] = ip
        if ip is not None:
            self._by_ip.setdefault(ip, {})[slot] = None
        return None, evicted

    def remove(self, slot: S) -> None:
        """Forget ``slot`` (closed, or evicted); unknown slots are ignored."""
        if slot not in self._ips:
            return
        ip = self._ips.pop(slot)
        if ip is not None:
            peers = self._by_ip[ip]
            del peers[slot]
            if not peers:
                del self._by_ip[ip]


def _quietest(slots: Iterable[S]) -> S | None:
    """The idle slot quiet the longest, or None if none is idle."""
    best = None
    for slot in slots:
        if slot.idle and (best is None or slot.last_active < best.last_active):
            best = slot
    return best
