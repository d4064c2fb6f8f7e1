"""geerpc's built-in registry: the liveness table, its HTTP endpoint, and heartbeats.

``Registry`` keeps GeeRPC's contract (POST ``X-Geerpc-Server`` to register or
refresh, GET answers ``X-Geerpc-Servers``) and adds deregistration, services per
server and watches; see ``docs/registry.md``. ``heartbeat()`` keeps a server
listed; ``announce()`` picks a heartbeat or etcd from the registry URL.

``Registry`` (an aiohttp server) is imported on first use, so a server that only
heartbeats, or a client that only reads the contract, never loads aiohttp.web.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .contract import DEFAULT_PATH, DEFAULT_PERIOD, DEFAULT_TIMEOUT, RELIST_PERIOD, heartbeat_period, period_for
from .heartbeat import Announcement, Heartbeat, announce, heartbeat
from .table import LivenessTable, ServerInfo, TableFull

if TYPE_CHECKING:
    from .server import Registry

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_PERIOD",
    "DEFAULT_TIMEOUT",
    "RELIST_PERIOD",
    "Announcement",
    "Heartbeat",
    "LivenessTable",
    "Registry",
    "ServerInfo",
    "TableFull",
    "announce",
    "heartbeat",
    "heartbeat_period",
    "period_for",
]


def __getattr__(name: str) -> Any:
    if name == "Registry":
        from .server import Registry

        return Registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
