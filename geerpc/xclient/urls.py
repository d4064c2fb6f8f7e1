"""Registry URLs: which Discovery serves which scheme.

The one place that maps a URL to its discovery, for ``XClient``, ``SyncXClient``
and the CLI. A backend's module (and its optional dependencies) is imported only
when a URL of its scheme is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .discovery import ServerList

if TYPE_CHECKING:
    from ssl import SSLContext

__all__ = ["SCHEMES", "WANT", "discovery_for", "is_registry_url"]

SCHEMES = ("http://", "https://", "etcd://", "etcds://", "zk://")
WANT = "http://..., https://..., etcd://... or zk://..."


def is_registry_url(text: str) -> bool:
    """Whether ``text`` names a registry (and not a server address)."""
    return text.startswith(SCHEMES)


def discovery_for(url: str, *, once: bool = False, timeout: float = 5.0, ssl: SSLContext | None = None,
                  token: str | None = None) -> ServerList:
    """The discovery for the registry at ``url``.

    ``once`` is for a process that lists once and exits (the CLI): no watch, and
    no wait longer than ``timeout`` seconds for the first list. ``ssl`` verifies an
    ``https://`` registry or a TLS etcd; ``token`` is the built-in registry's read
    token (etcd takes its user in the URL). Raises ValueError for a URL of no known
    scheme, one its backend refuses, or ``ssl`` for ZooKeeper (reached without TLS).
    """
    if url.startswith(("etcd://", "etcds://")):
        from .etcd_discovery import EtcdDiscovery

        if once:
            return EtcdDiscovery(url, first_list_timeout=timeout, ssl=ssl)
        return EtcdDiscovery(url, ssl=ssl)
    if url.startswith("zk://"):
        from .zookeeper_discovery import ZooKeeperDiscovery

        if ssl is not None:
            raise ValueError("ZooKeeper is reached without TLS here: no ssl= for a zk:// URL")
        return ZooKeeperDiscovery(url, first_list_timeout=timeout) if once else ZooKeeperDiscovery(url)
    if url.startswith(("http://", "https://")):
        from .registry_discovery import RegistryDiscovery

        if once:
            return RegistryDiscovery(url, watch=False, timeout=min(timeout, 5.0), ssl=ssl, token=token)
        return RegistryDiscovery(url, ssl=ssl, token=token)
    raise ValueError(f"not a registry URL: {url!r} (want {WANT})")
