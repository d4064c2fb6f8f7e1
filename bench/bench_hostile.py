"""What hostile peers cost a geerpc server, and what a well-behaved client sees meanwhile.

    python bench/bench_hostile.py [--quick] [--attacks amplification,idle,...] [--max-frame-size N ...]

Each attack runs on its own, against a fresh server in a child process (so its peak
RSS, VmHWM, belongs to that attack alone). A well-behaved client, in another child
process, first measures its call latency with no attack; then this process starts
the attack, speaking raw bytes over sockets, and once it is in full swing the client
dials afresh and measures again. Attacks:

  amplification  a few connections send, right after the Option line, frames as large
                 as the server accepts holding nothing but empty msgpack arrays (0x90:
                 16.7 million of them in 16 MiB) to a method that does not exist, and
                 requests whose kwargs map has a million keys (6.9 MB), in turn
  idle           1,024 sockets complete the handshake and sit idle, and 256 more never
                 send the Option line; each is reopened as soon as it is closed
  never-read     connections with a 4 KiB SO_RCVBUF ask for many 4 MiB replies and
                 never read a byte
  big-args       requests with 15 MiB arguments to an ``async def`` handler that sleeps,
                 many in flight on each connection

The client dials (retrying for up to 10 s), then launches a call to ``Arith.add``
200 times a second without waiting for earlier calls (open loop: a stalled server
shows as slow calls, not as fewer calls), each with a 2 s timeout; a call that times
out counts at the 2 s it waited.

One row per attack reports the client's p50/p99 without and during the attack, whether
it could connect during the attack (and how long that took), its calls by outcome, and
the server's RSS (idle before the attack, peak, and after it), and peak open fds. The
goals are printed next to them: p99 under 50 ms during every attack, and RSS growth
under connections x the per-connection budget (the server's own byte budget per
connection when it has one, else 2 x max_frame_size, or ``--budget-mib``).

The server is ``geerpc.Server`` with its defaults; every keyword argument of its
constructor is also an option here (``--max-frame-size 4194304``, ``--idle-timeout
30``, ``none`` for None). The header prints the limits the server exposes.

The server runs pinned to core 0 and the attacker to core 1; the client is not
pinned. Attack sockets come from ``--attacker-ip`` (127.0.0.2: still loopback, but
not the client's address, so a per-address limit can tell them apart).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import inspect
import itertools
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import geerpc  # noqa: E402
from geerpc import protocol as gp  # noqa: E402

from _procs import Child, FdPeak, emit, memory_kb, open_fds, percentile, pin, wait_for_stdin_eof  # noqa: E402

SCRIPT = os.path.abspath(__file__)
MiB = 1024 * 1024
OPTION = gp.encode_option(gp.Option())
ATTACKS = ("amplification", "idle", "never-read", "big-args")
P99_GOAL_MS = 50.0


# ----------------------------------------------------------------- server process


class Arith:
    async def add(self, a: int, b: int) -> int:
        return a + b


class Bench:
    async def blob(self, size: int) -> bytes:
        await asyncio.sleep(0)  # a handler that awaits something, as real ones do
        return bytes(size)

    async def hold(self, data: bytes, seconds: float) -> int:
        await asyncio.sleep(seconds)
        return len(data)


def server_parameters() -> dict[str, inspect.Parameter]:
    """The keyword arguments of ``geerpc.Server(...)``, whatever they are today."""
    return {name: param for name, param in inspect.signature(geerpc.Server).parameters.items()
            if param.kind is inspect.Parameter.KEYWORD_ONLY}


def exposed_limits(server: geerpc.Server) -> dict[str, Any]:
    """What the server exposes of its limits: an attribute per constructor argument,
    and the fields of ``server.limits`` (what each connection applies)."""
    values: dict[str, Any] = {}
    for name in server_parameters():
        if hasattr(server, name):
            values[name] = getattr(server, name)
    limits = getattr(server, "limits", None)
    if limits is not None and dataclasses.is_dataclass(limits):
        for field in dataclasses.fields(limits):
            values.setdefault(field.name, getattr(limits, field.name))
    plain = (bool, int, float, str)
    return {k: v if v is None or isinstance(v, plain) else repr(v) for k, v in values.items()}


async def serve(options: dict[str, Any]) -> None:
    server = geerpc.Server(**options)
    server.register(Arith())
    server.register(Bench())
    address = await server.start("127.0.0.1", 0)
    emit({"address": address, "limits": exposed_limits(server), "pid": os.getpid()})
    await wait_for_stdin_eof()
    await server.stop(grace=1.0)


# ----------------------------------------------------------------- the well-behaved client


async def probe(address: str, seconds: float, rate: float, call_timeout: float,
                connect_limit: float = 10.0) -> dict[str, Any]:
    """Dial (retrying failures for up to ``connect_limit`` seconds), then for ``seconds``
    launch a call to Arith.add ``rate`` times a second, without waiting for earlier
    calls: a stalled server shows as slow calls, not as fewer calls."""
    loop = asyncio.get_running_loop()
    clock = time.perf_counter
    connects: list[tuple[bool, float, str | None]] = []
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    tasks: set[asyncio.Task[None]] = set()

    async def connect(limit: float) -> geerpc.Client | None:
        give_up = loop.time() + limit
        while loop.time() < give_up:
            started = clock()
            try:
                client = await geerpc.dial(address, connect_timeout=max(0.1, min(5.0, give_up - loop.time())))
            except geerpc.GeeRPCError as exc:
                connects.append((False, clock() - started, f"{type(exc).__name__}: {exc}"[:120]))
                await asyncio.sleep(0.2)
                continue
            connects.append((True, clock() - started, None))
            return client
        return None

    async def one(client: geerpc.Client) -> None:
        started = clock()
        try:
            await client.call("Arith.add", 1, 2, timeout=call_timeout)
            outcome = "ok"
        except geerpc.CallTimeout:
            outcome = "timeout"
        except geerpc.GeeRPCError as exc:
            outcome = type(exc).__name__
        if outcome in ("ok", "timeout"):
            latencies.append(clock() - started)
        outcomes[outcome] += 1

    client = await connect(connect_limit)
    end = loop.time() + seconds
    due = loop.time()
    while client is not None and loop.time() < end:
        if client.closed:
            await client.close()
            outcomes["redial"] += 1
            client = await connect(max(0.1, end - loop.time()))
            due = loop.time()
            continue
        if len(tasks) < rate * (call_timeout + 1):
            task = asyncio.ensure_future(one(client))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        due += 1 / rate
        await asyncio.sleep(max(0.0, due - loop.time()))
    if tasks:
        await asyncio.wait(tasks, timeout=call_timeout + 5)
    if client is not None:
        await client.close()
    latencies.sort()
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    return {"connects": connects, "outcomes": dict(outcomes), "calls": len(latencies),
            "p50_ms": None if p50 is None else p50 * 1e3, "p99_ms": None if p99 is None else p99 * 1e3}


async def probe_main() -> None:
    """The client process: one probe per JSON line on stdin, until stdin closes."""
    loop = asyncio.get_running_loop()
    emit({"ready": True})
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        job = json.loads(line)
        emit(await probe(job["address"], job["seconds"], job["rate"], job["call_timeout"],
                         job["connect_limit"]))


# ----------------------------------------------------------------- attacks (raw bytes)


def arrays_frame(size: int, seq: int = 1) -> bytes:
    """A request frame of ``size`` payload bytes whose args are empty arrays only."""
    head: bytes = b"\x96\x00" + msgpack.packb(seq) + msgpack.packb("Nope.nothing") + b"\xc0"
    count = size - len(head) - 5 - 1  # the array32 header, then the empty kwargs map
    payload = head + b"\xdd" + struct.pack(">I", count) + b"\x90" * count + b"\x80"
    assert len(payload) == size
    return struct.pack(">I", size) + payload


def kwargs_frame(keys: int, limit: int, seq: int = 2) -> bytes:
    """Arith.add with a kwargs map of ``keys`` keys (hex strings, nil values)."""
    while True:
        kwargs = {format(i, "x"): None for i in range(keys)}
        body: bytes = msgpack.packb([0, seq, "Arith.add", None, [], kwargs])
        if len(body) <= limit:
            return struct.pack(">I", len(body)) + body
        keys = keys * limit // len(body) - 1


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(4)
    return await reader.readexactly(int.from_bytes(header, "big"))


Worker = Callable[[Callable[[], None]], Awaitable[None]]  # takes ramp(): call it once in full swing


class Attack:
    """A set of attacking tasks, their counters, and when they are in full swing."""

    name = ""
    describe = ""
    connections = 0
    pause = 0.1  # before reopening a socket the server closed

    def __init__(self, args: argparse.Namespace, address: str, limits: dict[str, Any]) -> None:
        self.args = args
        host, _, port = address.partition("@")[2].rpartition(":")
        self.host, self.port = host, int(port)
        self.limits = limits
        self.max_frame = int(limits.get("max_frame_size") or gp.DEFAULT_MAX_FRAME_SIZE)
        self.counts: Counter[str] = Counter()
        self.peaks: Counter[str] = Counter()
        self.gauges: Counter[str] = Counter()
        self.failures: list[str] = []
        self.ramped = asyncio.Event()
        self._ramp_left = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._connecting = asyncio.Semaphore(64)  # the listen backlog is 100: do not overrun it
        self._source = args.attacker_ip

    def workers(self) -> list[Worker]:
        raise NotImplementedError

    def up(self, gauge: str, by: int = 1) -> None:
        self.gauges[gauge] += by
        self.peaks[gauge] = max(self.peaks[gauge], self.gauges[gauge])

    async def open(self, rcvbuf: int | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with self._connecting:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                if rcvbuf is not None:
                    # Before connecting, so the advertised TCP window stays small.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                if self._source:
                    try:
                        sock.bind((self._source, 0))
                    except OSError:
                        self._source = None  # no such loopback address here: use the default
                        sock.close()
                        return await self.open(rcvbuf)
                sock.setblocking(False)
                await asyncio.get_running_loop().sock_connect(sock, (self.host, self.port))
            except BaseException:
                sock.close()
                raise
            reader, writer = await asyncio.open_connection(sock=sock)
        self._writers.add(writer)
        return reader, writer

    def drop(self, writer: asyncio.StreamWriter | None) -> None:
        if writer is not None:
            self._writers.discard(writer)
            writer.transport.abort()

    async def run(self) -> None:
        workers = self.workers()
        self._ramp_left = len(workers)
        tasks = [asyncio.ensure_future(self._guard(worker)) for worker in workers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for writer in list(self._writers):
                self.drop(writer)

    async def _guard(self, worker: Worker) -> None:
        ramped = False

        def ramp() -> None:  # each worker calls it once it is in full swing
            nonlocal ramped
            if not ramped:
                ramped = True
                self._ramp_left -= 1
                if self._ramp_left <= 0:
                    self.ramped.set()

        try:
            await worker(ramp)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, not hidden
            self.failures.append(f"{type(exc).__name__}: {exc}"[:200])
        finally:
            ramp()

    def note(self) -> str:
        parts = [f"{key} {value:,}" for key, value in self.counts.items()]
        parts += [f"peak {key} {value:,}" for key, value in self.peaks.items()]
        return "; ".join(parts + self.failures[:3])


class Amplification(Attack):
    name = "amplification"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.connections = self.args.amp_connections
        self.arrays = arrays_frame(self.max_frame)
        self.kwargs = kwargs_frame(1_000_000, self.max_frame)
        count = self.max_frame - 30
        self.describe = (f"{self.connections} connections, each in turn: {count / 1e6:.1f} million empty "
                         f"arrays in one {self.max_frame / MiB:g} MiB frame to Nope.nothing; a kwargs map of "
                         f"{len(self.kwargs) / 1e6:.1f} MB to Arith.add")

    def workers(self) -> list[Worker]:
        return [self.one for _ in range(self.connections)]

    async def one(self, ramp: Callable[[], None]) -> None:
        while True:
            writer = None
            try:
                reader, writer = await self.open()
                writer.write(OPTION)
                writer.write(self.arrays)  # right behind the Option line, before its ack
                await writer.drain()
                self.counts["array frames"] += 1
                ramp()
                line = await reader.readline()
                if not line.startswith(b'{"MagicNumber"'):
                    self.counts["refused"] += 1
                    raise ConnectionResetError
                frames = itertools.cycle([(self.kwargs, "kwargs frames"), (self.arrays, "array frames")])
                while True:
                    await read_frame(reader)
                    self.counts["replies"] += 1
                    frame, label = next(frames)
                    writer.write(frame)
                    await writer.drain()
                    self.counts[label] += 1
            except (OSError, asyncio.IncompleteReadError):
                self.counts["closed by the server"] += 1
            finally:
                self.drop(writer)
            await asyncio.sleep(self.pause)


class IdleSockets(Attack):
    name = "idle"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        self.idle, self.silent = self.args.idle_sockets, self.args.silent_sockets
        self.connections = self.idle + self.silent
        self.describe = (f"{self.idle:,} sockets handshake and sit idle, {self.silent:,} never send the "
                         f"Option; each reopened {self.pause * 1e3:g} ms after it is closed")

    def workers(self) -> list[Worker]:
        workers: list[Worker] = [self.handshaken for _ in range(self.idle)]
        return workers + [self.quiet for _ in range(self.silent)]

    async def handshaken(self, ramp: Callable[[], None]) -> None:
        while True:
            writer = None
            try:
                reader, writer = await self.open()
                writer.write(OPTION)
                await writer.drain()
                line = await reader.readline()
                ramp()
                if line.startswith(b'{"MagicNumber"'):
                    self.counts["admitted"] += 1
                    self.up("admitted")
                    try:
                        await reader.read()  # sit idle until the server closes
                    finally:
                        self.up("admitted", -1)
                    self.counts["idle closed by the server"] += 1
                else:
                    self.counts["refused"] += 1
            except (OSError, asyncio.IncompleteReadError):
                self.counts["connect failed"] += 1
                ramp()
            finally:
                self.drop(writer)
            await asyncio.sleep(self.pause)

    async def quiet(self, ramp: Callable[[], None]) -> None:
        while True:
            writer = None
            try:
                reader, writer = await self.open()
                ramp()
                self.counts["silent opened"] += 1
                self.up("silent")
                try:
                    await reader.read()  # a refusal, or nothing: until the server closes
                finally:
                    self.up("silent", -1)
            except (OSError, asyncio.IncompleteReadError):
                self.counts["connect failed"] += 1
                ramp()
            finally:
                self.drop(writer)
            await asyncio.sleep(self.pause)


class NeverRead(Attack):
    name = "never-read"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        args = self.args
        self.connections = args.never_read_connections
        self.size = min(args.reply_mib * MiB, self.max_frame - 64)
        self.requests = args.never_read_requests
        self.describe = (f"{self.connections} connections with SO_RCVBUF 4 KiB, each asks for "
                         f"{self.requests} "
                         f"replies of {self.size / MiB:g} MiB (Bench.blob) and never reads")

    def workers(self) -> list[Worker]:
        return [self.one for _ in range(self.connections)]

    async def one(self, ramp: Callable[[], None]) -> None:
        reader, writer = await self.open(rcvbuf=4096)
        writer.write(OPTION + b"".join(gp.encode_request(seq, "Bench.blob", [self.size], {}, None)
                                       for seq in range(1, self.requests + 1)))
        self.counts["requests sent"] += self.requests
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await writer.drain()
        ramp()
        await writer.drain()
        await asyncio.Event().wait()  # and never read: until cancelled


class BigArgs(Attack):
    name = "big-args"

    def __init__(self, *a: Any) -> None:
        super().__init__(*a)
        args = self.args
        self.connections = args.big_connections
        self.window = args.big_in_flight
        self.seconds = args.hold_seconds
        size = min(int(args.big_arg_mib * MiB), self.max_frame - 64)
        self.rest = (msgpack.packb("Bench.hold") + msgpack.packb(None)
                     + msgpack.packb([bytes(size), self.seconds], use_bin_type=True) + msgpack.packb({}))
        self.describe = (f"{self.connections} connections, each keeping {self.window} requests in flight to "
                         f"Bench.hold (sleeps {self.seconds:g} s) with a {size / MiB:g} MiB argument")

    def workers(self) -> list[Worker]:
        return [self.one for _ in range(self.connections)]

    def send(self, writer: asyncio.StreamWriter, seq: int) -> None:
        head = b"\x96\x00" + msgpack.packb(seq)
        writer.write(struct.pack(">I", len(head) + len(self.rest)) + head)
        writer.write(self.rest)

    async def one(self, ramp: Callable[[], None]) -> None:
        while True:
            writer = None
            try:
                reader, writer = await self.open()
                writer.write(OPTION)
                if not (await reader.readline()).startswith(b'{"MagicNumber"'):
                    self.counts["refused"] += 1
                    raise ConnectionResetError
                seq = 0
                for seq in range(1, self.window + 1):
                    self.send(writer, seq)
                    await writer.drain()
                    self.counts["requests sent"] += 1
                ramp()
                while True:
                    await read_frame(reader)
                    self.counts["replies"] += 1
                    seq += 1
                    self.send(writer, seq)
                    await writer.drain()
                    self.counts["requests sent"] += 1
            except (OSError, asyncio.IncompleteReadError):
                self.counts["closed by the server"] += 1
            finally:
                self.drop(writer)
            await asyncio.sleep(self.pause)


ATTACK_CLASSES: dict[str, type[Attack]] = {"amplification": Amplification, "idle": IdleSockets,
                                           "never-read": NeverRead, "big-args": BigArgs}


# ----------------------------------------------------------------- one row


@dataclasses.dataclass
class Row:
    attack: str
    describe: str = ""
    connections: int = 0
    base: dict[str, Any] = dataclasses.field(default_factory=dict)
    during: dict[str, Any] = dataclasses.field(default_factory=dict)
    rss_idle: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    fds_idle: int = 0
    fds_peak: int = 0
    server_alive: bool = True
    note: str = ""
    ramp: float = 0.0  # seconds the attack took to be in full swing
    stop: float = 0.0  # seconds the server took to stop afterwards


async def run_probe(client: Child, address: str, seconds: float, args: argparse.Namespace) -> dict[str, Any]:
    client.send({"address": address, "seconds": seconds, "rate": args.rate, "call_timeout": args.call_timeout,
                 "connect_limit": args.connect_limit})
    result = await client.read(timeout=args.connect_limit + seconds + args.call_timeout + 30)
    if result is None:
        raise RuntimeError(f"the client exited without a result: {''.join(client.stderr_tail)[-2000:]}")
    return result


async def run_attack(name: str, client: Child, args: argparse.Namespace,
                     options: dict[str, Any]) -> tuple[Row, dict[str, Any]]:
    server, ready = await Child.start("server", SCRIPT, "--serve", json.dumps(options),
                                      *(["--no-pin"] if args.no_pin else []))
    address, limits, pid = ready["address"], ready["limits"], server.pid
    row = Row(name)
    try:
        row.base = await run_probe(client, address, args.baseline_seconds, args)
        row.rss_idle, row.fds_idle = memory_kb(pid)[0], open_fds(pid)
        attack = ATTACK_CLASSES[name](args, address, limits)
        row.describe, row.connections = attack.describe, attack.connections + 1
        with FdPeak(pid) as fds:
            attacking = asyncio.ensure_future(attack.run())
            swing = asyncio.ensure_future(attack.ramped.wait())
            started = time.monotonic()
            await asyncio.wait([attacking, swing], timeout=args.ramp_limit,
                               return_when=asyncio.FIRST_COMPLETED)
            row.ramp = time.monotonic() - started
            swing.cancel()
            if not attacking.done():
                row.during = await run_probe(client, address, args.attack_seconds, args)
            attacking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await attacking
            row.fds_peak = fds.peak
        row.rss_peak = memory_kb(pid)[1]
        await asyncio.sleep(0.5)  # what is left once the attackers are gone
        row.rss_after = memory_kb(pid)[0]
        row.server_alive = server.alive()
        row.note = attack.note()
        if not row.server_alive:
            row.note += f"; the server exited ({server.process.returncode})"
    finally:
        started = time.monotonic()
        code = await server.stop(timeout=15.0)
        row.stop = time.monotonic() - started
        if code not in (0, None) and row.server_alive:
            row.note += f"; server exit status {code}"
    return row, limits


# ----------------------------------------------------------------- the report


def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def connect_text(probe: dict[str, Any]) -> str:
    connects = probe.get("connects", [])
    failed = [c for c in connects if not c[0]]
    done = [c for c in connects if c[0]]
    if not done:
        if not failed:
            return "no attempt"
        kind, _, message = (failed[-1][2] or "").partition(": ")
        return f"no: {len(failed)} tries, {kind} ({message.split(': ')[-1][:60]})"
    first = done[0][1] * 1e3
    text = f"yes, {first:.1f} ms" if first < 1000 else f"yes, {first / 1e3:.1f} s"
    if failed:
        text += f" after {len(failed)} failed"
    if len(done) > 1:
        text += f", {len(done) - 1} redials"
    return text


def calls_text(probe: dict[str, Any]) -> str:
    outcomes = dict(probe.get("outcomes", {}))
    ok, timeout = outcomes.pop("ok", 0), outcomes.pop("timeout", 0)
    outcomes.pop("redial", None)
    other = sum(outcomes.values())
    return f"{ok:,}/{timeout:,}/{other:,}"


def budget_for(limits: dict[str, Any], override_mib: float | None) -> tuple[int, str]:
    if override_mib is not None:
        return int(override_mib * MiB), "--budget-mib"
    for name, value in limits.items():
        if (type(value) is int and name != "max_frame_size"
                and ("budget" in name or name.endswith("_bytes"))):
            return value, f"the server's {name}"
    frame = int(limits.get("max_frame_size") or gp.DEFAULT_MAX_FRAME_SIZE)
    return 2 * frame, "2 x max_frame_size: the server exposes no per-connection byte budget"


def report(rows: list[Row], limits: dict[str, Any], args: argparse.Namespace) -> None:
    budget, source = budget_for(limits, args.budget_mib)
    print()
    header = ["attack", "conns", "no attack p50/p99 ms", "attack p50/p99 ms", "p99<50", "client connect",
              "ok/timeout/other", "RSS MiB idle/peak/after", "RSS goal MiB", "fds peak"]
    table = []
    for row in rows:
        p99 = row.during.get("p99_ms")
        latency_ok = "yes" if p99 is not None and p99 < P99_GOAL_MS and row.during.get("calls") else "NO"
        growth = (row.rss_peak - row.rss_idle) / 1024
        allowed = row.connections * budget / MiB
        table.append([
            row.attack, f"{row.connections:,}",
            f"{fmt_ms(row.base.get('p50_ms'))} / {fmt_ms(row.base.get('p99_ms'))}",
            f"{fmt_ms(row.during.get('p50_ms'))} / {fmt_ms(p99)}", latency_ok,
            connect_text(row.during) if row.during else "-", calls_text(row.during) if row.during else "-",
            f"{row.rss_idle / 1024:.0f} / {row.rss_peak / 1024:.0f} / {row.rss_after / 1024:.0f}",
            f"+{growth:,.0f} < {allowed:,.0f}: {'yes' if growth < allowed else 'NO'}",
            f"{row.fds_peak:,} (idle {row.fds_idle})",
        ])
    widths = [max(len(str(line[i])) for line in [header, *table]) for i in range(len(header))]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)))
    print()
    print(f"goals: p99 under {P99_GOAL_MS:g} ms during every attack; RSS growth (peak - idle) under "
          f"conns x {budget / MiB:g} MiB per connection ({source}).")
    print("conns: the attack's connections plus the client's; ok/timeout/other: the client's calls "
          "during the attack.")
    for row in rows:
        print(f"  {row.attack}: {row.describe}.")
        if row.note:
            print(f"      attacker: {row.note}")
        errors = {k: v for k, v in row.during.get("outcomes", {}).items() if k not in ("ok", "timeout")}
        if errors:
            print(f"      client: {', '.join(f'{k} {v:,}' for k, v in errors.items())}")
        if not row.server_alive:
            print("      the server process died during this attack")


def source_state() -> str:
    """The commit the geerpc package comes from, and whether geerpc/ has changes on top."""
    root = os.path.dirname(os.path.dirname(SCRIPT))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "geerpc"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "not a git checkout"
    if not commit:
        return "not a git checkout"
    return f"commit {commit}" + (" with uncommitted changes in geerpc/" if dirty else "")


def print_header(limits: dict[str, Any], args: argparse.Namespace, options: dict[str, Any]) -> None:
    print(f"geerpc {geerpc.__version__} ({source_state()}), Python {platform.python_version()}, "
          f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d %H:%M:%S')}")
    changed = f", except {', '.join(sorted(options))}" if options else ""
    print(f"server limits (geerpc.Server defaults{changed}):")
    print("  " + "  ".join(f"{k}={v}" for k, v in limits.items()))
    print(f"client: Arith.add {args.rate:g}/s open loop, {args.call_timeout:g} s timeout; "
          f"{args.baseline_seconds:g} s without attack, then {args.attack_seconds:g} s during it")
    sys.stdout.flush()


# ----------------------------------------------------------------- main


def parse_value(text: str) -> Any:
    if text.lower() == "none":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return int(text)
    except ValueError:
        return float(text)


async def main(args: argparse.Namespace, options: dict[str, Any]) -> None:
    rows: list[Row] = []
    limits: dict[str, Any] = {}
    client, _ = await Child.start("client", SCRIPT, "--probe")
    try:
        for name in args.attacks:
            started = time.monotonic()
            row, limits = await run_attack(name, client, args, options)
            if len(rows) == 0:
                print_header(limits, args, options)
            rows.append(row)
            print(f"  {name}: during the attack p50 {fmt_ms(row.during.get('p50_ms'))} ms, "
                  f"p99 {fmt_ms(row.during.get('p99_ms'))} ms, peak RSS {row.rss_peak / 1024:.0f} MiB "
                  f"({time.monotonic() - started:.1f} s: {row.ramp:.1f} s to ramp up, "
                  f"{row.stop:.1f} s to stop the server)", flush=True)
    finally:
        await client.stop()
    report(rows, limits, args)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a 20-second smoke run: short phases")
    parser.add_argument("--attacks", default=",".join(ATTACKS),
                        help=f"comma-separated, from {', '.join(ATTACKS)}")
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--attack-seconds", type=float, default=15.0)
    parser.add_argument("--ramp-limit", type=float, default=5.0,
                        help="seconds an attack may take to be in full swing before the client measures")
    parser.add_argument("--rate", type=float, default=200.0, help="the client's calls per second")
    parser.add_argument("--call-timeout", type=float, default=2.0)
    parser.add_argument("--connect-limit", type=float, default=10.0,
                        help="seconds the client keeps trying to connect during an attack")
    parser.add_argument("--attacker-ip", default="127.0.0.2",
                        help="source address of the attack sockets ('' for any)")
    parser.add_argument("--budget-mib", type=float, help="per-connection memory budget for the RSS goal")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the server and attacker to cores")
    parser.add_argument("--amp-connections", type=int, default=3)
    parser.add_argument("--idle-sockets", type=int, default=1024)
    parser.add_argument("--silent-sockets", type=int, default=256)
    parser.add_argument("--never-read-connections", type=int, default=4)
    parser.add_argument("--never-read-requests", type=int, default=32)
    parser.add_argument("--reply-mib", type=int, default=4)
    parser.add_argument("--big-connections", type=int, default=2)
    parser.add_argument("--big-in-flight", type=int, default=32)
    parser.add_argument("--big-arg-mib", type=float, default=15.0)
    parser.add_argument("--hold-seconds", type=float, default=2.0)
    server_group = parser.add_argument_group("server options (geerpc.Server keyword arguments)")
    for name, param in server_parameters().items():
        server_group.add_argument("--" + name.replace("_", "-"), dest="server_" + name, type=parse_value,
                                  metavar="VALUE", help=f"default {param.default!r}")
    args = parser.parse_args()
    if args.serve is not None:
        if not args.no_pin:
            pin(0)
        asyncio.run(serve(json.loads(args.serve)))
        return
    if args.probe:
        pin(None)
        asyncio.run(probe_main())
        return
    if args.quick:
        args.baseline_seconds, args.attack_seconds, args.connect_limit, args.ramp_limit = 1.0, 2.0, 2.0, 1.5
    args.attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    unknown = [a for a in args.attacks if a not in ATTACK_CLASSES]
    if unknown:
        parser.error(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
    options = {name: getattr(args, "server_" + name) for name in server_parameters()
               if getattr(args, "server_" + name) is not None}
    if not args.no_pin:
        pin(1)
    asyncio.run(main(args, options))


if __name__ == "__main__":
    cli()
