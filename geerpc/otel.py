"""OpenTelemetry for geerpc: a span and a duration for every call, on both sides.

``ServerInterceptor`` and ``ClientInterceptor`` follow the OpenTelemetry RPC semantic
conventions: spans named ``Service/method`` (kind SERVER or CLIENT) with ``rpc.system``
``"geerpc"``, ``rpc.service`` and ``rpc.method``; histograms ``rpc.server.call.duration``
and ``rpc.client.call.duration`` in seconds; ``error.type`` and status ERROR on a
failed call (a RemoteError's ``.type``, else the exception's class name).

The trace crosses processes in the call's metadata (``traceparent``, ``tracestate``)
through the global propagator, W3C trace context unless configured otherwise. The
server span is current while the handler runs, a plain ``def`` handler's worker
thread included, so the calls a handler makes through a client with the
``ClientInterceptor`` are its children.

Both interceptors await nothing but ``proceed()``, so a server keeps running calls
to ``async def`` handlers without an ``await`` inline (``interceptors.awaits_only_proceed``).

Needs the ``otel`` extra (opentelemetry-api); the SDK, or another implementation,
decides where spans and measurements go.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from time import perf_counter
from typing import Any, Final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.propagators.textmap import Getter, Setter
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("geerpc.otel needs opentelemetry-api: pip install 'geerpc[otel]'") from exc

from .context import CallContext, ClientCall, Reply
from .errors import RemoteError

__all__ = ["ClientInterceptor", "ServerInterceptor"]

_SCOPE: Final = "geerpc"
_VERSION: Final = "0.1.0"
_SYSTEM: Final = "geerpc"
_CACHE_LIMIT: Final = 1024  # names whose attributes are kept, per interceptor

Attributes = dict[str, Any]


class _MetadataGetter(Getter[Mapping[str, "str | bytes"]]):
    """Reads propagation fields from a call's metadata (bytes values as UTF-8 text)."""

    def get(self, carrier: Mapping[str, str | bytes], key: str) -> list[str] | None:
        value = carrier.get(key.lower())
        if value is None:
            return None
        return [value.decode("utf-8", "replace") if isinstance(value, bytes) else value]

    def keys(self, carrier: Mapping[str, str | bytes]) -> list[str]:
        return list(carrier)


class _MetadataSetter(Setter[MutableMapping[str, "str | bytes"]]):
    """Writes propagation fields into a call's metadata, keys lowercased as metadata wants."""

    def set(self, carrier: MutableMapping[str, str | bytes], key: str, value: str) -> None:
        carrier[key.lower()] = value


_GETTER: Final = _MetadataGetter()
_SETTER: Final = _MetadataSetter()


def _names(service_method: str) -> tuple[str, Attributes]:
    """The span name and the RPC attributes of ``"Service.method"``."""
    service, _, method = service_method.rpartition(".")
    attributes: Attributes = {"rpc.system": _SYSTEM, "rpc.method": method}
    if service:
        attributes["rpc.service"] = service
        return f"{service}/{method}", attributes
    return method, attributes


def _error_type(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return exc.type
    return type(exc).__name__


def _server_attributes(address: str) -> Attributes:
    """``server.address`` and ``server.port`` from ``tcp@host:port`` (or ``host:port``)."""
    protocol, _, rest = address.rpartition("@")
    if protocol == "unix" or not rest:
        return {}
    host, colon, port = rest.rpartition(":")
    if not colon or not port.isdigit():
        return {}
    return {"server.address": host.strip("[]"), "server.port": int(port)}


def _peer_attributes(peer: str) -> Attributes:
    """``network.peer.address`` and ``network.peer.port`` from ``host:port``."""
    host, colon, port = peer.rpartition(":")
    if not colon or not port.isdigit():
        return {}
    return {"network.peer.address": host.strip("[]"), "network.peer.port": int(port)}


class _Names:
    """Span names and attributes by service method, made once each (a bounded cache)."""

    def __init__(self) -> None:
        self._known: dict[str, tuple[str, Attributes]] = {}

    def __call__(self, service_method: str) -> tuple[str, Attributes]:
        found = self._known.get(service_method)
        if found is None:
            if len(self._known) >= _CACHE_LIMIT:
                self._known.clear()
            found = self._known[service_method] = _names(service_method)
        return found


def _failed(span: trace.Span, exc: BaseException, labels: Attributes) -> Attributes:
    """Mark ``span`` failed by ``exc``; the duration's labels with ``error.type``."""
    kind = _error_type(exc)
    span.set_attribute("error.type", kind)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{kind}: {exc}"))
    return {**labels, "error.type": kind}


class ServerInterceptor:
    """A server span around every call, a child of the caller's span, and its duration.

    ``Server(interceptors=[ServerInterceptor()])``. ``tracer_provider`` and
    ``meter_provider`` default to the global ones, read when this is made.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None) -> None:
        self._tracer = trace.get_tracer(_SCOPE, _VERSION, tracer_provider)
        meter = metrics.get_meter(_SCOPE, _VERSION, meter_provider)
        self._duration = meter.create_histogram(
            "rpc.server.call.duration", unit="s", description="Time a server took to answer a call")
        self._names = _Names()

    async def __call__(self, call: CallContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        name, labels = self._names(call.service_method)
        parent = propagate.extract(call.metadata, getter=_GETTER)
        span = self._tracer.start_span(name, parent, SpanKind.SERVER, {**labels, **_peer_attributes(call.peer)})
        # The span is made current here, before proceed() runs the handler (or
        # submits it to a worker thread, which copies this context).
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        start = perf_counter()
        try:
            result = await proceed()
        except BaseException as exc:
            labels = _failed(span, exc, labels)
            raise
        finally:
            self._duration.record(perf_counter() - start, labels)
            otel_context.detach(token)
            span.end()
        return result


class ClientInterceptor:
    """A client span around every call, sent along in its metadata, and its duration.

    ``geerpc.dial(address, interceptors=[ClientInterceptor()])`` or
    ``XClient(..., interceptors=[ClientInterceptor()])`` (a span per server tried).
    ``tracer_provider`` and ``meter_provider`` default to the global ones, read when
    this is made.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: metrics.MeterProvider | None = None) -> None:
        self._tracer = trace.get_tracer(_SCOPE, _VERSION, tracer_provider)
        meter = metrics.get_meter(_SCOPE, _VERSION, meter_provider)
        self._duration = meter.create_histogram(
            "rpc.client.call.duration", unit="s", description="Time a call took, as its caller saw it")
        self._names = _Names()

    async def __call__(self, call: ClientCall, proceed: Callable[[], Awaitable[Reply]]) -> Reply:
        name, labels = self._names(call.service_method)
        start = perf_counter()
        with self._tracer.start_as_current_span(
                name, kind=SpanKind.CLIENT, attributes={**labels, **_server_attributes(call.address)},
                record_exception=False, set_status_on_exception=False) as span:
            propagate.inject(call.metadata, setter=_SETTER)
            try:
                reply = await proceed()
            except BaseException as exc:
                labels = _failed(span, exc, labels)
                raise
            finally:
                self._duration.record(perf_counter() - start, labels)
        return reply
