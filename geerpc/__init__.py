"""geerpc: an asyncio RPC framework with a built-in service registry.

Register any object on a ``Server``; its public methods become ``"Service.method"``
endpoints. ``await geerpc.dial("tcp@host:port")`` gives a ``Client``.
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    CallTimeout,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    EncodeError,
    GeeRPCError,
    HandshakeError,
    InvalidArguments,
    MethodNotFound,
    NoServerAvailable,
    NotSupported,
    PermissionDenied,
    ProtocolError,
    RegistryError,
    RemoteError,
    RequestTooLarge,
    ServiceNotFound,
    Timeout,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from .auth import BearerTokens
    from .client import Client, dial
    from .context import CallContext, ClientCall, Reply, current_call
    from .server import Server
    from .sync import SyncClient, SyncXClient

# A lazy face: ``import geerpc`` (or ``import geerpc.protocol``) loads neither asyncio
# nor aiohttp; each of these is imported on first use.
_LAZY = {
    "BearerTokens": "auth",
    "CallContext": "context",
    "ClientCall": "context",
    "Reply": "context",
    "current_call": "context",
    "Client": "client",
    "dial": "client",
    "Server": "server",
    "SyncClient": "sync",
    "SyncXClient": "sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "BearerTokens",
    "CallContext",
    "CallTimeout",
    "Client",
    "ClientCall",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "EncodeError",
    "GeeRPCError",
    "HandshakeError",
    "InvalidArguments",
    "MethodNotFound",
    "NoServerAvailable",
    "NotSupported",
    "PermissionDenied",
    "ProtocolError",
    "RegistryError",
    "RemoteError",
    "Reply",
    "RequestTooLarge",
    "Server",
    "ServiceNotFound",
    "SyncClient",
    "SyncXClient",
    "Timeout",
    "Unauthenticated",
    "Unavailable",
    "current_call",
    "dial",
]
