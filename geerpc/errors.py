"""The exception hierarchy: one root, and each class says who is at fault.

This module imports nothing from the rest of geerpc, so every layer can use it.
"""

from __future__ import annotations

__all__ = [
    "GeeRPCError",
    "ProtocolError",
    "RemoteError",
    "ServiceNotFound",
    "MethodNotFound",
    "InvalidArguments",
    "Unavailable",
    "ConnectError",
    "HandshakeError",
    "ConnectionClosed",
    "NoServerAvailable",
    "RegistryError",
    "Timeout",
    "ConnectTimeout",
    "CallTimeout",
]


class GeeRPCError(Exception):
    """Root of every error geerpc raises; catch this to catch them all."""


class ProtocolError(GeeRPCError):
    """The peer broke the wire protocol (bad Option, malformed or oversized frame).

    The connection it happened on is closed: the fault is the peer's, and retrying
    against the same peer will fail the same way.
    """


class RemoteError(GeeRPCError):
    """The server could not run the call, or the handler raised.

    ``type`` names the remote exception class (``"ValueError"``, or one of geerpc's
    own such as ``"MethodNotFound"``); ``str(error)`` is its message. The connection
    stays usable. The method may have run: do not retry blindly.
    """

    def __init__(self, type: str, message: str) -> None:
        super().__init__(message)
        self.type = type

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:  # copy/pickle keep .type
        return (self.__class__, (self.type, str(self)))


class ServiceNotFound(RemoteError):
    """The server has no service by the called name: fix the caller's name."""


class MethodNotFound(RemoteError):
    """The service exists but has no public method by the called name."""


class InvalidArguments(RemoteError):
    """The arguments did not fit the method's signature; the method did not run."""


class Unavailable(RemoteError):
    """The server is stopping and did not run the call: safe to retry on another server."""


class ConnectError(GeeRPCError, ConnectionError):
    """Dialing failed: refused, unreachable or a malformed address. Nothing was sent."""


class HandshakeError(ConnectError):
    """The server took the connection but the handshake failed: it closed it, refused
    our Option, or answered with something that is not geerpc's.

    Probably not a geerpc server (a GeeRPC Go server speaks gob and closes the
    connection), or one that refused us for the reason the message gives. Dialing it
    again soon will most likely fail the same way; no call was sent.
    """


class ConnectionClosed(GeeRPCError, ConnectionError):
    """The connection is gone. Every call pending on it fails with this at once.

    A call that was already sent may have run on the server.
    """


class NoServerAvailable(GeeRPCError):
    """Discovery has no server to offer (for this service). Check the registry."""


class RegistryError(GeeRPCError):
    """The registry could not be reached or refused us; the message names it."""


class Timeout(GeeRPCError, TimeoutError):
    """A geerpc deadline passed. Also a built-in ``TimeoutError``."""


class ConnectTimeout(Timeout):
    """Dial and handshake did not finish within ``connect_timeout``."""


class CallTimeout(Timeout):
    """The call did not complete in time: on the client, or enforced by the server.

    The method may have run, or may still be running until the server notices.
    """
