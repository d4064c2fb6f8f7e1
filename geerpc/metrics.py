"""A server's Prometheus metrics: a collector that reads the server when scraped.

``GET /metrics`` on the RPC port is served from here (``http.route`` calls it). Nothing
is added to a call's path: every number already exists (``service.Method``'s counters
and duration buckets, the connections' ``in_flight``, the protocol-error count) and is
read at scrape time. The text is written by ``prometheus_client`` on a
``CollectorRegistry`` of each server's own, so two servers in one process keep
separate numbers and the library's global registry is never touched. The server
builds this on its first scrape, so a server nobody scrapes never imports
prometheus_client.

Calls to an unknown service or method (NOT_FOUND) are not counted: they reach no
``Method``, and counting them would add work to every call.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Final, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .protocol import ErrorCode
from .service import CANCELLED, DURATION_BUCKETS, Method

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["CODE_NAMES", "CONTENT_TYPE", "ServerCollector", "ServerMetrics"]

CONTENT_TYPE: Final[str] = CONTENT_TYPE_LATEST
#: The ``code`` label of ``geerpc_server_calls_total``; a code not listed shows as its number.
CODE_NAMES: Final[dict[int, str]] = {0: "OK", **{int(c): c.name for c in ErrorCode}, CANCELLED: "CANCELLED"}
_BOUNDS: Final = tuple(repr(bound) for bound in DURATION_BUCKETS) + ("+Inf",)


class _Connection(Protocol):
    @property
    def in_flight(self) -> int: ...


class ServerCollector:
    """A ``prometheus_client`` collector: one server's methods and connections.

    Every code shows as 0 before it first happens, so a counter's first increase is
    not hidden. ``connections`` counts every open connection, the scrape's own
    included (as the debug page does).
    """

    def __init__(self, methods: Mapping[str, Method], connections: Collection[_Connection],
                 protocol_errors: Callable[[], int]) -> None:
        self._methods = methods  # live views, read when scraped
        self._connections = connections
        self._protocol_errors = protocol_errors

    def collect(self) -> Iterator[Metric]:
        labels = ["service", "method"]
        calls = CounterMetricFamily("geerpc_server_calls", "Finished calls, by method and outcome code.",
                                    labels=[*labels, "code"])
        durations = HistogramMetricFamily("geerpc_server_call_duration_seconds",
                                          "Seconds from a request's arrival to its answer.", labels=labels)
        for name in sorted(self._methods):
            method = self._methods[name]
            service, _, short = name.rpartition(".")
            codes = dict.fromkeys(CODE_NAMES, 0) | method.codes
            codes[0] = method.calls - method.errors
            for code, count in sorted(codes.items()):
                calls.add_metric([service, short, CODE_NAMES.get(code, str(code))], count)
            total, cumulative = 0, []
            for bound, count in zip(_BOUNDS, method.buckets):
                total += count
                cumulative.append((bound, float(total)))
            durations.add_metric([service, short], cumulative, sum_value=method.seconds)
        yield calls
        yield durations
        connections = self._connections
        yield GaugeMetricFamily("geerpc_server_calls_in_flight", "Calls running or held now.",
                                value=sum(c.in_flight for c in connections))
        yield GaugeMetricFamily("geerpc_server_connections", "Connections open now.", value=len(connections))
        yield CounterMetricFamily("geerpc_server_protocol_errors", "Connections closed because the peer "
                                  "broke the protocol.", value=self._protocol_errors())


class ServerMetrics:
    """One server's ``CollectorRegistry``, its collector on it, and the scrape's body."""

    def __init__(self, collector: ServerCollector) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)

    def exposition(self) -> tuple[bytes, str]:
        """The metrics in Prometheus's text format, and their content type."""
        return generate_latest(self.registry), CONTENT_TYPE
