"""A server in its own process with the OpenTelemetry interceptors, for the trace
that crosses processes: prints its address, and once stdin closes, its finished spans
as JSON lines (trace_id, span_id, parent_span_id, name, kind), then ``end``.

Usage: python otel_process.py [NEXT_ADDRESS]

With NEXT_ADDRESS, ``Relay.forward(value)`` calls ``Relay.forward`` there through a
client with the ClientInterceptor; without, it returns ``value``.
"""

from __future__ import annotations

import asyncio
import json
import sys

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import geerpc
from geerpc.otel import ClientInterceptor, ServerInterceptor


class Relay:
    def __init__(self, next_hop: geerpc.Client | None) -> None:
        self.next_hop = next_hop

    async def forward(self, value):
        if self.next_hop is None:
            return value
        return await self.next_hop.call("Relay.forward", value, timeout=10)


async def main() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    next_hop = None
    if len(sys.argv) > 1:
        next_hop = await geerpc.dial(sys.argv[1], interceptors=[ClientInterceptor(tracer_provider=provider)])
    server = geerpc.Server(interceptors=[ServerInterceptor(tracer_provider=provider)])
    server.register(Relay(next_hop))
    print(await server.start("127.0.0.1", 0), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.buffer.read)  # until the parent closes stdin
    await server.stop(grace=1.0)
    if next_hop is not None:
        await next_hop.close()
    for span in exporter.get_finished_spans():
        context, parent = span.get_span_context(), span.parent
        print(json.dumps({"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}",
                          "parent_span_id": None if parent is None else f"{parent.span_id:016x}",
                          "name": span.name, "kind": span.kind.name}), flush=True)
    print("end", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
