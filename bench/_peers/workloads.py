"""The three workloads every peer runs, for async and for thread-based clients.

The async loops are bench_rpc.py's own (sequential, concurrent, echo), so geerpc,
the baseline and the asyncio peers run the very same code; the thread-based ones
mirror them for frameworks whose calls block.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import bench_rpc

ECHO_SIZE = bench_rpc.ECHO_SIZE
IN_FLIGHT = bench_rpc.IN_FLIGHT
METRICS = ("p50 us", "p99 us", "seq calls/s", "64 calls/s", "echo MB/s")
Sizes = dict[str, int]  # "seq": sequential calls, "flight": calls with 64 in flight, "echo": echoes
SyncCall = Callable[..., Any]


def sizes(quick: bool) -> Sizes:
    full = {"seq": 3_000, "flight": 64 * 100, "echo": 300}
    return {k: max(v // 10, 64) for k, v in full.items()} if quick else full


def _merge(seq: dict[str, float], flight: dict[str, float], echo: dict[str, float]) -> dict[str, float]:
    return {"p50 us": seq["p50 us"], "p99 us": seq["p99 us"], "seq calls/s": seq["calls/s"],
            "64 calls/s": flight["calls/s"], "echo MB/s": echo["MB/s"]}


async def run_async(add: bench_rpc.Call, echo: bench_rpc.Call, sizes: Sizes,
                    adds: list[bench_rpc.Call] | None = None) -> dict[str, float]:
    """The workloads over one connection; ``adds`` gives one call per task instead,
    for a client that can have only one call in flight per connection."""
    await bench_rpc.sequential(add, 200)  # warm up
    seq = await bench_rpc.sequential(add, sizes["seq"])
    if adds is None:
        flight = await bench_rpc.concurrent(add, sizes["flight"])
    else:
        flight = await concurrent_each(adds, sizes["flight"])
    await bench_rpc.echo(echo, 50)
    return _merge(seq, flight, await bench_rpc.echo(echo, sizes["echo"]))


async def concurrent_each(adds: list[bench_rpc.Call], n: int) -> dict[str, float]:
    """One task per call (one per connection), all calling in a loop: calls/s."""
    import asyncio

    per_worker = n // len(adds)

    async def worker(add: bench_rpc.Call) -> None:
        for i in range(per_worker):
            await add(i, 1)

    start = time.perf_counter()
    await asyncio.gather(*(worker(add) for add in adds))
    return {"calls/s": per_worker * len(adds) / (time.perf_counter() - start)}


# ----------------------------------------------------------------- blocking clients


def sequential_sync(add: SyncCall, n: int) -> dict[str, float]:
    latencies = []
    clock = time.perf_counter
    for i in range(n):
        start = clock()
        add(i, 1)
        latencies.append(clock() - start)
    latencies.sort()
    return {"calls/s": n / sum(latencies), "p50 us": latencies[n // 2] * 1e6,
            "p99 us": latencies[int(n * 0.99)] * 1e6}


def echo_sync(call: SyncCall, n: int) -> dict[str, float]:
    payload = os.urandom(ECHO_SIZE)
    start = time.perf_counter()
    for _ in range(n):
        assert len(call(payload)) == ECHO_SIZE
    return {"MB/s": n * ECHO_SIZE / (time.perf_counter() - start) / 1e6}


def threaded(connect: Callable[[], tuple[SyncCall, Callable[[], None]]], n: int,
             threads: int = IN_FLIGHT, timeout: float = 300.0) -> dict[str, float]:
    """``threads`` threads, each with its own connection (``connect()`` returns its
    add call and a close), calling in a loop: calls/s, timed from all connected to
    all done."""
    per_worker = n // threads
    ready = threading.Barrier(threads + 1, timeout=timeout)
    done = threading.Barrier(threads + 1, timeout=timeout)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            add, close = connect()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
            ready.abort()
            return
        try:
            ready.wait()
            for i in range(per_worker):
                add(i, 1)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            done.abort()
        finally:
            try:
                done.wait()
            except threading.BrokenBarrierError:
                pass
            close()

    pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
    for thread in pool:
        thread.start()
    try:
        ready.wait()
        start = time.perf_counter()
        done.wait()
        elapsed = time.perf_counter() - start
    except threading.BrokenBarrierError:
        raise RuntimeError(f"a client thread failed: {errors[0]!r}" if errors else "client threads timed out") from None
    finally:
        for thread in pool:
            thread.join(timeout)
    if errors:
        raise RuntimeError(f"a client thread failed: {errors[0]!r}")
    return {"calls/s": per_worker * threads / elapsed}


def run_sync(add: SyncCall, echo: SyncCall, connect: Callable[[], tuple[SyncCall, Callable[[], None]]],
             sizes: Sizes) -> dict[str, float]:
    sequential_sync(add, 200)  # warm up
    seq = sequential_sync(add, sizes["seq"])
    flight = threaded(connect, sizes["flight"])
    echo_sync(echo, 50)
    return _merge(seq, flight, echo_sync(echo, sizes["echo"]))
