"""Streams against unary calls, and a 64 KiB-item stream against the raw baseline, in one run.

    python3 bench/bench_stream.py [--repeats 7] [--uvloop] [--quick]

The servers (geerpc, and bench_rpc.py's bare asyncio + msgpack baseline) run in child
processes pinned to one core, the client in this process pinned to the other. Each
repeat runs every scenario once, in alternating order; the table gives medians and the
per-repeat ratios' median and min..max.

Scenarios, all on one connection:
  (u1) 100,000 unary ``add`` calls, one in flight: items/s
  (u64) 100,000 unary ``add`` calls, 64 in flight: items/s
  (s) one stream of 100,000 small items (``Feed.count``): items/s
  (c) 64 KiB bytes echo, one call in flight, on the raw baseline: MB/s (payload one way)
  (s64k) a stream of 64 KiB bytes items: MB/s

The goals: (s) at least 5x (u1) and (u64); (s64k) against the baseline's (c).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _procs import pin, servers, wait_for_stdin_eof  # noqa: E402
from bench_rpc import ECHO_SIZE, Arith, BaselineServer, concurrent, connect, echo, spread  # noqa: E402

import geerpc  # noqa: E402

SIZES = {"items": 100_000, "chunks": 2_000, "echo": 2_000}
CHUNK = bytes(ECHO_SIZE)


class Feed:
    async def count(self, n: int) -> Any:
        for i in range(n):
            yield i

    async def chunks(self, n: int) -> Any:
        for _ in range(n):
            yield CHUNK


async def unary_one(client: geerpc.Client, n: int) -> float:
    start = time.perf_counter()
    call = client.call
    for i in range(n):
        await call("Arith.add", i, 1)
    return n / (time.perf_counter() - start)


async def stream_items(client: geerpc.Client, n: int) -> float:
    start = time.perf_counter()
    got = 0
    async with client.stream("Feed.count", n) as items:
        async for _ in items:
            got += 1
    assert got == n
    return n / (time.perf_counter() - start)


async def stream_chunks(client: geerpc.Client, n: int) -> float:
    start = time.perf_counter()
    size = 0
    async with client.stream("Feed.chunks", n) as items:
        async for item in items:
            size += len(item)
    assert size == n * ECHO_SIZE
    return size / (time.perf_counter() - start) / 1e6


async def run(addresses: dict[str, str], sizes: dict[str, int], repeats: int) -> dict[str, list[float]]:
    client = await geerpc.dial(addresses["geerpc"])
    baseline = await connect("baseline", addresses["baseline"])
    results: dict[str, list[float]] = {name: [] for name in ("u1", "u64", "s", "c", "s64k")}

    async def add(a: int, b: int) -> Any:
        return await client.call("Arith.add", a, b)

    scenarios = {
        "u1": lambda: unary_one(client, sizes["items"]),
        "u64": lambda: _calls_per_second(concurrent(add, sizes["items"])),
        "s": lambda: stream_items(client, sizes["items"]),
        "c": lambda: _megabytes(echo(lambda value: baseline.call("echo", value), sizes["echo"])),
        "s64k": lambda: stream_chunks(client, sizes["chunks"]),
    }
    try:
        for scenario in scenarios.values():  # warm-up, not counted
            await scenario()
        for repeat in range(repeats):
            order = list(scenarios) if repeat % 2 == 0 else list(reversed(scenarios))
            for name in order:
                gc.collect()
                results[name].append(await scenarios[name]())
    finally:
        await client.close()
        baseline.transport.close()
    return results


async def _calls_per_second(measured: Any) -> float:
    return float((await measured)["calls/s"])


async def _megabytes(measured: Any) -> float:
    return float((await measured)["MB/s"])


def report(results: dict[str, list[float]], repeats: int, loop_name: str) -> None:
    print(f"geerpc streams on {loop_name}: {repeats} repeats, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} cores")
    print(f"{'scenario':44} {'median':>10} {'min..max':>21}")
    labels = {"u1": "(u1) unary, one in flight, items/s", "u64": "(u64) unary, 64 in flight, items/s",
              "s": "(s) stream of small items, items/s", "c": "(c) baseline 64 KiB echo, MB/s",
              "s64k": "(s64k) stream of 64 KiB items, MB/s"}
    for name, values in results.items():
        print(f"{labels[name]:44} {statistics.median(values):10.0f} {min(values):10.0f}..{max(values):<10.0f}")
    for top, bottom, goal in (("s", "u1", 5.0), ("s", "u64", 5.0), ("s64k", "c", None)):
        ratio, _, _, low, high = spread([a / b for a, b in zip(results[top], results[bottom])])
        target = f" (goal {goal:g}x: {'met' if ratio >= goal else 'missed'})" if goal else ""
        print(f"ratio ({top})/({bottom}): {ratio:.2f} ({low:.2f}..{high:.2f}){target}")


async def serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    if kind == "baseline":
        server = await loop.create_server(BaselineServer, "127.0.0.1", 0)
        print(f"tcp@127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    else:
        rpc = geerpc.Server()
        rpc.register(Arith())
        rpc.register(Feed())
        print(await rpc.start("127.0.0.1", 0), flush=True)
    await wait_for_stdin_eof()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", choices=("baseline", "geerpc"), help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=7, help="repeats of every scenario (default 7)")
    parser.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    parser.add_argument("--quick", action="store_true", help="a tenth of the items, for a smoke test")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    runner: Any = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    if args.serve:
        pin(0)
        runner(serve(args.serve))
        return
    pin(1)
    sizes = {k: max(v // 10, 64) for k, v in SIZES.items()} if args.quick else SIZES
    with servers(__file__, ("baseline", "geerpc"), *(["--uvloop"] if args.uvloop else [])) as addresses:
        results = runner(run(addresses, sizes, args.repeats))
    report(results, args.repeats, "uvloop" if args.uvloop else "asyncio")


if __name__ == "__main__":
    main()
