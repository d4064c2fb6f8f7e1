"""A soak run: mixed work for a long time, watching each process's memory and descriptors.

    python bench/soak.py [--minutes 30] [--pause 0.002] [--clients 2] [--workers 3] [--malloc steady|glibc] [--leak KB]

Processes: a registry (``geerpc.registry.Registry``), a server process holding two
``geerpc.Server`` that announce themselves to it, and ``--clients`` client processes.
Each client runs ``--workers`` loops, each with a connection of its own, doing in
turn: plain calls (``async def`` with no await), ``def`` handlers (worker threads),
``async def`` handlers that sleep, handler errors, unknown methods, server-side
timeouts of ``async def`` and of ``def`` handlers, client-side cancels, 64 KiB echoes,
reconnects (close and dial again), and, through one XClient over a RegistryDiscovery,
calls and broadcasts to both servers; the XClient is replaced now and then.

Every call has an expected outcome (a result, or a given error); anything else is
unexpected, as is any warning logged or exception reported by an event loop in any
process. Every minute this prints the RSS and open fds of each process and the calls
of that minute by outcome. RSS is sampled ten times a second: a buffer in flight (a
64 KiB echo, a connection's receive buffer) moves single samples by tens or hundreds
of kB, and many samples average that out. At the end it prints, per process, the
least-squares slope of RSS (kB/min) over the last two thirds of the run, with its
standard error, against the goal of under 1 kB/min, and every unexpected error with
its count.

Each process runs malloc steady (``--malloc steady``, glibc only): blocks of 32 KiB
or more are mapped on their own and unmapped when freed, the heap's free pages are
given back once a second (``malloc_trim``), and no thread keeps a cache of freed
blocks (glibc's tcache, ``GLIBC_TUNABLES=glibc.malloc.tcache_count=0``), so that RSS
counts the pages that hold something. A tcache keeps up to seven freed blocks of each
size below 1 KiB per thread, counted by malloc as in use and beyond ``malloc_trim``'s
reach. The server process, with 66 threads (its handler threads), filled those caches
for the whole run: +5 to +8 kB/min of main heap at five times the default rate, with
nothing kept; the clients, with two threads each, did not grow. With glibc's defaults RSS also says where malloc put its free memory: the
main heap grows from its top in steps of 128 KiB (its top pad) when a 64 KiB buffer
finds no room, and shrinks only while its top is free, so one small object left above
a buffer keeps a step for good. One such step inside the last 20 minutes is +10
kB/min, ten times the goal, with nothing kept. A leak still shows: what is kept stays
in pages that cannot be given back. ``--malloc glibc`` measures RSS with glibc's
defaults, and ``--leak KB`` makes the server process keep KB kB more each minute on
purpose, to see that the soak catches a leak of that size. Beside each process's RSS it
prints Python's allocated blocks, the bytes in them and the 1 MiB arenas pymalloc holds
them in (now, and made in all), and glibc malloc's bytes in use and held free, so a
growth can be told apart as objects kept, C allocations kept, or freed memory an
allocator keeps (an arena stays while any block in it lives). Two diagnostics find what grows; each appends to a file per process
once a minute. ``--trace FILE`` runs tracemalloc: the bytes Python holds, and every
fifth minute what grew most by traceback, with the objects allocated there and what
holds them (for allocations made in C, whose traceback stops at a loop callback).
``--census FILE`` counts objects by type, with a few new ones of the types that grew
and their holders.
``bench/resident.py PID``, run beside it, tells which kind of page a growing RSS is
(pymalloc's pools, the main heap, thread stacks, other anonymous mappings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import itertools
import logging
import os
import platform
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import geerpc  # noqa: E402

from _procs import Child, emit, memory_kb, open_fds, slope, slope_error, thread_count, wait_for_stdin_eof  # noqa: E402

SCRIPT = os.path.abspath(__file__)
SLOPE_GOAL = 1.0  # kB/min
TRACE_FRAMES = 8  # --trace: frames kept per allocation (each one slows every allocation)
ECHO = os.urandom(64 * 1024)
WORKERS = 32  # each server's max_workers (its default)


# ----------------------------------------------------------------- what every child reports


class Troubles(logging.Handler):
    """Counts warnings and errors logged in this process, and loop exceptions."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "geerpc.handler" and record.getMessage().startswith("Work.fail raised ValueError"):
            return  # the handler error the clients ask for: the server reports it, as it should
        self.seen[f"log {record.levelname} {record.name}: {record.getMessage()}"[:300]] += 1

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        kind = type(exc).__name__ if exc else ""
        self.seen[f"loop: {context.get('message')} {kind} {exc or ''}"[:300]] += 1


