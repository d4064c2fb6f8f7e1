"""Routing around a bad server: RANDOM, ROUND_ROBIN and LEAST_LOADED, with and without
retries and hedging, against server processes of which one is slow.

    python3 bench/bench_balance.py [--servers 8] [--calls 20000] [--concurrency 16]
                                   [--duration SECONDS] [--hedge-after p95] [--json]
    python3 bench/bench_balance.py --quick      # a short check that it runs, not a measurement

The servers are child processes (``bench/_procs.py``), each a geerpc.Server with one
``Bench.add``. This process runs ``--concurrency`` callers on one XClient; every call
has a 1 s timeout and is marked ``idempotent=True``. Scenarios:

  healthy   every server answers at once: the reference p99 and p99.9
  slow-2s   one server adds 2 s to every call (Linkerd's test: 1 s timeout, so every
            call it gets fails unless routed around, retried or hedged)
  slow-10%  one server adds 50 ms to a tenth of its calls

Variants: ``plain`` (failover only), ``retry`` (Retry(attempts=3, backoff=0.05,
budget=0.1)), ``retry+hedge`` (the same and ``hedge_after``, "p95" by default).
LEAST_LOADED ejects outliers (its default). For each run: the success rate; p50, p99
and p99.9 latency over every call made (a failed call counts at the time it took);
the extra load, calls the servers received divided by calls made (retries and hedges
are the excess; a call refused by a dead connection is not received).

Goals, checked and printed at the end: with slow-2s, LEAST_LOADED at least 99.9 %
successful (aiming for 100 %) and p99 at most 2 x its healthy p99; with hedging,
p99.9 at most 2 x the healthy p99.9 at no more than 10 % extra load.

Each scenario reuses the same server processes (told what to do by a call), and each
run starts a fresh XClient, so what LEAST_LOADED learns at the start is in the figures.
With the defaults a full run takes about ten minutes, most of it RANDOM and
ROUND_ROBIN waiting out the slow server's timeouts; ``--duration`` bounds each run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _procs import Child, emit, percentile, wait_for_stdin_eof

import geerpc
from geerpc.xclient import Retry, SelectMode, XClient

SCRIPT = os.path.abspath(__file__)
TIMEOUT = 1.0
SCENARIOS = {"healthy": (0.0, 0.0), "slow-2s": (2.0, 1.0), "slow-10%": (0.05, 0.1)}  # (added delay, share)
MODES = {"random": SelectMode.RANDOM, "round_robin": SelectMode.ROUND_ROBIN,
         "least_loaded": SelectMode.LEAST_LOADED}
VARIANTS = ("plain", "retry", "retry+hedge")


# ----------------------------------------------------------------- server process

class Bench:
    """The service each server process offers; ``configure`` makes it slow."""

    def __init__(self, seed: int) -> None:
        self.delay, self.share = 0.0, 0.0
        self.received = 0
        self._rng = random.Random(seed)

    async def add(self, a: int, b: int) -> int:
        self.received += 1
        if self.delay and (self.share >= 1.0 or self._rng.random() < self.share):
            await asyncio.sleep(self.delay)
        return a + b

    def configure(self, delay: float, share: float) -> None:
        self.delay, self.share = delay, share

    def take_count(self) -> int:
        count, self.received = self.received, 0
        return count


async def serve(seed: int) -> None:
    server = geerpc.Server()
    server.register(Bench(seed), name="Bench")
    await server.start("127.0.0.1", 0)
    emit({"address": server.address})
    await wait_for_stdin_eof()
    await server.stop(grace=1.0)


# ----------------------------------------------------------------- one run

@dataclass
class Result:
    scenario: str
    mode: str
    variant: str
    made: int
    ok: int
    received: int
    p50_ms: float | None
    p99_ms: float | None
    p999_ms: float | None
    seconds: float

    @property
    def success(self) -> float:
        return self.ok / self.made if self.made else 0.0

    @property
    def load(self) -> float:
        return self.received / self.made if self.made else 0.0


def make_xclient(addresses: list[str], mode: str, variant: str, hedge_after: float | str) -> XClient:
    retry = Retry(attempts=3, backoff=0.05, max_backoff=1.0, budget=0.1) if variant != "plain" else None
    hedge = hedge_after if variant == "retry+hedge" else None
    return XClient(list(addresses), MODES[mode], retry=retry, hedge_after=hedge)


async def one_run(addresses: list[str], direct: list[geerpc.Client], scenario: str, mode: str, variant: str,
                  args: argparse.Namespace) -> Result:
    for client in direct:  # counts from the previous run, and its cancelled calls, are dropped
        await client.call("Bench.take_count", timeout=5)
    latencies: list[float] = []
    ok = 0
    made = 0
    loop = asyncio.get_running_loop()
    async with make_xclient(addresses, mode, variant, args.hedge_after) as xc:
        start = loop.time()
        stop_at = start + args.duration if args.duration else None

        async def caller() -> None:
            nonlocal ok, made
            while (made < args.calls) if stop_at is None else (loop.time() < stop_at):
                made += 1
                begun = loop.time()
                try:
                    await xc.call("Bench.add", 1, 2, timeout=TIMEOUT, idempotent=True)
                    ok += 1
                except geerpc.GeeRPCError:
                    pass
                latencies.append(loop.time() - begun)

        await asyncio.gather(*(caller() for _ in range(args.concurrency)))
        seconds = loop.time() - start
    await asyncio.sleep(0.1)  # let Cancels of hedges' losers reach their servers
    received = 0
    for client in direct:
        received += await client.call("Bench.take_count", timeout=5)
    latencies.sort()

    def ms(q: float) -> float | None:
        value = percentile(latencies, q)
        return None if value is None else value * 1000

    return Result(scenario, mode, variant, made, ok, received, ms(0.5), ms(0.99), ms(0.999), seconds)


# ----------------------------------------------------------------- report

def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[Result]) -> str:
    lines = ["| scenario | mode | variant | calls | success | p50 ms | p99 ms | p99.9 ms | extra load |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.scenario} | {r.mode} | {r.variant} | {r.made} | {100 * r.success:.2f} % | "
                     f"{fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {fmt(r.p999_ms)} | {r.load:.3f} |")
    return "\n".join(lines)


def goals(results: list[Result]) -> list[str]:
    by = {(r.scenario, r.mode, r.variant): r for r in results}
    lines = []
    for variant in VARIANTS:
        slow, healthy = by.get(("slow-2s", "least_loaded", variant)), by.get(("healthy", "least_loaded", variant))
        if slow is None:
            continue
        lines.append(f"{'PASS' if slow.success >= 0.999 else 'FAIL'} least_loaded {variant}, slow-2s: "
                     f"{100 * slow.success:.3f} % successful (goal >= 99.9 %, aim 100 %)")
        if healthy is not None and healthy.p99_ms is not None and slow.p99_ms is not None:
            lines.append(f"{'PASS' if slow.p99_ms <= 2 * healthy.p99_ms else 'FAIL'} least_loaded {variant}, "
                         f"slow-2s: p99 {slow.p99_ms:.1f} ms vs healthy {healthy.p99_ms:.1f} ms (goal <= 2x)")
        if (variant == "retry+hedge" and healthy is not None and healthy.p999_ms is not None
                and slow.p999_ms is not None):
            good = slow.p999_ms <= 2 * healthy.p999_ms and slow.load <= 1.10
            lines.append(f"{'PASS' if good else 'FAIL'} least_loaded {variant}, slow-2s: p99.9 "
                         f"{slow.p999_ms:.1f} ms vs healthy {healthy.p999_ms:.1f} ms (goal <= 2x), "
                         f"extra load {100 * (slow.load - 1):.1f} % (goal <= 10 %)")
    return lines


async def main(args: argparse.Namespace) -> int:
    children: list[Child] = []
    direct: list[geerpc.Client] = []
    results: list[Result] = []
    try:
        for n in range(args.servers):
            child, ready = await Child.start(f"server-{n}", SCRIPT, "--role", "server", "--seed", str(n))
            children.append(child)
            direct.append(await geerpc.dial(ready["address"]))
        addresses = [c.address for c in direct]
        print(f"{args.servers} servers, {args.concurrency} callers, "
              f"{f'{args.duration:g} s' if args.duration else f'{args.calls} calls'} per run, "
              f"timeout {TIMEOUT:g} s, hedge_after={args.hedge_after!r}", file=sys.stderr)
        for scenario in args.scenarios:
            delay, share = SCENARIOS[scenario]
            for n, client in enumerate(direct):  # server 0 is the bad one
                await client.call("Bench.configure", delay if n == 0 else 0.0, share if n == 0 else 0.0, timeout=5)
            for mode in args.modes:
                for variant in args.variants:
                    result = await one_run(addresses, direct, scenario, mode, variant, args)
                    results.append(result)
                    print(f"  {scenario:9} {mode:12} {variant:12} {100 * result.success:7.3f} % "
                          f"p99 {fmt(result.p99_ms)} ms  load {result.load:.3f}  ({result.seconds:.1f} s)",
                          file=sys.stderr)
    finally:
        for client in direct:
            await client.close()
        for child in children:
            await child.stop()
    if args.json:
        print(json.dumps([{**asdict(r), "success": r.success, "load": r.load} for r in results], indent=1))
    else:
        print(table(results))
        print()
        print("\n".join(goals(results)))
    return 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=8, help="server processes (at least 8 for the figures)")
    parser.add_argument("--calls", type=int, default=20000, help="calls per run")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds per run instead of --calls")
    parser.add_argument("--concurrency", type=int, default=16, help="callers in flight at once")
    parser.add_argument("--hedge-after", default="p95", help="seconds, or p95 (default)")
    parser.add_argument("--scenarios", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--json", action="store_true", help="the results as JSON instead of a table")
    parser.add_argument("--quick", action="store_true", help="a short check run: 300 calls per run")
    parser.add_argument("--role", choices=["server"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "server":
        asyncio.run(serve(args.seed))
        return
    if args.hedge_after != "p95":
        args.hedge_after = float(args.hedge_after)
    if args.quick:
        args.calls, args.duration = 300, 0.0
    if args.servers < 2 or args.calls < 1 or args.concurrency < 1 or args.duration < 0:
        parser.error("--servers must be at least 2, --calls and --concurrency at least 1")
    started = time.monotonic()
    code = asyncio.run(main(args))
    print(f"\n({time.monotonic() - started:.0f} s in all)", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    cli()
