"""geerpc: an asyncio RPC framework with a built-in service registry.

Register any object on a ``Server``; its public methods become ``"Service.method"``
endpoints. ``await geerpc.dial("tcp@host:port")`` gives a ``Client``.
"""

from .client import Client, dial
from .errors import (
    CallTimeout,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    GeeRPCError,
    InvalidArguments,
    MethodNotFound,
    NoServerAvailable,
    ProtocolError,
    RegistryError,
    RemoteError,
    ServiceNotFound,
    Timeout,
    Unavailable,
)
from .server import Server
from .sync import SyncClient, SyncXClient

__version__ = "0.1.0"

__all__ = [
    "CallTimeout",
    "Client",
    "ConnectError",
    "ConnectTimeout",
    "ConnectionClosed",
    "GeeRPCError",
    "InvalidArguments",
    "MethodNotFound",
    "NoServerAvailable",
    "ProtocolError",
    "RegistryError",
    "RemoteError",
    "Server",
    "ServiceNotFound",
    "SyncClient",
    "SyncXClient",
    "Timeout",
    "Unavailable",
    "dial",
]
