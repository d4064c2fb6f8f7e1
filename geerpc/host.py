"""What a server connection needs from the server that accepted it.

``connection.ServerConnection`` knows its host only through ``ConnectionHost``; the
``Server`` implements it. The interface is the seam between one connection's bytes
and what all connections share: limits, the method table, the stopping state, the
worker threads, the count of open connections and protocol errors, and the answer
to an HTTP request on the RPC port.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .gate import DecodeGate
from .interceptors import ServerInterceptor
from .service import Method
from .workers import Job

if TYPE_CHECKING:
    from .http import Request

__all__ = ["ConnectionHost", "Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """The per-connection limits a server applies (see ``Server`` for each)."""

    max_frame_size: int
    max_in_flight: int
    max_elements: int
    connection_budget: int
    handle_timeout: float | None
    handshake_timeout: float
    frame_timeout: float
    idle_timeout: float | None


class ConnectionHost(Protocol):
    """The server as one of its connections sees it."""

    @property
    def limits(self) -> Limits: ...

    @property
    def interceptors(self) -> tuple[ServerInterceptor, ...]:
        """Run around every call, outermost first."""
        ...

    @property
    def inline_interceptors(self) -> bool:
        """Whether every interceptor awaits nothing but its ``proceed()``."""
        ...

    @property
    def tls(self) -> ssl.SSLContext | None:
        """The context connections shake hands with, or None for plain TCP."""
        ...

    def tls_failed(self, exc: BaseException) -> None:
        """Count a connection whose TLS handshake failed or timed out."""
        ...

    @property
    def decode_gate(self) -> DecodeGate:
        """The share of the loop that decoding large frames may take, shared by all connections."""
        ...

    @property
    def stopping(self) -> bool:
        """True from the moment ``stop()`` begins: new calls are answered Unavailable."""
        ...

    def lookup(self, service_method: str) -> Method | None:
        """The method for ``"Service.method"``, or None."""
        ...

    def has_service(self, name: str) -> bool: ...

    def submit(self, job: Job) -> None:
        """Run a plain ``def`` handler on a worker thread."""
        ...

    def connection_opened(self, connection: object) -> str | None:
        """Admit a new connection; return why it is refused, or None."""
        ...

    def connection_closed(self, connection: object) -> None: ...

    def connection_quiet(self, connection: object) -> None:
        """A connection has no call running or held any more (drain tracking)."""
        ...

    def protocol_error(self) -> None:
        """Count a connection closed because its peer broke the protocol."""
        ...

    def http_answer(self, request: Request) -> bytes | None:
        """A whole HTTP response for ``request``, or None to switch to RPC."""
        ...
