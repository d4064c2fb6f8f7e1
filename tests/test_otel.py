"""geerpc.otel: spans and durations for calls, the trace carried in metadata, across
tasks, worker threads and processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import PYTHON, ROOT, eventually, subprocess_env
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import geerpc
from geerpc.interceptors import awaits_only_proceed
from geerpc.otel import ClientInterceptor, ServerInterceptor


class Traced:
    async def add(self, a, b):
        return a + b

    async def fail(self, message):
        raise ValueError(message)

    async def refuse(self):
        raise geerpc.PermissionDenied("not you")

    async def in_task(self):
        return asyncio.current_task() is not None

    async def secret(self):
        return "secret"  # never reached: an interceptor refuses it

    def current_span(self):
        context = trace.get_current_span().get_span_context()
        return [f"{context.trace_id:032x}", f"{context.span_id:016x}"]


class Telemetry:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def spans(self, kind: SpanKind) -> list[Any]:
        return [s for s in self.exporter.get_finished_spans() if s.kind == kind]

    def points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        found = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        assert metric.unit == "s"
                        found.extend(metric.data.data_points)
        return found


@pytest.fixture
def telemetry() -> Telemetry:
    return Telemetry()


@pytest.fixture
async def traced(telemetry: Telemetry) -> AsyncIterator[geerpc.Client]:
    async def refuse_secret(call, proceed):
        if call.service_method == "Traced.secret":
            raise geerpc.PermissionDenied("no secrets")
        return await proceed()

    server = geerpc.Server(interceptors=[
        ServerInterceptor(telemetry.tracer_provider, telemetry.meter_provider), refuse_secret])
    server.register(Traced())
    await server.start("127.0.0.1", 0)
    client = await geerpc.dial(server.address, interceptors=[
        ClientInterceptor(telemetry.tracer_provider, telemetry.meter_provider)])
    try:
        yield client
    finally:
        await client.close()
        await server.stop(grace=1.0)
        telemetry.tracer_provider.shutdown()
        telemetry.meter_provider.shutdown()


def test_the_interceptors_keep_the_server_chain_inline():
    assert awaits_only_proceed(ServerInterceptor())
    assert awaits_only_proceed(ClientInterceptor())


async def test_a_handler_with_no_await_still_runs_without_a_task(traced, telemetry):
    assert await traced.call("Traced.in_task") is False
    [server] = telemetry.spans(SpanKind.SERVER)
    assert server.name == "Traced/in_task"


async def test_without_opentelemetry_the_error_names_the_extra():
    code = ("import sys; sys.modules['opentelemetry'] = None\n"
            "try:\n    import geerpc.otel\nexcept ImportError as exc:\n    print(exc)")
    proc = await asyncio.create_subprocess_exec(PYTHON, "-c", code, stdout=asyncio.subprocess.PIPE,
                                                env=subprocess_env())
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert "pip install 'geerpc[otel]'" in out.decode()


async def test_a_call_makes_a_client_span_and_its_server_child(traced, telemetry):
    assert await traced.call("Traced.add", 1, 2) == 3
    [client], [server] = telemetry.spans(SpanKind.CLIENT), telemetry.spans(SpanKind.SERVER)
    assert client.name == server.name == "Traced/add"
    rpc = {"rpc.system": "geerpc", "rpc.service": "Traced", "rpc.method": "add"}
    port = int(traced.address.rpartition(":")[2])
    assert dict(client.attributes) == {**rpc, "server.address": "127.0.0.1", "server.port": port}
    assert {k: server.attributes[k] for k in rpc} == rpc
    assert server.attributes["network.peer.address"] == "127.0.0.1"
    assert server.context.trace_id == client.context.trace_id
    assert server.parent.span_id == client.context.span_id and server.parent.is_remote
    assert client.parent is None
    assert client.status.status_code == server.status.status_code == StatusCode.UNSET
    for name in ("rpc.client.call.duration", "rpc.server.call.duration"):
        [point] = telemetry.points(name)
        assert point.count == 1 and 0 < point.sum < 5
        assert dict(point.attributes) == rpc


@pytest.mark.parametrize(("method", "error", "error_type"), [
    ("Traced.fail", ValueError, "ValueError"),           # the handler raises
    ("Traced.refuse", geerpc.PermissionDenied, "PermissionDenied"),
    ("Traced.secret", geerpc.PermissionDenied, "PermissionDenied"),  # an inner interceptor refuses
])
async def test_a_failed_call_is_an_error_on_both_sides(traced, telemetry, method, error, error_type):
    with pytest.raises(error):
        await traced.call(method, *(["boom"] if method == "Traced.fail" else []))
    [client], [server] = telemetry.spans(SpanKind.CLIENT), telemetry.spans(SpanKind.SERVER)
    for span in (client, server):
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes["error.type"] == error_type
        assert [e.name for e in span.events] == ["exception"]
    for name in ("rpc.client.call.duration", "rpc.server.call.duration"):
        [point] = telemetry.points(name)
        assert point.attributes["error.type"] == error_type


async def test_the_server_span_is_current_in_a_def_handler(traced, telemetry):
    trace_id, span_id = await traced.call("Traced.current_span")
    [server] = telemetry.spans(SpanKind.SERVER)
    assert (trace_id, span_id) == (f"{server.context.trace_id:032x}", f"{server.context.span_id:016x}")


async def _address(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()


async def _spans(proc: asyncio.subprocess.Process) -> list[dict[str, Any]]:
    """Close the process's stdin and read the spans it prints as it stops."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.close()
    spans = []
    async with asyncio.timeout(10):
        while (line := (await proc.stdout.readline()).decode().strip()) != "end":
            assert line, "the process ended before printing its spans"
            spans.append(json.loads(line))
    return spans


