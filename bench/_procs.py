"""Process plumbing shared by the benchmarks that watch other processes.

Children are this same Python running a benchmark script with a role argument. Each
child writes one JSON object per line on its stdout (the first one says it is ready)
and ends when its stdin closes: a parent that dies takes its children with it. Memory
and descriptors are read from ``/proc/<pid>`` (Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["Child", "FdPeak", "emit", "memory_kb", "open_fds", "percentile", "pin", "servers", "slope",
           "start_server", "stop_server", "wait_for_stdin_eof"]


def memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB: resident now, and the peak since it started.

    (0, 0) once the process is gone.
    """
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return rss, hwm


def thread_count(pid: int) -> int:
    """How many threads ``pid`` has (0 once it is gone): each new one adds its stack and,
    in glibc, maybe a malloc arena of its own, a step in RSS."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def open_fds(pid: int) -> int:
    """How many descriptors ``pid`` has open (0 once it is gone)."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return 0


def pin(core: int | None) -> None:
    """Run this process on one core (if the machine has more than one); None: on any
    core (children inherit their parent's affinity, so a child may need this)."""
    if not hasattr(os, "sched_setaffinity"):
        return
    cores = os.cpu_count() or 1
    os.sched_setaffinity(0, set(range(cores)) if core is None or cores == 1 else {core % cores})


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) of an already sorted sequence, nearest rank; None if empty."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of y over x; None for fewer than two distinct x."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx


def slope_error(points: Sequence[tuple[float, float]]) -> float | None:
    """The standard error of ``slope(points)``, from the scatter about the fitted line;
    None for fewer than three points or distinct x. (Samples taken close together are
    not independent, so read it as a lower bound of the uncertainty.)"""
    fitted = slope(points)
    n = len(points)
    if fitted is None or n < 3:
        return None
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    residual = sum((y - mean_y - fitted * (x - mean_x)) ** 2 for x, y in points)
    return float((residual / (n - 2) / sxx) ** 0.5)


class FdPeak:
    """Samples a process's open descriptors on a thread and keeps the largest count.

    The kernel keeps a high-water mark for memory (VmHWM) but none for descriptors,
    so this polls ``/proc/<pid>/fd``; a thread, so a busy event loop in the sampling
    process does not make it miss a peak.
    """

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"fds-{pid}", daemon=True)

    def __enter__(self) -> FdPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, open_fds(self.pid))
            self._stop.wait(self.interval)


class Child:
    """A child process speaking JSON lines on stdout; it ends when its stdin closes."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name, self.process = name, process
        self.pid = process.pid
        self.stderr_tail: list[str] = []
        self._stderr_task: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, name: str, script: str, *args: str,
                    ready_timeout: float = 30.0) -> tuple[Child, dict[str, Any]]:
        """Start ``python script args...`` and return it with its first JSON line."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, script, *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024)
        child = cls(name, process)
        child._stderr_task = asyncio.ensure_future(child._keep_stderr())
        try:
            ready = await child.read(timeout=ready_timeout)
        except BaseException:
            await child.stop(timeout=1.0)
            raise
        if ready is None:
            await child.stop(timeout=1.0)
            raise RuntimeError(f"{name} exited before it was ready: {''.join(child.stderr_tail)[-2000:]}")
        return child, ready

    async def _keep_stderr(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.stderr_tail.append(line.decode(errors="replace"))
            del self.stderr_tail[:-50]

    async def read(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next JSON line, or None at EOF. Raises TimeoutError after ``timeout``."""
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = await self.process.stdout.readline()
        return json.loads(line) if line else None

    def send(self, obj: dict[str, Any]) -> None:
        """One JSON line to the child's stdin."""
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(obj, separators=(",", ":")).encode() + b"\n")

    def alive(self) -> bool:
        return self.process.returncode is None

    async def stop(self, timeout: float = 10.0) -> int | None:
        """Close its stdin and wait up to ``timeout`` for it to exit, then kill it."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            async with asyncio.timeout(timeout):
                await self.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        if self._stderr_task is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await self._stderr_task
        return self.process.returncode


def start_server(args: list[str], what: str) -> tuple[subprocess.Popen[str], str]:
    """Start ``python args...``, a server child that prints its address(es) on one line
    and stops when its stdin closes; return it and that line."""
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    address = proc.stdout.readline().strip()
    if not address:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"{what} server did not start")
    return proc, address


def stop_server(proc: subprocess.Popen[str]) -> None:
    """Close the child's stdin, and kill it if it has not ended 5 s later."""
    assert proc.stdin is not None
    proc.stdin.close()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def servers(script: str, kinds: Sequence[str], *extra: str) -> Iterator[dict[str, str]]:
    """``script --serve KIND *extra`` for each kind, all listening throughout: the line
    each printed, by kind. They are stopped on exit."""
    procs = []
    try:
        addresses = {}
        for kind in kinds:
            proc, addresses[kind] = start_server([script, "--serve", kind, *extra], kind)
            procs.append(proc)
        yield addresses
    finally:
        for proc in procs:
            stop_server(proc)


async def wait_for_stdin_eof() -> None:
    """In a child: return once the parent closes our stdin (or dies)."""
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)


def emit(obj: dict[str, Any]) -> None:
    """In a child: one JSON line to the parent."""
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()
