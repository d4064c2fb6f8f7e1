"""Client-side load balancing: discovery, selection, failover and broadcast.

``EtcdDiscovery`` and ``ZooKeeperDiscovery`` are imported on first use, so their
client libraries (the ``geerpc[zookeeper]`` extra's kazoo) are needed only by those
who use them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .discovery import Discovery, MultiServerDiscovery, ServerList
from .registry_discovery import RegistryDiscovery
from .retry import Retry
from .selection import SelectMode
from .xclient import XClient

if TYPE_CHECKING:
    from .etcd_discovery import EtcdDiscovery
    from .zookeeper_discovery import ZooKeeperDiscovery

__all__ = [
    "Discovery",
    "EtcdDiscovery",
    "MultiServerDiscovery",
    "RegistryDiscovery",
    "Retry",
    "SelectMode",
    "ServerList",
    "XClient",
    "ZooKeeperDiscovery",
]


def __getattr__(name: str) -> Any:
    if name == "EtcdDiscovery":
        from .etcd_discovery import EtcdDiscovery

        return EtcdDiscovery
    if name == "ZooKeeperDiscovery":
        from .zookeeper_discovery import ZooKeeperDiscovery

        return ZooKeeperDiscovery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
