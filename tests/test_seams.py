"""The seams between layers: the server's snapshot, where a deadline starts, what a
plain ``import geerpc`` costs, and the import graph having no circle."""

from __future__ import annotations

import ast
import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import geerpc
from _raw import raw_connection, request, serving
from conftest import eventually
from geerpc import protocol as p

PACKAGE = Path(geerpc.__file__).resolve().parent


class Gate:
    """Handlers that wait until the test opens a gate."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = 0
        self.ran: list[str] = []

    async def wait(self, name: str) -> str:
        self.started += 1
        await self.gate.wait()
        self.ran.append(name)
        return name

    async def unsendable(self) -> object:
        await asyncio.sleep(0)
        return object()

    async def add(self, a, b):  # noqa: ANN001 - the signature shown is "(a, b)"
        return a + b


async def test_snapshot_shows_services_methods_counters_and_calls_in_flight():
    svc = Gate()
    async with serving(svc, max_in_flight=1) as server:
        before = server.snapshot()
        assert before.address == server.address and not before.stopping and before.calls_in_flight == 0
        assert [s.name for s in before.services] == ["Gate"]
        assert [m.name for m in before.services[0].methods] == ["Gate.add", "Gate.unsendable", "Gate.wait"]
        add = before.method("Gate.add")
        assert (add.kind, add.signature, add.calls, add.errors, add.p50) == ("async inline", "(a, b)", 0, 0, None)
        async with await geerpc.dial(server.address) as client:
            assert await client.call("Gate.add", 1, 2) == 3
            running = asyncio.ensure_future(client.call("Gate.wait", "one"))
            held = asyncio.ensure_future(client.call("Gate.wait", "two"))
            await eventually(lambda: server.snapshot().calls_in_flight == 2, what="two calls in flight")
            (connection,) = server.snapshot().connections
            assert (connection.running, connection.held) == (1, 1)
            svc.gate.set()
            assert await asyncio.gather(running, held) == ["one", "two"]
        after = server.snapshot()
        assert after.method("Gate.add").calls == 1 and after.method("Gate.add").p50 is not None
        assert after.method("Gate.wait").calls == 2 and after.method("Gate.wait").kind == "async"
        with pytest.raises(KeyError):
            after.method("Gate.nope")


async def test_a_request_held_at_the_cap_counts_its_wait_against_its_deadline():
    # A raw peer that never cancels: only the server's own deadline can answer it.
    svc = Gate()
    async with serving(svc, max_in_flight=1) as server, raw_connection(server.address) as raw:
        await raw.send(request(1, "Gate.wait", "first") + request(2, "Gate.wait", "held", timeout=0.2))
        await eventually(lambda: server.snapshot().connections[0].held == 1, what="the second request held")
        # The deadline passes while the request is still held; when a slot frees up,
        # it is answered Timeout at once and never runs.
        await asyncio.sleep(0.3)  # the behaviour under test: time passing while held
        svc.gate.set()
        replies = {}
        for _ in range(2):
            seq, error, result, _ = await raw.read_response()
            replies[seq] = (error, result)
        assert replies[1] == (None, "first")
        assert replies[2][0] is not None and replies[2][0][0] == p.ErrorCode.TIMEOUT
        assert svc.ran == ["first"] and svc.started == 1
        assert server.snapshot().method("Gate.wait").errors == 1


async def test_a_result_that_cannot_be_sent_counts_as_an_error_and_is_logged(caplog):
    async with serving(Gate()) as server, await geerpc.dial(server.address) as client:
        with caplog.at_level(logging.WARNING, logger="geerpc.server"):
            with pytest.raises(geerpc.RemoteError, match="cannot be encoded") as info:
                await client.call("Gate.unsendable")
        assert info.value.type == "SerializationError"
        stats = server.snapshot().method("Gate.unsendable")
        assert (stats.calls, stats.errors) == (1, 1)
        assert any(r.levelno == logging.WARNING and "Gate.unsendable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("statement", ["import geerpc", "import geerpc.protocol", "import geerpc.errors"])
def test_a_plain_import_loads_neither_asyncio_nor_aiohttp(statement):
    code = (f"{statement}; import sys; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('asyncio', 'aiohttp')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"


def test_the_server_and_clients_load_no_aiohttp_web():
    code = ("import geerpc, sys; geerpc.Server; geerpc.dial; from geerpc.registry import heartbeat; "
            "from geerpc.xclient import XClient; "
            "print('aiohttp.web' in sys.modules, 'geerpc.registry.server' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.split() == ["False", "False"]


def _imports(path: Path) -> set[str]:
    """geerpc modules that ``path`` imports, type-only and function-level imports included."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("geerpc")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("geerpc"):
                found.add(target)
                found |= {f"{target}.{a.name}" for a in node.names}
    return found


def test_no_import_circle_among_geerpc_modules():
    modules = {".".join(f.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): f
               for f in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # a package's __init__ importing its own submodules is its face, not a circle
    graph = {name: {m for m in deps if not (path.name == "__init__.py" and m.startswith(name + "."))}
             for (name, deps), path in zip(graph.items(), modules.values())}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> None:
        state[name] = 1
        stack.append(name)
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(dep):] + [dep]))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