def install_troubles() -> Troubles:
    troubles = Troubles()
    logging.getLogger().addHandler(troubles)
    asyncio.get_running_loop().set_exception_handler(troubles.loop_exception)
    return troubles


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _glibc(name: str, argtypes: list[Any], restype: Any = ctypes.c_int) -> Callable[..., Any] | None:
    """glibc's function ``name``, or None where there is no such function (not glibc, or too old)."""
    try:
        function = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = argtypes, restype
    return cast(Callable[..., Any], function)


MALLINFO = _glibc("mallinfo2", [], _Mallinfo2)  # glibc 2.33 and later


def heap() -> dict[str, int]:
    """Where this process's memory is: Python's allocated blocks, and malloc's bytes in
    use and held free (glibc, all arenas), so a growing RSS can be told apart as objects
    kept, C allocations kept, or freed memory the allocator does not give back."""
    found = {"blocks": sys.getallocatedblocks(), **pymalloc()}
    if MALLINFO is not None:
        info = MALLINFO()
        found["in_use_kb"] = (info.uordblks + info.hblkhd) // 1024
        found["free_kb"] = info.fordblks // 1024
    return found


_PYMALLOC_LINES = {"# arenas allocated current": "arenas", "# arenas allocated total": "arenas_ever",
                   "# bytes in allocated blocks": "pymalloc_used"}


def pymalloc() -> dict[str, int]:
    """Python's small-object allocator (``sys._debugmallocstats``): its 1 MiB arenas now
    and ever made, and the bytes in its allocated blocks. An arena stays mapped while
    any block in it lives, and keeps the pages its pools ever touched, so RSS can grow
    with the arenas while the blocks do not. Empty where the build has no pymalloc."""
    if not hasattr(sys, "_debugmallocstats"):
        return {}
    with tempfile.TemporaryFile() as out:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode("ascii", "replace")
    found = {}
    for line in text.splitlines():
        name, _, value = line.partition("=")
        key = _PYMALLOC_LINES.get(name.strip())
        if key is not None:
            found[key] = int(value.strip().replace(",", ""))
    return found


MALLOC_TRIM = _glibc("malloc_trim", [ctypes.c_size_t])
MALLOPT = _glibc("mallopt", [ctypes.c_int, ctypes.c_int])
M_MMAP_THRESHOLD = -3  # glibc's malloc.h
STEADY_MMAP_THRESHOLD = 32 * 1024
#: read by glibc when a process starts, so set for the children before they start
STEADY_TUNABLES = "glibc.malloc.tcache_count=0"
CAN_STEADY = MALLOPT is not None and MALLOC_TRIM is not None


def steady_malloc() -> bool:
    """Ask glibc to keep no free memory resident: blocks of 32 KiB or more are mapped
    on their own (and unmapped when freed) instead of coming from the main heap, and
    ``trim_every`` gives the heap's free pages back. False where glibc is not there."""
    return CAN_STEADY and MALLOPT is not None and MALLOPT(M_MMAP_THRESHOLD, STEADY_MMAP_THRESHOLD) == 1


@dataclass(frozen=True)
class Life:
    """What every child does beside its work.

    every: seconds between two status lines.
    steady: run malloc steady (``steady_malloc``; ``--malloc steady``).
    leak_kb: kB this process keeps each minute, on purpose (a check of the soak itself).
    trace, census: the files of ``--trace`` and ``--census`` for this process, if any.
    """

    every: float = 5.0
    steady: bool = True
    leak_kb: float = 0.0
    trace: str | None = None
    census: str | None = None


async def report_every(seconds: float, status: Callable[[], dict[str, Any]]) -> None:
    while True:
        await asyncio.sleep(seconds)
        emit(status())


async def trim_every(seconds: float) -> None:
    """Give the allocator's free pages back to the system every ``seconds``."""
    assert MALLOC_TRIM is not None
    while True:
        await asyncio.sleep(seconds)
        MALLOC_TRIM(0)


