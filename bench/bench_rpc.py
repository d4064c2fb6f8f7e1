"""geerpc against a bare asyncio + msgpack baseline, in one run.

    python3 bench/bench_rpc.py [--repeats 9] [--uvloop] [--quick]

Both servers run in child processes pinned to one core, the client in this process
pinned to the other. Each scenario runs as a pair, baseline and geerpc back to back,
``--repeats`` times, the order alternating from pair to pair. The table gives each
side's median, and the ratio geerpc/baseline: the median of the per-pair ratios, with
their interquartile range and their min..max, so a rerun can be judged against the
spread (for latency, lower is better; for everything else, higher).

Scenarios:
  (a) sequential add(a, b), one call in flight: calls/s, p50, p99
  (b) 64 calls in flight on one connection: calls/s
  (b-def) as (b), against a plain ``def`` method (run in the server's thread pool);
      compared with the baseline's (b), which has no thread pool
  (c) 64 KiB bytes echo, one call in flight: MB/s
  (d) server capacity: a load generator writes pre-encoded requests (up to 256 in
      flight) and only counts replies, so the server is the bottleneck: calls/s

The baseline is meant as a floor: the fastest RPC that bare asyncio and msgpack make
with the same framing and the same work per call (see the note above BaselineServer).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _procs import pin, servers, wait_for_stdin_eof  # noqa: E402

import geerpc  # noqa: E402
from geerpc import protocol as gp  # noqa: E402

LENGTH = struct.Struct(">I")
ECHO_SIZE = 64 * 1024
IN_FLIGHT = 64
Call = Callable[..., Awaitable[Any]]


# ----------------------------------------------------------------- baseline
#
# The floor: what bare asyncio + msgpack can do with the same framing. Each side reads
# straight into one reusable bytearray (BufferedProtocol, recv_into: no allocation per
# read, and no mmap for a 64 KiB frame), decodes each frame from a memoryview of that
# buffer (no copy out of it), and keeps one msgpack Packer (msgpack.packb builds a new
# one per call). The server answers every request parsed from one read with one write.
# The client writes a call's request at once when no other call is in flight, and
# otherwise gathers the requests made in one loop iteration into one write (64 tasks
# woken by one read of replies send their next requests with one syscall, not 64).
# The work per call is what geerpc must do too: decode the request, encode a reply,
# match the seq on the client. What geerpc does on top (the Option handshake, frame
# size checks, deadlines, per-method statistics, backpressure) is its own cost.

_packb = msgpack.Packer(autoreset=True).pack
_unpackb = msgpack.unpackb
_pack_length = LENGTH.pack
_unpack_length = LENGTH.unpack_from
_BUFFER = 256 * 1024  # as much as asyncio's plain Protocol reads at once
_MIN_READ = 64 * 1024


class _Receiver(asyncio.BufferedProtocol):
    """A receive buffer that grows to hold the largest frame and is never copied whole.

    Bytes from ``start`` to ``end`` are received and not yet parsed. When the room left
    after ``end`` is too small, the unparsed tail (a partial frame) moves to the front,
    or into a larger buffer if the frame needs it: each byte is copied at most once
    more, whatever the frame sizes.
    """

    def __init__(self) -> None:
        self.buffer = bytearray(_BUFFER)
        self.view = memoryview(self.buffer)
        self.start = self.end = 0

    def get_buffer(self, sizehint: int) -> memoryview:
        start, end = self.start, self.end
        if start == end:
            self.start = self.end = start = end = 0
        need = _MIN_READ
        if end - start >= 4:  # room for the rest of the started frame
            (size,) = _unpack_length(self.buffer, start)
            need = max(need, 4 + size - (end - start))
        if len(self.buffer) - end < need:
            self._make_room(need)
        return self.view[self.end :]

    def _make_room(self, need: int) -> None:
        start, end = self.start, self.end
        kept = end - start
        if len(self.buffer) - kept >= need:
            self.buffer[:kept] = bytes(self.view[start:end])
        else:
            grown = bytearray(max(2 * len(self.buffer), kept + need))
            grown[:kept] = self.view[start:end]
            self.buffer, self.view = grown, memoryview(grown)
        self.start, self.end = 0, kept


class BaselineServer(_Receiver):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def buffer_updated(self, nbytes: int) -> None:
        buffer, view = self.buffer, self.view
        pos, end = self.start, self.end + nbytes
        out = []
        while end - pos >= 4:
            (size,) = _unpack_length(buffer, pos)
            if end - pos - 4 < size:
                break
            seq, method, args = _unpackb(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
            result = args[0] + args[1] if method == "add" else args[0]
            body = _packb([seq, result])
            out.append(_pack_length(len(body)))
            out.append(body)
        self.start, self.end = pos, end
        if out:
            self.transport.write(b"".join(out))


class BaselineClient(_Receiver):
    def __init__(self) -> None:
        super().__init__()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.seq = 0
        self.loop = asyncio.get_running_loop()
        self.out: list[bytes] = []  # requests made in this loop iteration, written at its end

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def buffer_updated(self, nbytes: int) -> None:
        buffer, view, pending = self.buffer, self.view, self.pending
        pos, end = self.start, self.end + nbytes
        while end - pos >= 4:
            (size,) = _unpack_length(buffer, pos)
            if end - pos - 4 < size:
                break
            seq, result = _unpackb(view[pos + 4 : pos + 4 + size])
            pos += 4 + size
            pending.pop(seq).set_result(result)
        self.start, self.end = pos, end

    async def call(self, method: str, *args: Any) -> Any:
        seq = self.seq = self.seq + 1
        body = _packb([seq, method, args])
        future = self.loop.create_future()
        pending = self.pending
        if pending or self.out:  # others are in flight: gather this iteration's requests
            if not self.out:
                self.loop.call_soon(self._flush)
            self.out.append(_pack_length(len(body)))
            self.out.append(body)
        else:  # the only call: no reason to wait
            self.transport.write(_pack_length(len(body)) + body)
        pending[seq] = future
        return await future

    def _flush(self) -> None:
        out, self.out = self.out, []
        self.transport.write(b"".join(out))


# ----------------------------------------------------------------- geerpc service


class Arith:
    async def add(self, a: int, b: int) -> int:
        return a + b

    async def echo(self, value: Any) -> Any:
        return value


class PlainArith:
    def add(self, a: int, b: int) -> int:
        return a + b


# ----------------------------------------------------------------- workloads
#
# Each takes the call itself (an ``async (*args) -> result``), so bench_peers.py runs
# the same loops against other frameworks.


async def sequential(add: Call, n: int) -> dict[str, float]:
    """One call in flight: calls/s, p50 and p99 latency."""
    latencies = []
    clock = time.perf_counter
    for i in range(n):
        start = clock()
        await add(i, 1)
        latencies.append(clock() - start)
    latencies.sort()
    return {"calls/s": n / sum(latencies), "p50 us": latencies[n // 2] * 1e6,
            "p99 us": latencies[int(n * 0.99)] * 1e6}


async def concurrent(add: Call, n: int, in_flight: int = IN_FLIGHT) -> dict[str, float]:
    """``in_flight`` tasks calling in a loop on one connection: calls/s."""
    per_worker = n // in_flight

    async def worker() -> None:
        for i in range(per_worker):
            await add(i, 1)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return {"calls/s": per_worker * in_flight / (time.perf_counter() - start)}


async def echo(call: Call, n: int) -> dict[str, float]:
    """A 64 KiB bytes value there and back, one call in flight: MB/s (payload bytes, one way)."""
    payload = os.urandom(ECHO_SIZE)
    start = time.perf_counter()
    for _ in range(n):
        assert len(await call(payload)) == ECHO_SIZE
    return {"MB/s": n * ECHO_SIZE / (time.perf_counter() - start) / 1e6}


@functools.cache
def _requests(kind: str, n: int) -> list[bytes]:
    """``n`` add requests, encoded once for every run of (d)."""
    frames = []
    for seq in range(1, n + 1):
        if kind == "geerpc":
            frames.append(gp.encode_request(seq, "Arith.add", [seq, 1], {}, None))
        else:
            body = msgpack.packb([seq, "add", [seq, 1]])
            frames.append(LENGTH.pack(len(body)) + body)
    return frames


def load(kind: str, address: str, n: int, window: int = 256) -> dict[str, float]:
    """Pipelined pre-encoded requests from a plain socket; counts replies only."""
    frames = _requests(kind, n)
    host, port = address.split("@")[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        buffer = bytearray()
        if kind == "geerpc":
            sock.sendall(gp.encode_option(gp.Option()))
            while b"\n" not in buffer:
                buffer += sock.recv(4096)
            del buffer[: buffer.index(b"\n") + 1]
        start = time.perf_counter()
        sent = min(window, n)
        sock.sendall(b"".join(frames[:sent]))
        received = 0
        while received < n:
            buffer += sock.recv(1 << 18)
            pos = 0
            got = 0
            while len(buffer) - pos >= 4:
                (size,) = LENGTH.unpack_from(buffer, pos)
                if len(buffer) - pos - 4 < size:
                    break
                pos += 4 + size
                got += 1
            del buffer[:pos]
            received += got
            if got and sent < n:
                more = min(got, n - sent)
                sock.sendall(b"".join(frames[sent : sent + more]))
                sent += more
        return {"calls/s": n / (time.perf_counter() - start)}
    finally:
        sock.close()


# ----------------------------------------------------------------- processes


# ----------------------------------------------------------------- the run

KINDS = ("baseline", "geerpc")
SIZES = {"a": 3_000, "b": 30_000, "c": 1_000, "d": 100_000}


async def connect(kind: str, address: str) -> Any:
    if kind == "geerpc":
        return await geerpc.dial(address)
    host, port = address.split("@")[1].rsplit(":", 1)
    _, proto = await asyncio.get_running_loop().create_connection(BaselineClient, host, int(port))
    return proto


def method(kind: str, client: Any, name: str, service: str = "Arith") -> Call:
    return functools.partial(client.call, f"{service}.{name}" if kind == "geerpc" else name)


async def measure(kind: str, client: Any, address: str, scenario: str, sizes: dict[str, int]) -> dict[str, float]:
    gc.collect()  # a collection due from the previous run must not land in this one
    if scenario == "(a) sequential add":
        return await sequential(method(kind, client, "add"), sizes["a"])
    if scenario == "(b) 64 in flight":
        return await concurrent(method(kind, client, "add"), sizes["b"])
    if scenario == "(b-def) 64 in flight, def":
        return await concurrent(method(kind, client, "add", "PlainArith"), sizes["b"] // 2)
    if scenario == "(c) 64 KiB echo":
        return await echo(method(kind, client, "echo"), sizes["c"])
    assert scenario == "(d) server capacity"
    return await asyncio.get_running_loop().run_in_executor(None, load, kind, address, sizes["d"])


SCENARIOS = ("(a) sequential add", "(b) 64 in flight", "(b-def) 64 in flight, def", "(c) 64 KiB echo",
             "(d) server capacity")


async def run_pairs(addresses: dict[str, str], sizes: dict[str, int], repeats: int,
                    ) -> dict[str, dict[str, list[dict[str, float]]]]:
    """Every scenario, baseline and geerpc back to back, ``repeats`` times.

    Each pair runs one scenario on both, the order alternating from one repeat to the
    next (AB, BA, AB...), so a drift of the machine's speed hits both alike and the
    ratio of a pair compares runs seconds apart.
    """
    clients = {kind: await connect(kind, addresses[kind]) for kind in KINDS}
    runs: dict[str, dict[str, list[dict[str, float]]]] = {s: {k: [] for k in KINDS} for s in SCENARIOS}
    try:
        for kind, client in clients.items():  # warm up: caches, the allocator, geerpc's worker threads
            await sequential(method(kind, client, "add"), 500)
            await concurrent(method(kind, client, "add"), 6_400)
            if kind == "geerpc":
                await concurrent(method(kind, client, "add", "PlainArith"), 6_400)
            await echo(method(kind, client, "echo"), 200)
        for repeat in range(repeats):
            for scenario in SCENARIOS:
                for kind in KINDS if repeat % 2 == 0 else KINDS[::-1]:
                    if kind == "baseline" and scenario == "(b-def) 64 in flight, def":
                        continue  # the baseline has no thread pool: compared with its (b)
                    result = await measure(kind, clients[kind], addresses[kind], scenario, sizes)
                    runs[scenario][kind].append(result)
        runs["(b-def) 64 in flight, def"]["baseline"] = runs["(b) 64 in flight"]["baseline"]
    finally:
        await clients["geerpc"].close()
        clients["baseline"].transport.close()
    return runs


def spread(values: list[float]) -> tuple[float, float, float, float, float]:
    """median, first and third quartile, min, max"""
    if len(values) < 2:
        return values[0], values[0], values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q1, q3, min(values), max(values)


def report(runs: dict[str, dict[str, list[dict[str, float]]]], repeats: int, loop_name: str) -> None:
    print(f"geerpc vs bare {loop_name} + msgpack: {repeats} pairs run back to back, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print("ratio = geerpc / baseline within each pair (latency: lower is better; else higher)")
    print(f"{'scenario':27} {'metric':8} {'baseline':>9} {'geerpc':>9} {'ratio':>6} {'q1..q3':>11} {'min..max':>11}")
    for scenario, by_kind in runs.items():
        for name in by_kind["geerpc"][0]:
            base = [r[name] for r in by_kind["baseline"]]
            ours = [r[name] for r in by_kind["geerpc"]]
            ratio, q1, q3, low, high = spread([o / b for o, b in zip(ours, base)])
            print(f"{scenario:27} {name:8} {statistics.median(base):9.0f} {statistics.median(ours):9.0f} "
                  f"{ratio:6.2f} {q1:5.2f}..{q3:<5.2f} {low:5.2f}..{high:.2f}")


async def serve(kind: str) -> None:
    loop = asyncio.get_running_loop()
    if kind == "baseline":
        server = await loop.create_server(BaselineServer, "127.0.0.1", 0)
        print(f"tcp@127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    else:
        rpc = geerpc.Server()
        rpc.register(Arith())
        rpc.register(PlainArith())
        print(await rpc.start("127.0.0.1", 0), flush=True)
    await wait_for_stdin_eof()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=9, help="pairs per scenario (default 9)")
    parser.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    parser.add_argument("--quick", action="store_true", help="a tenth of the calls, for a smoke test")
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
    sizes = {k: v // 10 for k, v in SIZES.items()} if args.quick else SIZES
    # Both listen throughout, on the other core; the idle one sleeps.
    with servers(__file__, KINDS, *(["--uvloop"] if args.uvloop else [])) as addresses:
        runs = runner(run_pairs(addresses, sizes, args.repeats))
    report(runs, args.repeats, "uvloop" if args.uvloop else "asyncio")


if __name__ == "__main__":
    main()
