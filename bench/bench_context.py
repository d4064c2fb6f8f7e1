"""What call context costs: scenario (b) of bench_rpc.py with interceptors, metadata and
OpenTelemetry, against plain geerpc and the bare asyncio baseline, in one run.

    python3 bench/bench_context.py [--repeats 9] [--quick] [--no-otel]

(b) is 64 calls of ``Arith.add`` in flight on one connection. Variants:

  plain           no interceptor, no metadata (what bench_rpc.py's (b) measures)
  interceptors    one trivial interceptor on each side (``return await proceed()``)
  metadata        five metadata entries on every call, no interceptor
  otel            geerpc.otel's ClientInterceptor and ServerInterceptor, with the
                  OpenTelemetry SDK configured: a TracerProvider whose spans go to a
                  BatchSpanProcessor and an exporter that drops them, and a MeterProvider
                  with an in-memory reader (the extra "otel" and opentelemetry-sdk)

Servers run in child processes pinned to one core, the client here on the other, as in
bench_rpc.py. Each repeat runs every variant and the baseline back to back, the order
rotating from repeat to repeat; the table gives each variant's median calls/s, and the
median of its per-repeat ratios to the baseline and to plain geerpc, with their min..max.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bench_rpc as b  # noqa: E402
from _procs import pin, servers, wait_for_stdin_eof  # noqa: E402

import geerpc  # noqa: E402

VARIANTS = ("plain", "interceptors", "metadata", "otel")
METADATA = {"tenant": "acme", "user": "u-1234", "request-id": "8d1e0c6a-4f", "region": "eu-west-1",
            "blob-bin": b"\x00\x01\x02\x03"}


async def passthrough(call: Any, proceed: Any) -> Any:
    return await proceed()


def _otel_providers() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(Drop()))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def interceptors(variant: str, side: str) -> list[Any]:
    """The interceptors of one side ("server" or "client") for a variant."""
    if variant == "interceptors":
        return [passthrough]
    if variant != "otel":
        return []
    from geerpc import otel

    tracer_provider, meter_provider = _otel_providers()
    kind = otel.ServerInterceptor if side == "server" else otel.ClientInterceptor
    return [kind(tracer_provider=tracer_provider, meter_provider=meter_provider)]


async def serve(variant: str) -> None:
    server = geerpc.Server(interceptors=interceptors(variant, "server"))
    server.register(b.Arith())
    print(await server.start("127.0.0.1", 0), flush=True)
    await wait_for_stdin_eof()


async def connect(variant: str, address: str) -> Any:
    if variant == "baseline":
        return await b.connect("baseline", address)
    return await geerpc.dial(address, interceptors=interceptors(variant, "client"))


def adder(variant: str, client: Any) -> b.Call:
    if variant == "baseline":
        return b.method("baseline", client, "add")
    if variant == "metadata":
        async def add(x: int, y: int) -> Any:
            return await client.call("Arith.add", x, y, metadata=METADATA)
        return add
    return b.method("geerpc", client, "add")


async def run(addresses: dict[str, str], n: int, repeats: int) -> dict[str, list[float]]:
    kinds = list(addresses)
    clients = {kind: await connect(kind, address) for kind, address in addresses.items()}
    runs: dict[str, list[float]] = {kind: [] for kind in kinds}
    try:
        for kind in kinds:
            await b.concurrent(adder(kind, clients[kind]), 6_400)
        for repeat in range(repeats):
            shift = repeat % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                gc.collect()
                runs[kind].append((await b.concurrent(adder(kind, clients[kind]), n))["calls/s"])
    finally:
        for kind, client in clients.items():
            if kind == "baseline":
                client.transport.close()
            else:
                await client.close()
    return runs


def report(runs: dict[str, list[float]], repeats: int) -> None:
    print(f"(b) 64 in flight, calls/s: {repeats} repeats, Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'variant':13} {'calls/s':>8} {'/baseline':>9} {'min..max':>11} {'/plain':>7} {'min..max':>11}")
    for kind, values in runs.items():
        if kind == "baseline":
            continue
        to_base = [v / base for v, base in zip(values, runs["baseline"])]
        to_plain = [v / plain for v, plain in zip(values, runs["plain"])]
        print(f"{kind:13} {statistics.median(values):8.0f} {statistics.median(to_base):9.2f} "
              f"{min(to_base):5.2f}..{max(to_base):<5.2f} {statistics.median(to_plain):7.2f} "
              f"{min(to_plain):5.2f}..{max(to_plain):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", choices=("baseline", *VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=9, help="runs of each variant (default 9)")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls, for a smoke test")
    parser.add_argument("--no-otel", action="store_true", help="leave out the otel variant")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if args.serve:
        pin(0)
        asyncio.run(b.serve("baseline") if args.serve == "baseline" else serve(args.serve))
        return
    pin(1)
    variants = [v for v in VARIANTS if not (args.no_otel and v == "otel")]
    n = b.SIZES["b"] // (10 if args.quick else 1)
    with servers(__file__, ("baseline", *variants)) as addresses:
        runs = asyncio.run(run(addresses, n, args.repeats))
    report(runs, args.repeats)


if __name__ == "__main__":
    main()
