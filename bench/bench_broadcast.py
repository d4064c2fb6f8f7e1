"""Broadcast latency to 1, 8 and 32 servers, against a single call.

    python bench/bench_broadcast.py [--calls 2000]

32 geerpc servers run in one child process on 127.0.0.1 (pinned to one core); this
process (pinned to the other) holds one XClient over all of them and measures, after a
warm-up, the latency of ``call()`` to one server and of ``broadcast()`` to the first 1,
8 and 32 servers: p50 and p99, and the ratio of each p50 to the single call's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _procs import pin, servers, wait_for_stdin_eof  # noqa: E402

import geerpc  # noqa: E402
from geerpc.xclient import MultiServerDiscovery, SelectMode, XClient  # noqa: E402


class Arith:
    async def add(self, a: int, b: int) -> int:
        return a + b


async def serve(count: int) -> None:
    servers = []
    for _ in range(count):
        server = geerpc.Server()
        server.register(Arith())
        await server.start("127.0.0.1", 0)
        servers.append(server)
    print(" ".join(s.address or "" for s in servers), flush=True)
    await wait_for_stdin_eof()


async def measure(addresses: list[str], calls: int) -> None:
    rows = []
    single = None
    for label, fanout in (("call, 1 server", 0), ("broadcast, 1 server", 1), ("broadcast, 8 servers", 8),
                          ("broadcast, 32 servers", 32)):
        chosen = addresses[: max(fanout, 1)]
        async with XClient(MultiServerDiscovery(chosen), SelectMode.ROUND_ROBIN) as xc:
            op = xc.call if fanout == 0 else xc.broadcast
            for _ in range(200):
                await op("Arith.add", 1, 2, timeout=5)
            latencies = []
            for _ in range(calls):
                start = time.perf_counter()
                await op("Arith.add", 1, 2, timeout=5)
                latencies.append(time.perf_counter() - start)
        latencies.sort()
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        single = single or p50
        rows.append((label, p50, p99, p50 / single))
    print(f"{'':24} {'p50 us':>9} {'p99 us':>9} {'p50 / call':>11}")
    for label, p50, p99, ratio in rows:
        print(f"{label:24} {p50 * 1e6:9.1f} {p99 * 1e6:9.1f} {ratio:11.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    if args.serve:
        pin(0)
        asyncio.run(serve(args.serve))
        return
    pin(1)
    with servers(__file__, ["32"]) as printed:
        addresses = printed["32"].split()
        if len(addresses) != 32:
            raise RuntimeError(f"32 servers did not start: {printed['32']!r}")
        asyncio.run(measure(addresses, args.calls))


if __name__ == "__main__":
    main()
