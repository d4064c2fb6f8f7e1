"""The registry's Prometheus metrics: a collector that reads the registry when scraped.

``server.py`` serves ``GET /metrics`` from here. Requests only bump the integers in
``Counts``; everything else (how many servers are listed, how many watches are parked)
is read at scrape time through ``Observed``, a narrow view of the registry, so this
module imports nothing of ``server.py`` and nothing of aiohttp. The text is written by
``prometheus_client``, on a ``CollectorRegistry`` of each registry's own: several
registries in one process keep separate counts, and the library's global registry
is never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .table import LivenessTable

__all__ = ["CONTENT_TYPE", "METRICS_PATH", "REFUSALS", "Counts", "Observed", "RegistryCollector", "RegistryMetrics"]

METRICS_PATH: Final = "/metrics"
CONTENT_TYPE: Final[str] = CONTENT_TYPE_LATEST
# The error statuses the registry's handlers answer: a bad request, a missing or wrong
# token, an unknown server on DELETE, too many watchers, a full table. Listed up front
# so each shows as 0 before it first happens (a counter that appears only later hides its first increase).
REFUSALS: Final = (400, 401, 404, 429, 503)


def _no_refusals() -> dict[int, int]:
    return dict.fromkeys(REFUSALS, 0)


@dataclass(slots=True)
class Counts:
    """What the registry counts as requests arrive: plain integers, read when scraped."""

    heartbeats: int = 0  # POSTs that registered or refreshed a server
    deregistrations: int = 0  # DELETEs that removed a listed server
    refused: dict[int, int] = field(default_factory=_no_refusals)  # error replies, by status

    def refuse(self, status: int) -> None:
        self.refused[status] = self.refused.get(status, 0) + 1


class Observed(Protocol):
    """What the collector reads from a registry (``server.Registry`` is one)."""

    @property
    def counts(self) -> Counts: ...

    @property
    def table(self) -> LivenessTable: ...

    @property
    def watchers(self) -> int: ...

    @property
    def max_watchers(self) -> int: ...

    def count_listed(self) -> int:
        """How many servers are listed now, the expired ones dropped first."""
        ...


class RegistryCollector:
    """A ``prometheus_client`` collector: one registry's state as metric families.

    It has no ``describe()``: it sits alone on its own ``CollectorRegistry``, so there
    are no names to check against, and describing would mean collecting at registration.
    """

    def __init__(self, observed: Observed) -> None:
        self._observed = observed

    def collect(self) -> Iterator[Metric]:
        observed = self._observed
        counts = observed.counts
        table = observed.table
        yield GaugeMetricFamily("geerpc_registry_servers", "Servers listed now (alive, not expired).",
                                value=observed.count_listed())
        yield GaugeMetricFamily("geerpc_registry_max_servers", "The most servers the table holds (max_servers).",
                                value=table.max_servers)
        yield GaugeMetricFamily("geerpc_registry_watchers", "Watches (long-poll GETs) parked now.",
                                value=observed.watchers)
        yield GaugeMetricFamily("geerpc_registry_max_watchers", "The most watches parked at once (max_watchers).",
                                value=observed.max_watchers)
        yield CounterMetricFamily("geerpc_registry_heartbeats", "Heartbeats accepted: POSTs that registered "
                                  "or refreshed a server.", value=counts.heartbeats)
        yield CounterMetricFamily("geerpc_registry_deregistrations", "DELETEs that removed a listed server.",
                                  value=counts.deregistrations)
        yield CounterMetricFamily("geerpc_registry_expirations", "Servers dropped for want of a heartbeat.",
                                  value=table.expirations)
        refused = CounterMetricFamily("geerpc_registry_refused", "Requests answered with an error status, "
                                      "by status code.", labels=["code"])
        for status, count in sorted(counts.refused.items()):
            refused.add_metric([str(status)], count)
        yield refused


class RegistryMetrics:
    """One registry's ``CollectorRegistry``, its collector on it, and the scrape's body."""

    def __init__(self, observed: Observed) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RegistryCollector(observed))

    def exposition(self) -> bytes:
        """The metrics in Prometheus's text format (serve it as ``CONTENT_TYPE``)."""
        return generate_latest(self.registry)
