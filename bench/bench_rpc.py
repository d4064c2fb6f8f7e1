"""geerpc against a bare asyncio + msgpack baseline, in one run.

    python bench/bench_rpc.py [--repeats 3] [--uvloop] [--quick]

The server runs in a child process pinned to one core, the client in this process
pinned to the other. Each scenario runs against the baseline server and against
geerpc's, ``--repeats`` times, interleaved; the median is reported, with the ratio
geerpc/baseline (for latency, lower is better; for everything else, higher).

Scenarios:
  (a) sequential add(a, b), one call in flight: calls/s, p50, p99
  (b) 64 calls in flight on one connection, 50,000 calls: calls/s
  (c) 64 KiB bytes echo, one call in flight: MB/s
  (d) server capacity: a load generator writes pre-encoded requests (up to 256 in
      flight) and only counts replies, so the server is the bottleneck: calls/s
  (b-def) as (b), against a plain ``def`` method (run in the server's thread pool)

The baseline is what a careful person writes by hand with nothing but asyncio and
msgpack: the same length-prefixed framing, a dict of futures on the client, and a
Protocol on the server that answers each request with one write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
from typing import Any

import msgpack

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import geerpc  # noqa: E402
from geerpc import protocol as gp  # noqa: E402

LENGTH = struct.Struct(">I")
ECHO_SIZE = 64 * 1024


# ----------------------------------------------------------------- baseline


class BaselineServer(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        while len(buffer) - pos >= 4:
            (size,) = LENGTH.unpack_from(buffer, pos)
            if len(buffer) - pos - 4 < size:
                break
            seq, method, args = msgpack.unpackb(buffer[pos + 4 : pos + 4 + size])
            pos += 4 + size
            result = args[0] + args[1] if method == "add" else args[0]
            body = msgpack.packb([seq, result])
            self.transport.write(LENGTH.pack(len(body)) + body)
        del buffer[:pos]


class BaselineClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.seq = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        while len(buffer) - pos >= 4:
            (size,) = LENGTH.unpack_from(buffer, pos)
            if len(buffer) - pos - 4 < size:
                break
            seq, result = msgpack.unpackb(buffer[pos + 4 : pos + 4 + size])
            pos += 4 + size
            self.pending.pop(seq).set_result(result)
        del buffer[:pos]

    async def call(self, method: str, *args: Any) -> Any:
        self.seq += 1
        body = msgpack.packb([self.seq, method, args])
        future = asyncio.get_running_loop().create_future()
        self.pending[self.seq] = future
        self.transport.write(LENGTH.pack(len(body)) + body)
        return await future


# ----------------------------------------------------------------- geerpc service


class Arith:
    async def add(self, a: int, b: int) -> int:
        return a + b

    async def echo(self, value: Any) -> Any:
        return value


class PlainArith:
    def add(self, a: int, b: int) -> int:
        return a + b


# ----------------------------------------------------------------- server process


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
    await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes our stdin


# ----------------------------------------------------------------- client side


async def connect(kind: str, address: str) -> Any:
    if kind == "geerpc":
        client = await geerpc.dial(address)
        return client
    host, port = address.split("@")[1].rsplit(":", 1)
    _, proto = await asyncio.get_running_loop().create_connection(BaselineClient, host, int(port))
    return proto


def method_name(kind: str, name: str, service: str = "Arith") -> str:
    return f"{service}.{name}" if kind == "geerpc" else name


async def sequential(kind: str, client: Any, n: int) -> dict[str, float]:
    add = method_name(kind, "add")
    latencies = []
    clock = time.perf_counter
    for i in range(n):
        start = clock()
        await client.call(add, i, 1)
        latencies.append(clock() - start)
    latencies.sort()
    return {"calls/s": n / sum(latencies), "p50 us": latencies[n // 2] * 1e6, "p99 us": latencies[int(n * 0.99)] * 1e6}


async def concurrent(kind: str, client: Any, n: int, in_flight: int, service: str = "Arith") -> dict[str, float]:
    add = method_name(kind, "add", service)
    per_worker = n // in_flight

    async def worker() -> None:
        for i in range(per_worker):
            await client.call(add, i, 1)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return {"calls/s": per_worker * in_flight / (time.perf_counter() - start)}


async def echo(kind: str, client: Any, n: int) -> dict[str, float]:
    name = method_name(kind, "echo")
    payload = os.urandom(ECHO_SIZE)
    start = time.perf_counter()
    for _ in range(n):
        assert len(await client.call(name, payload)) == ECHO_SIZE
    return {"MB/s": n * ECHO_SIZE / (time.perf_counter() - start) / 1e6}


def load(kind: str, address: str, n: int, window: int = 256) -> dict[str, float]:
    """Pipelined pre-encoded requests from a plain socket; counts replies only."""
    frames = []
    for seq in range(1, n + 1):
        if kind == "geerpc":
            frames.append(gp.encode_request(seq, "Arith.add", [seq, 1], {}, None))
        else:
            body = msgpack.packb([seq, "add", [seq, 1]])
            frames.append(LENGTH.pack(len(body)) + body)
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


def start_server(kind: str, use_uvloop: bool) -> tuple[subprocess.Popen[str], str]:
    args = [sys.executable, __file__, "--serve", kind] + (["--uvloop"] if use_uvloop else [])
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    if not address:
        proc.kill()
        raise RuntimeError(f"{kind} server did not start")
    return proc, address


def stop_server(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def run_once(kind: str, address: str, sizes: dict[str, int]) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    client = await connect(kind, address)
    try:
        await sequential(kind, client, 500)  # warm up
        results["(a) sequential add"] = await sequential(kind, client, sizes["a"])
        results["(b) 64 in flight"] = await concurrent(kind, client, sizes["b"], 64)
        await echo(kind, client, 200)  # warm up: the allocator settles on large buffers
        results["(c) 64 KiB echo"] = await echo(kind, client, sizes["c"])
        if kind == "geerpc":
            results["(b-def) 64 in flight, def"] = await concurrent(kind, client, sizes["b"] // 2, 64, "PlainArith")
        else:
            results["(b-def) 64 in flight, def"] = results["(b) 64 in flight"]
    finally:
        if kind == "geerpc":
            await client.close()
        else:
            client.transport.close()
    results["(d) server capacity"] = await asyncio.get_running_loop().run_in_executor(
        None, load, kind, address, sizes["d"])
    return results


def pin(core: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > 1:  # type: ignore[operator]
        os.sched_setaffinity(0, {core % os.cpu_count()})  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", choices=["baseline", "geerpc"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    args = parser.parse_args()
    runner: Any = asyncio.run
    if args.uvloop:
        import uvloop

        runner = uvloop.run
    if args.serve:
        pin(0)
        runner(serve(args.serve))
        return
    pin(1)
    sizes = {"a": 5_000, "b": 50_000, "c": 2_000, "d": 200_000}
    if args.quick:
        sizes = {k: v // 10 for k, v in sizes.items()}
    runs: dict[str, list[dict[str, dict[str, float]]]] = {"baseline": [], "geerpc": []}
    for repeat in range(args.repeats):
        # alternate who goes first: the client process's memory state is shared
        for kind in ("baseline", "geerpc") if repeat % 2 == 0 else ("geerpc", "baseline"):
            proc, address = start_server(kind, args.uvloop)
            try:
                runs[kind].append(runner(run_once(kind, address, sizes)))
            finally:
                stop_server(proc)
    loop_name = "uvloop" if args.uvloop else "asyncio"
    print(f"geerpc vs bare {loop_name} + msgpack, median of {args.repeats}, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} cores")
    print(f"{'scenario':28} {'metric':8} {'baseline':>12} {'geerpc':>12} {'ratio':>7}")
    for scenario in runs["geerpc"][0]:
        for metric in runs["geerpc"][0][scenario]:
            base = statistics.median(r[scenario][metric] for r in runs["baseline"])
            ours = statistics.median(r[scenario][metric] for r in runs["geerpc"])
            print(f"{scenario:28} {metric:8} {base:12.1f} {ours:12.1f} {ours / base:7.2f}")


if __name__ == "__main__":
    main()
