"""The blocking clients in a real Jupyter kernel, as a notebook user runs them.

ipykernel runs each cell on its own running event loop, in the kernel's main thread.
The test starts a registry and a server on a loop thread in this process, starts a
real ipykernel (jupyter_client's KernelManager, over unix sockets in tmp_path, with a
kernel spec written there that runs this very Python), runs cells in it and reads
what they print.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Arith, eventually_sync, subprocess_env

import geerpc
from geerpc.registry import Registry

jupyter_client = pytest.importorskip("jupyter_client", reason="the test extra installs jupyter_client")
pytest.importorskip("ipykernel", reason="the test extra installs ipykernel")

from jupyter_client.blocking import BlockingKernelClient  # noqa: E402
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

KERNEL_START_TIMEOUT = 30.0
CELL_TIMEOUT = 15.0


class Backend:
    """A registry and one server serving Arith, on an event loop in a thread of its own."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-backend", daemon=True)
        self.thread.start()
        self.arith = Arith()
        self.registry = Registry(timeout=30.0)
        self.server = geerpc.Server()
        self.url = ""
        self.address = ""

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def start(self) -> None:
        self.url = await self.registry.start("127.0.0.1", 0)
        self.server.register(self.arith)
        self.address = await self.server.start("127.0.0.1", 0, registry=self.url)

    async def stop(self) -> None:
        await self.server.stop(grace=1.0)
        await self.registry.stop()

    def close(self) -> None:
        try:
            self.run(self.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Kernel:
    """A real ipykernel and a blocking client to it."""

    def __init__(self, tmp: Path) -> None:
        # A kernel spec of our own, so the kernel is this Python whatever else is installed.
        spec = tmp / "kernels" / "geerpc-test"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                     "--HistoryManager.enabled=False"],
            "display_name": "geerpc test", "language": "python"}))
        self.log = tmp / "kernel.log"
        self.env = subprocess_env()
        # Nothing of the kernel's own (profile, runtime files) lands outside tmp_path.
        self.env |= {"IPYTHONDIR": str(tmp / "ipython"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
                     "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_DATA_DIR": str(tmp / "data")}
        self.manager = KernelManager(
            kernel_name="geerpc-test", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp / "kernels")]),
            transport="ipc", ip=str(tmp / "k"), connection_file=str(tmp / "connection.json"))
        self.manager.shutdown_wait_time = 5.0
        self.client: BlockingKernelClient | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:  # the child keeps its own copy of the descriptor
            self.manager.start_kernel(env=self.env, cwd=str(self.log.parent), stdout=log, stderr=log)
        client = self.manager.blocking_client()
        client.start_channels()
        self.client = client
        client.wait_for_ready(timeout=KERNEL_START_TIMEOUT)

    def run(self, code: str) -> tuple[dict[str, Any], str]:
        """Run ``code`` as a cell: its execute_reply content and what it printed on stdout."""
        assert self.client is not None
        stdout: list[str] = []

        def output(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])

        reply = self.client.execute_interactive(code, timeout=CELL_TIMEOUT, output_hook=output,
                                                allow_stdin=False)
        return reply["content"], "".join(stdout)

    def ok(self, code: str) -> str:
        """Run ``code``, which must succeed; what it printed."""
        content, stdout = self.run(code)
        assert content["status"] == "ok", (content, stdout, self.log.read_text(errors="replace"))
        return stdout

    def close(self) -> None:
        try:
            if self.client is not None:
                self.client.stop_channels()
        finally:
            if self.manager.has_kernel:
                self.manager.shutdown_kernel(now=False)  # asks, then kills after shutdown_wait_time
            self.manager.context.term()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend()
    try:
        b.run(b.start())
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    k = Kernel(tmp_path_factory.mktemp("kernel"))
    try:
        k.start()
        yield k
    finally:
        k.close()


def test_sync_clients_in_a_notebook_cell(kernel: Kernel, backend: Backend) -> None:
    kernel.ok("import asyncio, geerpc\nfrom geerpc.xclient import SelectMode")
    # The cell runs on the kernel's running loop, as every cell does; a top-level
    # await in the same cell shows it.
    out = kernel.ok(f"""
await asyncio.sleep(0)
print(asyncio.get_running_loop().is_running())
with geerpc.SyncClient({backend.address!r}, connect_timeout=5) as c:
    print(c.call("Arith.add", 1, 2, timeout=5))
    print(c.call("Arith.mul", a=6, b=7, timeout=5))
with geerpc.SyncXClient({backend.url!r}, SelectMode.ROUND_ROBIN) as xc:
    print(xc.call("Arith.add", 20, 22, timeout=5))
    print(xc.broadcast("Arith.echo", "all", timeout=5))
""")
    assert out == "True\n3\n42\n42\nall\n"


def test_errors_in_a_notebook_cell_are_the_async_clients(kernel: Kernel, backend: Backend) -> None:
    out = kernel.ok(f"""
with geerpc.SyncClient({backend.address!r}, connect_timeout=5) as c:
    for call in (lambda: c.call("Arith.fail", "boom"), lambda: c.call("Arith.sleep", 5, timeout=0.05)):
        try:
            call()
        except geerpc.RemoteError as exc:
            print("RemoteError", exc.type, exc)
        except geerpc.CallTimeout as exc:
            print("CallTimeout", exc)
""")
    assert out.splitlines()[0] == "RemoteError ValueError boom"
    assert out.splitlines()[1].startswith("CallTimeout Arith.sleep timed out")


def test_interrupting_the_kernel_cancels_the_call(kernel: Kernel, backend: Backend) -> None:
    assert kernel.client is not None
    backend.loop.call_soon_threadsafe(backend.arith.started.clear)
    backend.loop.call_soon_threadsafe(backend.arith.cancelled.clear)
    kernel.ok(f"c = geerpc.SyncClient({backend.address!r}, connect_timeout=5)")
    try:
        # What "Interrupt the kernel" does in a notebook: SIGINT while the cell waits.
        msg_id = kernel.client.execute('c.call("Arith.sleep", 30)', allow_stdin=False)
        eventually_sync(backend.arith.started.is_set, timeout=CELL_TIMEOUT, what="the call reached the server")
        kernel.manager.interrupt_kernel()
        reply = kernel.client.get_shell_msg(timeout=CELL_TIMEOUT)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert (reply["content"]["status"], reply["content"]["ename"]) == ("error", "KeyboardInterrupt")
        eventually_sync(backend.arith.cancelled.is_set, what="the server's handler cancelled")
        assert kernel.ok('print(c.call("Arith.add", 1, 1, timeout=5))') == "2\n"
    finally:
        kernel.ok("c.close()")
