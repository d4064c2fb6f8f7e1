"""Client-side load balancing: discovery, selection, failover and broadcast.

``EtcdDiscovery`` is imported on first use, so etcd's client library (the
``geerpc[etcd]`` extra) is needed only by those who use it.
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

__all__ = [
    "Discovery",
    "EtcdDiscovery",
    "MultiServerDiscovery",
    "RegistryDiscovery",
    "Retry",
    "SelectMode",
    "ServerList",
    "XClient",
]


def __getattr__(name: str) -> Any:
    if name == "EtcdDiscovery":
        from .etcd_discovery import EtcdDiscovery

        return EtcdDiscovery
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
