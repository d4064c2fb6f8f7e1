"""geerpc's built-in registry: the liveness table, its HTTP endpoint, and heartbeats.

``Registry`` keeps GeeRPC's contract (POST ``X-Geerpc-Server`` to register or
refresh, GET answers ``X-Geerpc-Servers``) and adds deregistration, services per
server and watches; see ``docs/registry.md``. ``heartbeat()`` keeps a server
listed; ``announce()`` picks a heartbeat or etcd from the registry URL.
"""

from __future__ import annotations

from .heartbeat import DEFAULT_PERIOD, Announcement, Heartbeat, announce, heartbeat, period_for
from .server import DEFAULT_PATH, DEFAULT_TIMEOUT, Registry
from .table import LivenessTable, ServerInfo, TableFull

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_PERIOD",
    "DEFAULT_TIMEOUT",
    "Announcement",
    "Heartbeat",
    "LivenessTable",
    "Registry",
    "ServerInfo",
    "TableFull",
    "announce",
    "heartbeat",
    "period_for",
]
