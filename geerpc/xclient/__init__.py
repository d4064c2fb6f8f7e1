"""Client-side load balancing: discovery, selection, failover and broadcast."""

from .discovery import Discovery, MultiServerDiscovery, ServerList
from .selection import SelectMode

__all__ = ["Discovery", "MultiServerDiscovery", "SelectMode", "ServerList"]