async def test_one_trace_crosses_three_processes(telemetry):
    script = str(ROOT / "tests" / "otel_process.py")
    started: list[asyncio.subprocess.Process] = []

    async def start(*args: str) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, script, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=subprocess_env())
        started.append(proc)
        return proc

    try:
        b = await start()
        a = await start(await _address(b))
        address_a = await _address(a)
        async with await geerpc.dial(address_a, interceptors=[ClientInterceptor(telemetry.tracer_provider)]) as c:
            assert await c.call("Relay.forward", "hello", timeout=10) == "hello"
        [mine] = telemetry.spans(SpanKind.CLIENT)
        spans_a, spans_b = await _spans(a), await _spans(b)
        assert sorted(s["kind"] for s in spans_a) == ["CLIENT", "SERVER"]
        [server_b] = spans_b
        assert server_b["kind"] == "SERVER" and server_b["name"] == "Relay/forward"
        every = spans_a + spans_b
        assert {s["trace_id"] for s in every} == {f"{mine.context.trace_id:032x}"}
        parents = {s["span_id"]: s["parent_span_id"] for s in every}
        chain, span_id = [], server_b["span_id"]
        while span_id in parents:
            span_id = parents[span_id]
            chain.append(span_id)
        assert chain[-1] == f"{mine.context.span_id:016x}"  # B's server span descends from our client span
        assert len(chain) == 3  # B server <- A client <- A server <- ours
    finally:
        for proc in started:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        telemetry.tracer_provider.shutdown()


async def test_one_span_each_side_for_a_whole_stream(telemetry: Telemetry) -> None:
    class Feed:
        async def count(self, n):
            for i in range(n):
                yield f"{trace.get_current_span().get_span_context().trace_id:032x}" if i == 0 else i

    server = geerpc.Server(interceptors=[ServerInterceptor(telemetry.tracer_provider, telemetry.meter_provider)])
    server.register(Feed())
    await server.start("127.0.0.1", 0)
    client = await geerpc.dial(server.address, interceptors=[
        ClientInterceptor(telemetry.tracer_provider, telemetry.meter_provider)])
    try:
        async with client.stream("Feed.count", 100) as items:
            got = [item async for item in items]
        assert len(got) == 100
        await eventually(lambda: telemetry.spans(SpanKind.CLIENT), what="the client span ended")
        [server_span] = telemetry.spans(SpanKind.SERVER)
        [client_span] = telemetry.spans(SpanKind.CLIENT)
        assert f"{server_span.context.trace_id:032x}" == f"{client_span.context.trace_id:032x}" == got[0]
        assert server_span.parent.span_id == client_span.context.span_id
        assert server_span.name == client_span.name == "Feed/count"
    finally:
        await client.close()
        await server.stop()
