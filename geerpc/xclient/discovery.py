"""Discovery: where an XClient learns which servers exist and which services they offer.

The ``Discovery`` protocol is GeeRPC's interface spelled the Python way. ``ServerList``
holds the list and does selection; the concrete discoveries only decide how the list
is refreshed. Nothing here holds a lock across I/O: selection is synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Iterable, Mapping
from typing import Protocol, runtime_checkable

from ..address import parse_address
from ..errors import NoServerAvailable
from .selection import SelectMode, pick

__all__ = ["Discovery", "FirstList", "ServerList", "MultiServerDiscovery", "ServersUpdate"]

#: What ``update()`` takes: addresses, or a mapping of address to the services it
#: offers (``None`` when unknown: such a server counts as offering every service).
ServersUpdate = Iterable[str] | Mapping[str, Iterable[str] | None]


@runtime_checkable
class Discovery(Protocol):
    """The interface an XClient needs. All of geerpc's discoveries implement it."""

    version: int  # bumped on every change of the list, so users can tell it changed

    async def refresh(self) -> None:
        """Fetch the list from the source now (a no-op for a static list)."""

    def update(self, servers: ServersUpdate) -> None:
        """Replace the list by hand."""

    async def get(self, mode: SelectMode, service: str | None = None) -> str:
        """One server for ``service`` (any when None); raises NoServerAvailable."""

    async def get_all(self, service: str | None = None) -> list[str]:
        """Every server for ``service`` (any when None), sorted; may be empty."""

    async def close(self) -> None:
        """Stop any background work; idempotent."""


class ServerList:
    """A list of servers with the services each offers, and selection over it.

    Subclasses refresh it; ``_ensure_fresh()`` is awaited before every read.
    """

    def __init__(self, servers: ServersUpdate = (), *, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self._servers: dict[str, frozenset[str] | None] = {}
        # GeeRPC starts round-robin at a random index so that many clients do not all
        # hit the first server together.
        self._index = self._rng.randrange(1 << 30)
        self.version = 0
        self.update(servers)

    def update(self, servers: ServersUpdate) -> None:
        """Replace the list. Raises ``ValueError`` for a malformed address."""
        new = _normalise(servers)
        if new != self._servers:
            self._servers = new
            self.version += 1

    async def _ensure_fresh(self) -> None:
        """Hook for subclasses: make the list fresh enough before a read."""

    def _candidates(self, service: str | None) -> list[str]:
        if service is None:
            return sorted(self._servers)
        return sorted(a for a, offered in self._servers.items() if offered is None or service in offered)

    def services(self) -> dict[str, frozenset[str] | None]:
        """A copy of the current list: address -> services (None when unknown)."""
        return dict(self._servers)

    async def get_all(self, service: str | None = None) -> list[str]:
        await self._ensure_fresh()
        return self._candidates(service)

    async def get(self, mode: SelectMode, service: str | None = None) -> str:
        await self._ensure_fresh()
        candidates = self._candidates(service)
        if not candidates:
            what = f" offering {service!r}" if service else ""
            raise NoServerAvailable(f"no server{what} is available ({self._describe()})")
        server, self._index = pick(candidates, mode, self._index, self._rng)
        return server

    async def refresh(self) -> None:
        """Nothing to fetch for a plain list."""

    async def close(self) -> None:
        """Nothing to stop for a plain list."""

    def _describe(self) -> str:
        return f"{len(self._servers)} server(s) known"


class MultiServerDiscovery(ServerList):
    """A fixed list of servers given by hand, changed only by ``update()``."""

    def _describe(self) -> str:
        return f"{len(self._servers)} server(s) given to MultiServerDiscovery"


class FirstList:
    """A watching discovery's first list, which reads wait for, but not for ever.

    ``start(now)`` when the discovery's background task starts; ``listed`` is set once
    the first list is in. ``wait()`` returns at once after that, or when
    ``timeout`` seconds from the start have passed (the source is away: a read serves
    what there is, nothing yet, rather than hang); later reads never wait.
    """

    __slots__ = ("_deadline", "listed", "timeout")

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.listed = asyncio.Event()
        self._deadline = 0.0

    def start(self, now: float) -> None:
        self._deadline = now + self.timeout

    async def wait(self) -> None:
        if self.listed.is_set():
            return
        remaining = self._deadline - asyncio.get_running_loop().time()
        if remaining > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self.listed.wait()

    def describe(self) -> str:
        return "listed" if self.listed.is_set() else "not listed yet"


def _normalise(servers: ServersUpdate) -> dict[str, frozenset[str] | None]:
    if isinstance(servers, str):
        raise ValueError("servers must be a list of addresses, not one string")
    items: Iterable[tuple[str, Iterable[str] | None]]
    if isinstance(servers, Mapping):
        items = servers.items()
    else:
        items = ((address, None) for address in servers)
    result: dict[str, frozenset[str] | None] = {}
    for address, offered in items:
        parse_address(address)  # raises ValueError naming the problem
        if isinstance(offered, str):
            raise ValueError(f"services of {address!r} must be a list of names, not one string")
        result[address] = None if offered is None else frozenset(offered)
    return result
