"""Shared test tools for the registry: a registry in a child process, a GeeRPC-like
registry, a fake clock, and polling with a deadline (tests never sleep to wait for
readiness)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from yarl import URL

REPO = Path(__file__).resolve().parents[1]
PATH = "/_geerpc_/registry"


class FakeClock:
    """A monotonic clock that moves only when a test says, and a ``sleep`` that waits on it.

    Pass the clock as ``clock=`` and ``clock.sleep`` as ``sleep=``: the code under test
    then parks in ``sleep`` until ``advance()`` moves the clock past its wake-up time.
    ``sleeping()`` waits for somebody to park and returns the delay asked for;
    ``wake()`` advances to the earliest wake-up. ``sleeps`` records every delay asked.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._sleepers: list[tuple[float, float, asyncio.Future[None]]] = []  # (wake at, delay, future)
        self._parked = asyncio.Event()

    def __call__(self) -> float:
        return self.now

    @property
    def kwargs(self) -> dict[str, Any]:
        """``clock=`` and ``sleep=`` arguments that put a heartbeat or discovery on this clock."""
        return {"clock": self, "sleep": self.sleep}

    async def run_until(self, predicate: Callable[[], Any], max_wakes: int = 100) -> int:
        """Wake sleepers one after another until ``predicate()`` holds; how many wakes it took."""
        for wakes in range(max_wakes + 1):
            if predicate():
                return wakes
            if wakes < max_wakes:
                await self.wake()
                await self.sleeping()  # whatever the sleeper woke up to do is done
        raise AssertionError(f"condition not met within {max_wakes} wakes")

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        future = asyncio.get_running_loop().create_future()
        entry = (self.now + delay, delay, future)
        self._sleepers.append(entry)
        self._parked.set()
        try:
            await future
        finally:
            if entry in self._sleepers:  # cancelled while parked
                self._sleepers.remove(entry)

    async def sleeping(self, timeout: float = 5.0) -> float:
        """Wait until somebody sleeps on this clock; the delay the earliest sleeper asked for."""
        async with asyncio.timeout(timeout):
            while not self._sleepers:
                self._parked.clear()
                await self._parked.wait()
        return min(self._sleepers, key=lambda entry: entry[0])[1]

    def advance(self, seconds: float) -> None:
        """Move the clock on; wake every sleeper whose time has come."""
        self._move_to(self.now + seconds)

    def _move_to(self, now: float) -> None:
        self.now = max(self.now, now)
        for entry in [entry for entry in self._sleepers if entry[0] <= self.now]:
            self._sleepers.remove(entry)
            if not entry[2].done():
                entry[2].set_result(None)

    async def wake(self, timeout: float = 5.0) -> float:
        """Wait for a sleeper, move the clock to its wake-up time; return the delay it asked for."""
        delay = await self.sleeping(timeout)
        self._move_to(min(entry[0] for entry in self._sleepers))
        return delay


def free_port() -> int:
    """A port nobody listens on (for 'connection refused')."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RegistryProcess:
    """``python -m geerpc.registry`` as a child process that can be killed and restarted."""

    def __init__(self, timeout: float, options: list[str] | None = None) -> None:
        self.timeout = timeout
        self.options = list(options or [])
        self.port = 0
        self.url = ""
        self.proc: subprocess.Popen[str] | None = None

    async def start(self) -> str:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "geerpc.registry", "--port", str(self.port), "--timeout", str(self.timeout),
             *self.options],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.proc.stdout.readline), 20)
        assert line.startswith("http://"), f"registry printed {line!r}"
        self.url = line.strip()
        self.port = URL(self.url).port or 0
        return self.url

    async def kill(self) -> None:
        """SIGKILL: the registry loses its state, as in a crash."""
        await self._end(signal.SIGKILL)

    async def stop(self, signum: int = signal.SIGTERM) -> int | None:
        return await self._end(signum)

    async def _end(self, signum: int) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                proc.send_signal(signum)
            try:
                return await asyncio.to_thread(proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                return await asyncio.to_thread(proc.wait, 10)
        finally:
            if proc.stdout is not None:
                proc.stdout.close()


class GeeRPCLikeRegistry:
    """A registry that speaks only GeeRPC's two headers: no JSON, no watch, no DELETE.

    ``servers`` is the list it answers (tests edit it); POSTs add to it.
    ``status`` (when set) is answered to every request instead. ``gets`` counts GETs.
    """

    def __init__(self) -> None:
        self.servers: list[str] = []
        self.status: int | None = None
        self.gets = 0
        self.delay = 0.0
        self.extra_headers: dict[str, str] = {}
        # When set, answers every request instead (to serve garbage, huge or odd replies).
        self.override: Callable[[web.Request], Awaitable[web.StreamResponse]] | None = None
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", PATH, self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}{PATH}"
        return self.url

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            self.gets += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.override is not None:
            return await self.override(request)
        if self.status is not None:
            return web.Response(status=self.status)
        if request.method == "GET":
            headers = {"X-Geerpc-Servers": ",".join(sorted(self.servers)), **self.extra_headers}
            return web.Response(headers=headers)
        if request.method == "POST":
            address = request.headers.get("X-Geerpc-Server", "")
            if not address:
                return web.Response(status=500)
            if address not in self.servers:
                self.servers.append(address)
            return web.Response(headers=self.extra_headers)
        return web.Response(status=405)