async def leak(kb_per_minute: float) -> None:
    """Keep ``kb_per_minute`` kB more each minute, never freed: a 1 KiB bytes object
    each time that much is due (each second, a sixtieth of the rate falls due)."""
    kept: list[bytes] = []
    due = 0.0
    while True:
        await asyncio.sleep(1.0)
        due += kb_per_minute / 60
        while due >= 1.0:
            due -= 1.0
            kept.append(os.urandom(1024 - sys.getsizeof(b"")))


async def child_life(ready: dict[str, Any], status: Callable[[], dict[str, Any]], life: Life) -> None:
    """Report ready, then a status every ``life.every`` seconds until stdin closes, then
    a last one; the diagnostics asked for run with each status."""
    diagnose = start_diagnostics(life.trace, life.census)

    def diagnosed() -> dict[str, Any]:
        if diagnose is not None:
            diagnose()
        return status()

    emit(ready)
    beside = [asyncio.ensure_future(report_every(life.every, diagnosed))]
    if life.steady and steady_malloc():
        beside.append(asyncio.ensure_future(trim_every(1.0)))
    if life.leak_kb:
        beside.append(asyncio.ensure_future(leak(life.leak_kb)))
    try:
        await wait_for_stdin_eof()
    finally:
        for task in beside:
            task.cancel()
        for task in beside:
            with contextlib.suppress(asyncio.CancelledError):
                await task


# ----------------------------------------------------------------- registry and servers


class Arith:
    async def add(self, a: int, b: int) -> int:
        return a + b

    def mul(self, a: int, b: int) -> int:
        return a * b

    async def echo(self, value: bytes) -> bytes:
        return value


