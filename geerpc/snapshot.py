"""A server's state at one moment, as plain typed values.

``Server.snapshot()`` returns a ``ServerSnapshot``: what the debug page renders and
what tests and monitoring read, instead of the server's private members.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .service import Method, Service

__all__ = ["ConnectionStats", "MethodStats", "ServerSnapshot", "ServiceStats", "percentile", "method_stats"]


def percentile(values: Iterable[float], fraction: float) -> float | None:
    """The value at ``fraction`` (0..1) of the sorted values; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass(frozen=True, slots=True)
class MethodStats:
    name: str  # "Service.method"
    kind: str  # "async", "async inline" (no await: run without a task) or "def" (worker thread)
    signature: str | None  # "(a, b)", None when Python cannot tell
    calls: int  # finished calls since start
    errors: int  # of which failed (handler raised, timed out, result not sendable)
    p50: float | None  # seconds, over the last LATENCY_WINDOW calls
    p99: float | None


@dataclass(frozen=True, slots=True)
class ServiceStats:
    name: str
    methods: tuple[MethodStats, ...]  # sorted by name


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    running: int  # calls running
    held: int  # requests received but held at max_in_flight or at the byte budget
    bytes_held: int = 0  # what the connection holds against its budget (Server connection_budget)
    parked: int = 0  # finished calls whose results wait for the peer to read


@dataclass(frozen=True, slots=True)
class ServerSnapshot:
    address: str | None  # None before start()
    uptime: float  # seconds since start() returned (0 before)
    stopping: bool
    services: tuple[ServiceStats, ...]  # sorted by name
    connections: tuple[ConnectionStats, ...]
    protocol_errors: int  # connections closed because the peer broke the protocol

    @property
    def calls_in_flight(self) -> int:
        return sum(c.running + c.held for c in self.connections)

    def method(self, name: str) -> MethodStats:
        """The stats of ``"Service.method"``; KeyError when there is none."""
        for service in self.services:
            for method in service.methods:
                if method.name == name:
                    return method
        raise KeyError(name)


def _kind(method: Method) -> str:
    if not method.is_async:
        return "def"
    return "async inline" if method.inline else "async"


def method_stats(method: Method) -> MethodStats:
    latencies = method.latencies
    signature = method.signature
    return MethodStats(
        name=method.name, kind=_kind(method), signature=None if signature is None else str(signature),
        calls=method.calls, errors=method.errors,
        p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99),
    )


def service_stats(service: Service) -> ServiceStats:
    return ServiceStats(service.name, tuple(method_stats(service.methods[n]) for n in sorted(service.methods)))
