"""Select modes and the pure functions that pick a server: no I/O, no event loop."""

from __future__ import annotations

import enum
import random
from collections.abc import Sequence

__all__ = ["SelectMode", "pick"]


class SelectMode(enum.Enum):
    """How an XClient picks one server for a call (GeeRPC's SelectMode)."""

    RANDOM = "random"
    ROUND_ROBIN = "round_robin"


def pick(servers: Sequence[str], mode: SelectMode, index: int, rng: random.Random) -> tuple[str, int]:
    """Pick one of ``servers`` (non-empty); return it and the next round-robin index.

    Round-robin takes ``servers[index % len(servers)]``, so with a stable list the
    order is exact; a list that changes keeps the counter and simply wraps.
    """
    if not servers:
        raise ValueError("no servers to pick from")
    if mode is SelectMode.RANDOM:
        return servers[rng.randrange(len(servers))], index
    if mode is SelectMode.ROUND_ROBIN:
        return servers[index % len(servers)], index + 1
    raise ValueError(f"unknown select mode {mode!r}")