class Work:
    async def nap(self, seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "rested"

    def block(self, seconds: float) -> str:
        time.sleep(seconds)
        return "blocked"

    async def fail(self, text: str) -> None:
        raise ValueError(text)


async def run_registry(life: Life) -> None:
    from geerpc.registry import Registry

    troubles = install_troubles()
    registry = Registry(timeout=30)
    url = await registry.start("127.0.0.1", 0)
    try:
        def status() -> dict[str, Any]:
            return {"troubles": dict(troubles.seen), "heap": heap()}

        await child_life({"url": url}, status, life)
    finally:
        await registry.stop()


def described(o: object) -> str:
    """An object in a line: its type and the start of its repr (containers by length)."""
    text = repr(o) if not isinstance(o, (dict, list, tuple)) else f"{type(o).__name__} of {len(o)}"
    return f"{type(o).__qualname__} {text[:110]}"


def with_holders(o: object, label: str, indent: str, *mine: object) -> list[str]:
    """``o`` in a line, then up to three of what refers to it, leaving out ``mine``
    (the diagnostic's own lists that hold it)."""
    import gc

    holders = [h for h in gc.get_referrers(o) if not any(h is m for m in mine)]
    return [f"{indent}{label} {described(o)}", *(f"{indent}  held by {described(h)}" for h in holders[:3])]


def allocated_at(tracebacks: list[Any], limit: int = 3) -> list[list[str]]:
    """For each traceback, the objects tracemalloc saw allocated there, found among
    the collector's objects and what they refer to directly: a count by type, then a
    few of them with what holds them. For allocations made in C, whose traceback
    stops at the Python frame that called in. Two blind spots: on Python 3.11
    tracemalloc finds no instance of a Python class that has a ``__dict__``, and an
    object CPython reuses from a free list (tuples, among others) keeps the traceback
    of the block's first allocation, wherever it is used now."""
    import gc
    import tracemalloc

    wanted = {traceback: index for index, traceback in enumerate(tracebacks)}
    found: list[list[object]] = [[] for _ in tracebacks]
    seen: set[int] = set()
    for holder in gc.get_objects():
        for o in (holder, *gc.get_referents(holder)):
            if id(o) not in seen:
                seen.add(id(o))
                index = wanted.get(tracemalloc.get_object_traceback(o))
                if index is not None:
                    found[index].append(o)
    del seen
    described_all = []
    for objects in found:
        lines = [f"        {n} {name}" for name, n in Counter([type(o).__qualname__ for o in objects]).most_common(5)]
        for o in itertools.islice(objects, limit):  # not a slice: a list that would hold them too
            lines.extend(with_holders(o, "e.g.", "        ", objects, found))
        described_all.append(lines)
    return described_all


def start_trace(path: str) -> Callable[[], None]:
    """tracemalloc in this process (a diagnostic for a growing RSS; it slows the
    process). Each call, at most once a minute, appends to ``path`` the bytes Python
    has allocated and not freed, a count the allocator's page placement does not blur;
    every fifth minute also what grew most since the first snapshot two minutes in,
    by traceback (a snapshot stalls the process for seconds)."""
    import linecache
    import tracemalloc

    tracemalloc.start(TRACE_FRAMES)
    first: list[tracemalloc.Snapshot] = []
    started = time.monotonic()
    due = started + 120  # the first two minutes fill caches and windows
    minutes = 0

    def write() -> None:
        nonlocal due, minutes
        now = time.monotonic()
        if now < due:
            return
        due, minutes = now + 60, minutes + 1
        with open(path, "a") as out:
            out.write(f"minute {(now - started) / 60:.1f}: traced {tracemalloc.get_traced_memory()[0]:,} bytes\n")
            if first and minutes % 5:
                return
            snapshot = tracemalloc.take_snapshot().filter_traces([  # not this diagnostic's own memory
                tracemalloc.Filter(False, tracemalloc.__file__, all_frames=True),
                tracemalloc.Filter(False, linecache.__file__, all_frames=True)])
            if not first:
                first.append(snapshot)
                return
            grown = snapshot.compare_to(first[0], "traceback")[:12]
            found = allocated_at([stat.traceback for stat in grown])
            for stat, objects in zip(grown, found):
                out.write(f"  {stat.size_diff / 1024:+.1f} KiB in {stat.count_diff:+} blocks\n")
                out.writelines(f"      {line}\n" for line in stat.traceback.format()[-TRACE_FRAMES:])
                out.writelines(f"{line}\n" for line in objects)
    return write


def start_census(path: str) -> Callable[[], None]:
    """Each call (at most once a minute) appends to ``path`` the object types whose
    count grew most since the first census two minutes in (``gc.get_objects``: far
    cheaper than tracemalloc, though it sees only objects the collector tracks), how
    many of them a collection then frees, and for the three that grew most a few of
    the objects that were not there at the first census, with what refers to them.
    Those collections change what the run measures: cyclic garbage no longer waits for
    Python's own full collections."""
    import gc

    first: list[Counter[str]] = []
    seen: set[int] = set()  # ids at the first census: an id not in it is (most likely) a newer object
    started = time.monotonic()
    due = started + 120

    def kinds(objects: list[Any]) -> Counter[str]:
        counts: Counter[str] = Counter()  # counted in a loop: Counter(generator) would put the
        for o in objects:                  # generator type in the caches of every Mapping ABC
            counts[type(o).__qualname__] += 1
        return counts

    def census() -> None:
        nonlocal due
        now = time.monotonic()
        if now < due:
            return
        due = now + 60
        objects = gc.get_objects()
        counts = kinds(objects)
        if not first:
            first.append(counts)
            seen.update(map(id, objects))
            return
        grown = (counts - first[0]).most_common(15)
        del objects
        unreachable = gc.collect()
        objects = gc.get_objects()
        kept = kinds(objects)
        with open(path, "a") as out:
            out.write(f"minute {(now - started) / 60:.1f}\n")
            out.writelines(f"  {n:+8}  {name}  (after a collection: {kept[name] - first[0][name]:+})\n"
                           for name, n in grown)
            out.write(f"  a collection found {unreachable:,} unreachable objects\n")
            for name, _ in grown[:3]:
                newer = [o for o in objects if type(o).__qualname__ == name and id(o) not in seen][:4]
                for o in newer:
                    out.writelines(f"{line}\n" for line in with_holders(o, "new", "    ", newer, objects))
        del objects
    return census


def start_diagnostics(trace: str | None, census: str | None) -> Callable[[], None] | None:
    """``--trace`` and ``--census`` in this process: a function to call with each status."""
    running = [start(path) for start, path in ((start_trace, trace), (start_census, census)) if path]
    if not running:
        return None

    def each() -> None:
        for diagnostic in running:
            diagnostic()
    return each


async def start_every_worker(address: str) -> None:
    """Make the server at ``address`` start all its worker threads now.

    A server starts a thread for ``def`` handlers when a call finds none idle, up to
    ``max_workers``, and keeps it: how many it has is the most calls that ever ran
    at once, which in this mix (``def`` calls that time out leave their thread
    sleeping) still climbs now and then after an hour. Each new thread is a step in
    RSS that is not a leak, so the soak starts them all before it measures."""
    async def eight() -> None:  # a few calls a connection: its byte budget starts at most 16 at once
        async with await geerpc.dial(address, connect_timeout=5) as client:
            await asyncio.gather(*(client.call("Work.block", 0.3, timeout=10) for _ in range(8)))

    await asyncio.gather(*(eight() for _ in range(WORKERS // 8)))


async def run_servers(registry: str, count: int, life: Life) -> None:
    troubles = install_troubles()
    servers = []
    for _ in range(count):
        server = geerpc.Server(handle_timeout=5, max_workers=WORKERS)
        server.register(Arith())
        server.register(Work())
        await server.start("127.0.0.1", 0, registry=registry)
        servers.append(server)
    addresses = [server.address for server in servers if server.address is not None]
    for address in addresses:
        await start_every_worker(address)
    try:
        def status() -> dict[str, Any]:
            return {"troubles": dict(troubles.seen), "heap": heap()}

        await child_life({"addresses": addresses}, status, life)
    finally:
        for server in servers:
            await server.stop(grace=2)


# ----------------------------------------------------------------- clients


Op = Callable[[geerpc.Client, int], Awaitable[None]]


def expect_error(kind: type[BaseException],
                 type_name: str | None = None) -> Callable[[Awaitable[Any]], Awaitable[None]]:
    async def check(call: Awaitable[Any]) -> None:
        try:
            result = await call
        except kind as exc:
            if type_name is not None and getattr(exc, "type", None) != type_name:
                got = getattr(exc, "type", None)
                raise AssertionError(f"wanted {kind.__name__} {type_name}, got {got!r}: {exc}") from None
            return
        raise AssertionError(f"wanted {kind.__name__}, got the result {result!r}")
    return check


def equal(call_result: Any, want: Any) -> None:
    if call_result != want:
        raise AssertionError(f"wanted {want!r}, got {call_result!r}")


async def op_call(c: geerpc.Client, i: int) -> None:
    equal(await c.call("Arith.add", i, 1, timeout=5), i + 1)


async def op_def(c: geerpc.Client, i: int) -> None:
    equal(await c.call("Arith.mul", i, 3, timeout=5), 3 * i)


async def op_async(c: geerpc.Client, i: int) -> None:
    equal(await c.call("Work.nap", 0.002, timeout=5), "rested")


async def op_echo(c: geerpc.Client, i: int) -> None:
    equal(await c.call("Arith.echo", ECHO, timeout=5), ECHO)


async def op_error(c: geerpc.Client, i: int) -> None:
    await expect_error(geerpc.RemoteError, "ValueError")(c.call("Work.fail", f"failure {i}", timeout=5))


async def op_not_found(c: geerpc.Client, i: int) -> None:
    await expect_error(geerpc.MethodNotFound)(c.call("Arith.nope", i, timeout=5))


async def op_timeout(c: geerpc.Client, i: int) -> None:
    await expect_error(geerpc.CallTimeout)(c.call("Work.nap", 1.0, timeout=0.02))


async def op_def_timeout(c: geerpc.Client, i: int) -> None:
    await expect_error(geerpc.CallTimeout)(c.call("Work.block", 0.1, timeout=0.02))


async def op_cancel(c: geerpc.Client, i: int) -> None:
    task = asyncio.ensure_future(c.call("Work.nap", 1.0, timeout=5))
    await asyncio.sleep(0.005)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return
    raise AssertionError("a cancelled call returned")


OPS: list[tuple[str, Op, int]] = [  # name, operation, weight
    ("call", op_call, 30), ("def", op_def, 15), ("async", op_async, 10), ("echo", op_echo, 3),
    ("error", op_error, 5), ("not-found", op_not_found, 2), ("timeout", op_timeout, 2),
    ("def-timeout", op_def_timeout, 1), ("cancel", op_cancel, 3),
]
XOPS = [("xcall", 5), ("broadcast", 3)]
RECONNECT_WEIGHT = 1


class ClientProcess:
    def __init__(self, registry: str, addresses: list[str], workers: int, pause: float, seed: int,
                 only: set[str] | None = None) -> None:
        self.registry, self.addresses, self.workers, self.pause = registry, addresses, workers, pause
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.unexpected: Counter[str] = Counter()
        self.xclient: Any = None  # made in run(), inside the event loop
        self.retired: dict[Any, asyncio.TimerHandle] = {}  # replaced XClients, to be closed 6 s later
        self.closing: set[asyncio.Future[None]] = set()
        self.xclient_uses = 0
        self.choices = [name for name, _, weight in OPS for _ in range(weight)]
        self.choices += [name for name, weight in XOPS for _ in range(weight)]
        self.choices += ["reconnect"] * RECONNECT_WEIGHT
        if only:
            self.choices = [name for name in self.choices if name in only]
        self.ops = {name: op for name, op, _ in OPS}

    def new_xclient(self) -> Any:
        from geerpc.xclient import RegistryDiscovery, SelectMode, XClient

        return XClient(RegistryDiscovery(self.registry), SelectMode.ROUND_ROBIN)

    def outcome(self, name: str, error: BaseException | None) -> None:
        if error is None:
            self.counts[f"{name}"] += 1
        else:
            self.counts["UNEXPECTED"] += 1
            self.unexpected[f"{name}: {type(error).__name__}: {error}"[:300]] += 1

    def retire(self, xclient: Any) -> None:
        """Close a replaced XClient, and keep nothing of it once closed: the soak
        measures the library's memory, so the harness must not hold what it is done with."""
        self.retired.pop(xclient, None)
        closing = asyncio.ensure_future(xclient.close())
        self.closing.add(closing)
        closing.add_done_callback(self.closing.discard)

    async def worker(self, index: int) -> None:
        address = self.addresses[index % len(self.addresses)]
        client = await geerpc.dial(address, connect_timeout=5)
        i = 0
        try:
            while True:
                i += 1
                name = self.rng.choice(self.choices)
                error: BaseException | None = None
                try:
                    if name == "reconnect":
                        await client.close()
                        address = self.rng.choice(self.addresses)
                        client = await geerpc.dial(address, connect_timeout=5)
                    elif name == "xcall":
                        equal(await self.xclient.call("Arith.add", i, 2, timeout=5), i + 2)
                    elif name == "broadcast":
                        equal(await self.xclient.broadcast("Arith.add", i, 3, timeout=5), i + 3)
                    else:
                        await self.ops[name](client, i)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - every surprise is counted and reported
                    error = exc
                    if client.closed:
                        with contextlib.suppress(Exception):
                            client = await geerpc.dial(address, connect_timeout=5)
                self.outcome(name, error)
                if name in ("xcall", "broadcast"):
                    self.xclient_uses += 1
                    if self.xclient_uses % 500 == 0:  # a fresh XClient: new discovery, new connections
                        old, self.xclient = self.xclient, self.new_xclient()
                        # other loops may still have calls on the old one: close it after their timeout
                        self.retired[old] = asyncio.get_running_loop().call_later(6.0, self.retire, old)
                        self.counts["xclient replaced"] += 1
                await asyncio.sleep(self.pause)
        finally:
            await client.close()

    async def run(self, life: Life) -> None:
        troubles = install_troubles()
        self.xclient = self.new_xclient()

        def status() -> dict[str, Any]:
            return {"counts": dict(self.counts), "unexpected": dict(self.unexpected),
                    "troubles": dict(troubles.seen), "heap": heap()}

        tasks = [asyncio.ensure_future(self.worker(i)) for i in range(self.workers)]
        try:
            await child_life({"workers": self.workers}, status, life)
        finally:
            for task in tasks:
                task.cancel()
            for result in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(result, Exception):
                    self.unexpected[f"worker ended: {type(result).__name__}: {result}"[:300]] += 1
            for old, timer in list(self.retired.items()):
                timer.cancel()
                self.retire(old)
            await asyncio.gather(*self.closing, return_exceptions=True)
            await self.xclient.close()
            emit(status())


# ----------------------------------------------------------------- the parent


class Watched:
    """A child, its RSS samples and its last status."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.samples: list[tuple[float, int]] = []  # (minutes since start, RSS kB)
        self.status: dict[str, Any] = {}
        self.reader: asyncio.Task[None] | None = None

    async def follow(self) -> None:
        while (line := await self.child.read()) is not None:
            self.status = line


def merged(watched: list[Watched], key: str) -> Counter[str]:
    total: Counter[str] = Counter()
    for w in watched:
        total.update(w.status.get(key, {}))
    return total


def minute_row(minute: float, watched: list[Watched], counts: Counter[str], previous: Counter[str]) -> str:
    parts = []
    for w in watched:
        rss, _ = memory_kb(w.child.pid)
        found = w.status.get("heap", {})
        inside = f" (blocks {found['blocks']:,}" if "blocks" in found else ""
        if "arenas" in found:
            inside += (f", pymalloc {found['pymalloc_used'] / 2**20:.1f} MiB in {found['arenas']} arenas"
                       f" of {found['arenas_ever']} made")
        if "in_use_kb" in found:
            inside += f", malloc {found['in_use_kb'] / 1024:.1f} MiB used {found['free_kb'] / 1024:.1f} free"
        parts.append(f"{w.child.name} {rss / 1024:.1f} MiB{inside}{')' if inside else ''} {open_fds(w.child.pid)} fds "
                     f"{thread_count(w.child.pid)} threads")
    this_minute = counts - previous
    calls = "  ".join(f"{name} {count:,}" for name, count in sorted(this_minute.items()))
    return f"{minute:5.1f} min  " + ", ".join(parts) + f"\n           calls: {calls or 'none'}"


async def main(args: argparse.Namespace) -> int:
    every = min(5.0, args.minutes * 60 / 4)
    start = time.monotonic()
    def diagnostics(name: str) -> list[str]:
        """--trace and --census for the child ``name``: each writes a file of its own."""
        return ([*(["--trace", f"{args.trace}.{name}"] if args.trace else []),
                 *(["--census", f"{args.census}.{name}"] if args.census else [])])

    life = ["--every", str(every), "--malloc", args.malloc]
    if args.malloc == "steady":
        tunables = os.environ.get("GLIBC_TUNABLES")
        os.environ["GLIBC_TUNABLES"] = f"{tunables}:{STEADY_TUNABLES}" if tunables else STEADY_TUNABLES
    registry, ready = await Child.start("registry", SCRIPT, "--role", "registry", *life,
                                        *diagnostics("registry"))
    url = ready["url"]
    watched = [Watched(registry)]
    try:
        server, ready = await Child.start("server", SCRIPT, "--role", "server", "--registry", url,
                                          "--servers", "2", *life, "--leak", str(args.leak),
                                          *diagnostics("server"))
        watched.append(Watched(server))
        addresses = ready["addresses"]
        for n in range(args.clients):
            client, _ = await Child.start(f"client-{n + 1}", SCRIPT, "--role", "client", "--registry", url,
                                          "--addresses", ",".join(addresses), "--workers", str(args.workers),
                                          "--pause", str(args.pause), "--seed", str(n), *life,
                                          *(["--only", args.only] if args.only else []),
                                          *diagnostics(f"client-{n + 1}"))
            watched.append(Watched(client))
        for w in watched:
            w.reader = asyncio.ensure_future(w.follow())
        print(f"geerpc {geerpc.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores; "
              f"{args.minutes:g} min, {args.clients} client processes x {args.workers} workers, "
              f"registry {url}, servers {' '.join(addresses)}", flush=True)
        print(allocator(args) + (f"; the server process leaks {args.leak:g} kB/min on purpose" if args.leak else ""),
              flush=True)
        end = start + args.minutes * 60
        next_print = start
        previous: Counter[str] = Counter()
        while True:
            now = time.monotonic()
            minute = (now - start) / 60
            for w in watched:
                if w.child.alive():
                    w.samples.append((minute, memory_kb(w.child.pid)[0]))
            if now >= next_print or now >= end:
                counts = merged(watched, "counts")
                print(minute_row(minute, watched, counts, previous), flush=True)
                previous = counts
                next_print += 60
            dead = [w.child.name for w in watched if not w.child.alive()]
            if now >= end or dead:
                if dead:
                    print(f"stopping early: {', '.join(dead)} exited", flush=True)
                break
            await asyncio.sleep(min(args.sample, max(0.0, end - now), max(0.0, next_print - now)) or 0.01)
    finally:
        for w in reversed(watched):  # clients first, the registry last
            await w.child.stop(timeout=15)
            if w.reader is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(w.reader, 5)
    return summary(watched, args)


def allocator(args: argparse.Namespace) -> str:
    if args.malloc == "glibc":
        return "malloc as glibc sets it (--malloc glibc)"
    if not CAN_STEADY:
        return "malloc as the system sets it (no glibc here)"
    return (f"malloc steady: blocks of {STEADY_MMAP_THRESHOLD // 1024} KiB or more mapped on their own, "
            f"free pages given back every second (malloc_trim), no per-thread caches ({STEADY_TUNABLES})")


def summary(watched: list[Watched], args: argparse.Namespace) -> int:
    counts = merged(watched, "counts")
    print()
    print("calls by outcome, whole run: " + "  ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
    print(f"RSS slope over the last two thirds (goal: under {SLOPE_GOAL:g} kB/min), ± its standard error:")
    failed = False
    cut = args.minutes / 3
    for w in watched:
        tail = [(t, float(rss)) for t, rss in w.samples if t >= cut]
        fitted, error = slope(tail), slope_error(tail)
        if fitted is None:
            verdict, text = "NO", "too few samples"
        else:
            verdict = "yes" if fitted < SLOPE_GOAL else "NO"
            text = f"{fitted:+.1f}" + (f" ± {error:.1f}" if error is not None else "") + " kB/min"
        first = tail[0][1] if tail else 0
        last = tail[-1][1] if tail else 0
        print(f"  {w.child.name:10} {text:>22}  {verdict:3}  ({len(tail)} samples, {first / 1024:.1f} -> "
              f"{last / 1024:.1f} MiB)")
        failed |= verdict == "NO"
    surprises: Counter[str] = Counter()
    for w in watched:
        for message, count in w.status.get("unexpected", {}).items():
            surprises[f"{w.child.name}: {message}"] += count
        for message, count in w.status.get("troubles", {}).items():
            surprises[f"{w.child.name}: {message}"] += count
        if w.child.process.returncode not in (0, None):
            surprises[f"{w.child.name}: exit status {w.child.process.returncode}: "
                      f"{''.join(w.child.stderr_tail)[-500:]}"] += 1
    if surprises:
        print(f"unexpected errors ({sum(surprises.values()):,}):")
        for message, count in surprises.most_common(20):
            print(f"  {count:8,}  {message}")
    else:
        print("unexpected errors: none")
    return 1 if failed or surprises else 0


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--workers", type=int, default=3, help="loops (each with a connection) per client")
    parser.add_argument("--pause", type=float, default=0.002,
                        help="seconds each loop waits between calls (0.02 reads as a fifth of the rate)")
    parser.add_argument("--sample", type=float, default=0.1, help="seconds between RSS samples")
    parser.add_argument("--malloc", choices=["steady", "glibc"], default="steady",
                        help="steady: each process keeps no free memory resident, so RSS counts what it "
                             "holds (see above); glibc: malloc as glibc sets it")
    parser.add_argument("--leak", type=float, default=0.0, metavar="KB",
                        help="the server process keeps KB kB more each minute, on purpose: a check that "
                             "the soak sees a leak of that size")
    parser.add_argument("--only", metavar="NAMES",
                        help="only these operations, comma-separated (call, def, async, echo, error, not-found, "
                             "timeout, def-timeout, cancel, xcall, broadcast, reconnect): to find which one grows")
    parser.add_argument("--census", metavar="FILE",
                        help="count each process's objects by type each minute; FILE.registry, "
                             "FILE.server and FILE.client-N get the types that grew most")
    parser.add_argument("--trace", metavar="FILE",
                        help="trace each process's allocations; FILE.registry, FILE.server and "
                             "FILE.client-N get what grew most, by traceback (a diagnostic: each snapshot "
                             "stalls its process, so some calls may time out)")
    parser.add_argument("--role", choices=["registry", "server", "client"], help=argparse.SUPPRESS)
    parser.add_argument("--registry", help=argparse.SUPPRESS)
    parser.add_argument("--servers", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--addresses", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--every", type=float, default=5.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.leak >= 0:
        parser.error("--leak takes a number of 0 or more")
    life = Life(args.every, args.malloc == "steady", args.leak, args.trace, args.census)
    if args.role == "registry":
        asyncio.run(run_registry(life))
    elif args.role == "server":
        asyncio.run(run_servers(args.registry, args.servers, life))
    elif args.role == "client":
        only = set(args.only.split(",")) if args.only else None
        process = ClientProcess(args.registry, args.addresses.split(","), args.workers, args.pause, args.seed, only)
        asyncio.run(process.run(life))
    else:
        if not args.minutes > 0:
            parser.error("--minutes must be positive")
        known = {name for name, _, _ in OPS} | {name for name, _ in XOPS} | {"reconnect"}
        if args.only and not set(args.only.split(",")) <= known:
            parser.error(f"--only takes names from {', '.join(sorted(known))}")
        sys.exit(asyncio.run(main(args)))


if __name__ == "__main__":
    cli()
