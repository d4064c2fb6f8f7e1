"""TLS for geerpc connections: contexts, the server's handshake, failures in words.

A ``tls@host:port`` connection is TLS from its first byte: the Option line, the frames,
and HTTP on the RPC port (the debug page, ``/metrics``) all travel inside it.

- Server: the listener accepts plain TCP, so a connection takes its slot (admission)
  before any TLS work, and ``server_handshake`` then runs the handshake with
  ``loop.start_tls`` under the handshake timeout. A failed or stalled handshake never
  reaches the Option or dispatch; the server counts it.
- Client: ``asyncio``'s own ``create_connection(ssl=...)``; ``client_failure`` turns
  what the ssl module raises into a sentence that names the cause.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

__all__ = ["client_context", "server_handshake", "client_failure", "closed_during_handshake"]


def client_context(context: ssl.SSLContext | None) -> ssl.SSLContext:
    """The context a client dials ``tls@`` with: ``context``, or the system's defaults
    (``ssl.create_default_context()``: certificates and host names verified)."""
    if context is None:
        return ssl.create_default_context()
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(context).__name__}")
    return context


def check_server_context(context: ssl.SSLContext | None) -> ssl.SSLContext | None:
    if context is not None and not isinstance(context, ssl.SSLContext):
        raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(context).__name__}")
    if context is not None and context.check_hostname:
        raise ValueError("a server's ssl context must not check host names "
                         "(make it with ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))")
    return context


async def server_handshake(loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                           protocol: asyncio.BaseProtocol, context: ssl.SSLContext,
                           timeout: float) -> asyncio.Transport:
    """Run the server side of the TLS handshake on an accepted connection.

    Returns the TLS transport (``protocol`` receives its bytes from then on). Raises
    what the handshake raised: ``ssl.SSLError`` for a bad ClientHello or a client
    without the certificate a mutual-TLS context requires, ``TimeoutError`` past
    ``timeout``, ``ConnectionError`` when the peer went away.
    """
    secured = await loop.start_tls(transport, protocol, context, server_side=True,
                                   ssl_handshake_timeout=timeout)
    if secured is None:  # the transport was closing meanwhile
        raise ConnectionResetError("the connection closed during the TLS handshake")
    return secured


def client_failure(address: str, host: str, exc: BaseException) -> str:
    """Why a client's TLS handshake with ``address`` failed, in words (``exc`` from asyncio)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or str(exc)
        return f"cannot connect to {address}: certificate verify failed for host {host!r}: {why}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
            return (f"cannot connect to {address}: the server did not answer in TLS "
                    f"({reason}): a plaintext port? dial tcp@ instead")
        return f"cannot connect to {address}: TLS handshake failed: {reason or exc}"
    if isinstance(exc, (ConnectionError, EOFError)) or isinstance(exc, OSError) and not exc.errno:
        return (f"cannot connect to {address}: the server closed the connection during the TLS "
                f"handshake: a plaintext port (dial tcp@ instead), or it refused our certificate")
    return f"cannot connect to {address}: TLS handshake failed: {exc}"


def closed_during_handshake(address: str, exc: BaseException | None) -> str | None:
    """Why a TLS connection closed before the Option was answered, when the close says
    (the server refusing our certificate shows only once we read); else None."""
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = exc.reason or str(exc)
    if "CERTIFICATE_REQUIRED" in reason:
        return (f"{address} requires a client certificate (mutual TLS): give ssl= a context with "
                f"load_cert_chain()")
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
        return f"{address} refused our client certificate ({reason})"
    return f"{address} ended TLS: {reason}"
