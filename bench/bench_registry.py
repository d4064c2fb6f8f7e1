"""How much load one registry process sustains, with 10,000 servers listed.

    python3 bench/bench_registry.py [--servers 10000] [--seconds 3] [--concurrency 32] [--periods 240,5]

Runs ``python -m geerpc.registry`` as a child process on 127.0.0.1 (loopback only) and
drives it from this process with aiohttp: it registers the servers, then for a fixed
time each sends heartbeats (POST), plain GETs (the X-Geerpc-Servers header) and JSON
GETs, and prints requests per second and GET latency. Every phase is bounded in time;
the whole run takes well under a minute.

Measured on a 2-core container shared with other work, Python 3.11.7, aiohttp 3.14.5,
default options (`python3 bench/bench_registry.py`), two runs:

    registered 10000 servers in 0.8 s (11964/s)
    heartbeats                     9784/s   p50    2.3 ms   p99    9.3 ms
    GET header, 32 concurrent       872/s   p50   33.4 ms   p99   69.2 ms
    GET JSON, 32 concurrent          93/s   p50  381.5 ms   p99  504.9 ms
    GET header, sequential          959/s   p50    0.7 ms   p99    4.1 ms
    GET JSON, sequential            108/s   p50    6.8 ms   p99   38.7 ms

    registered 10000 servers in 2.0 s (5014/s)
    heartbeats                    10723/s   p50    2.6 ms   p99    8.9 ms
    GET header, 32 concurrent      1431/s   p50   22.4 ms   p99   37.4 ms
    GET JSON, 32 concurrent         195/s   p50  150.7 ms   p99  382.8 ms
    GET header, sequential          932/s   p50    0.8 ms   p99    1.9 ms
    GET JSON, sequential             94/s   p50    9.7 ms   p99   32.4 ms

The fleet phases (``--periods``, default 240,5) send the POSTs of all the servers
beating at each period, paced, over kept connections and then over a new connection
per beat, and print the registry's CPU time per second (from /proc); the idle phase
keeps 2,000 heartbeat connections open and reads the registry's memory. Two runs
(``--seconds 3 --periods 240,8,5``), load generator on the same two cores:

    2000 idle keep-alive connections   registry RSS +9.5 KiB each,   idle CPU 0.0 % of a core
    period   240 s, keep-alive              42/s asked     42/s sent   registry CPU   5.7 % of a core
    period   240 s, new connection each     42/s asked     42/s sent   registry CPU   5.3 % of a core
    period     8 s, keep-alive            1250/s asked   1249/s sent   registry CPU  32.0 % of a core
    period     8 s, new connection each   1250/s asked   1248/s sent   registry CPU  53.9 % of a core
    period     5 s, keep-alive            2000/s asked   1997/s sent   registry CPU  40.6 % of a core
    period     5 s, new connection each   2000/s asked   1513/s sent   registry CPU  53.6 % of a core

    2000 idle keep-alive connections   registry RSS +7.9 KiB each,   idle CPU 0.0 % of a core
    period   240 s, keep-alive              42/s asked     42/s sent   registry CPU   6.3 % of a core
    period   240 s, new connection each     42/s asked     42/s sent   registry CPU   5.0 % of a core
    period     8 s, keep-alive            1250/s asked   1249/s sent   registry CPU  29.7 % of a core
    period     8 s, new connection each   1250/s asked   1249/s sent   registry CPU  47.6 % of a core
    period     5 s, keep-alive            2000/s asked   1998/s sent   registry CPU  42.0 % of a core
    period     5 s, new connection each   2000/s asked   1999/s sent   registry CPU  65.3 % of a core

docs/registry.md (*After a restart*) reads these figures.

A GET of 10,000 servers is a 250 KB header, or a 750 KB JSON body that the load
generator also has to parse: the JSON figures are bound by the client as much as by
the registry. Both processes share the same two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]


def start_registry() -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "geerpc.registry", "--host", "127.0.0.1", "--port", "0", "--timeout", "300"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http://"):
        proc.kill()
        raise SystemExit(f"registry did not start (printed {url!r})")
    return proc, url


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_registry(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


async def run_for(seconds: float, concurrency: int, one: object) -> list[float]:
    """Run ``one()`` from ``concurrency`` workers for ``seconds``; return each latency."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await one()  # type: ignore[operator]
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def fleet(url: str, pid: int, addresses: list[str], period: float, seconds: float, fresh: bool) -> None:
    """Send the POSTs of ``len(addresses)`` servers beating every ``period`` seconds, paced,
    for ``seconds``; print the rate reached and the registry's CPU time per second."""
    rate = len(addresses) / period
    connector = aiohttp.TCPConnector(limit=256, force_close=fresh)
    async with aiohttp.ClientSession(connector=connector) as session:
        sent = 0
        inflight: set[asyncio.Task[None]] = set()

        async def post(address: str) -> None:
            async with session.post(url, headers={"X-Geerpc-Server": address}) as response:
                assert response.status == 200, response.status

        cpu_before, started = cpu_seconds(pid), time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            due = int(elapsed * rate) + 1
            while sent < due and len(inflight) < 256:
                task = asyncio.create_task(post(addresses[sent % len(addresses)]))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
                sent += 1
            await asyncio.sleep(0.002)
        if inflight:
            await asyncio.wait_for(asyncio.gather(*inflight), 30)
        took = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu_before
    mode = "new connection each" if fresh else "keep-alive"
    print(f"period {period:5g} s, {mode:19} {rate:6.0f}/s asked {sent / took:6.0f}/s sent"
          f"   registry CPU {100 * cpu / took:5.1f} % of a core")


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def idle_connections(url: str, pid: int, addresses: list[str], count: int) -> None:
    """What ``count`` servers cost the registry while each keeps its heartbeat connection open."""
    connector = aiohttp.TCPConnector(limit=count, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector) as session:
        before = rss_bytes(pid)

        async def post(address: str) -> None:
            async with session.post(url, headers={"X-Geerpc-Server": address}) as response:
                assert response.status == 200, response.status

        await asyncio.wait_for(asyncio.gather(*(post(a) for a in addresses[:count])), 60)
        grown = rss_bytes(pid) - before
        cpu_before, started = cpu_seconds(pid), time.perf_counter()
        await asyncio.sleep(1.0)
        idle_cpu = (cpu_seconds(pid) - cpu_before) / (time.perf_counter() - started)
    print(f"{count} idle keep-alive connections   registry RSS +{grown / count / 1024:.1f} KiB each,"
          f"   idle CPU {100 * idle_cpu:.1f} % of a core")


def report(name: str, latencies: list[float], seconds: float) -> None:
    rate = len(latencies) / seconds
    if len(latencies) < 2:
        print(f"{name:28} {rate:6.0f}/s")
        return
    cuts = statistics.quantiles(latencies, n=100)
    print(f"{name:28} {rate:6.0f}/s   p50 {cuts[49] * 1e3:6.1f} ms   p99 {cuts[98] * 1e3:6.1f} ms")


async def bench(url: str, pid: int, servers: int, seconds: float, concurrency: int,
                periods: list[float]) -> None:
    addresses = [f"tcp@10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:9000" for i in range(1, servers + 1)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    # The list header of 10,000 servers is far past aiohttp's default 8 KiB field limit.
    async with aiohttp.ClientSession(connector=connector, max_field_size=16 << 20) as session:

        async def post(address: str) -> None:
            async with session.post(url, headers={"X-Geerpc-Server": address}) as response:
                assert response.status == 200, response.status

        queue = iter(addresses)

        async def register() -> None:
            for address in queue:
                await post(address)

        started = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(register() for _ in range(concurrency))), 120)
        took = time.perf_counter() - started
        print(f"registered {servers} servers in {took:.1f} s ({servers / took:.0f}/s)")

        async def beat() -> None:
            await post(random.choice(addresses))

        report("heartbeats", await run_for(seconds, concurrency, beat), seconds)

        async def get_header() -> None:
            async with session.get(url) as response:
                assert response.headers["X-Geerpc-Servers"].count(",") == servers - 1
                await response.read()

        async def get_json() -> None:
            async with session.get(url, headers={"Accept": "application/json"}) as response:
                assert len((await response.json())["servers"]) == servers

        for name, one in (("GET header", get_header), ("GET JSON", get_json)):
            report(f"{name}, {concurrency} concurrent", await run_for(seconds, concurrency, one), seconds)
        for name, one in (("GET header", get_header), ("GET JSON", get_json)):
            report(f"{name}, sequential", await run_for(seconds, 1, one), seconds)
    await idle_connections(url, pid, addresses, min(servers, 2000))
    for period in periods:  # the steady heartbeat load of the whole fleet at this period
        for fresh in (False, True):
            await fleet(url, pid, addresses, period, seconds, fresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each timed phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--periods", default="240,5",
                        help="heartbeat periods whose fleet load to measure, comma-separated (default 240,5)")
    args = parser.parse_args()
    periods = [float(p) for p in args.periods.split(",") if p.strip()]
    proc, url = start_registry()
    try:
        asyncio.run(bench(url, proc.pid, args.servers, args.seconds, args.concurrency, periods))
    finally:
        stop_registry(proc)


if __name__ == "__main__":
    main()
