"""The ``geerpc`` command line: each command in a real process, against a real registry
and real servers on loopback; the pure parts (values, table, parsing) in process.

One registry and two servers (started with ``geerpc registry`` and ``geerpc serve``)
serve the whole module. Readiness is the line a process prints, never a sleep.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import _cli
import aiohttp
import msgpack
import pytest
from _registry_helpers import GeeRPCLikeRegistry, free_port
from aiohttp import web
from conftest import PYTHON, ROOT, subprocess_env
from etcd_server import EtcdProcess, etcd_binary, etcd_required

from geerpc.cli import CommandError, main
from geerpc.cli.listing import Row, format_table, rows_from_header, rows_from_json
from geerpc.cli.serve import load_object
from geerpc.cli.values import dumps, from_json, parse_arg, to_json

TESTS = ROOT / "tests"
RUN_TIMEOUT = _cli.RUN_TIMEOUT


def geerpc(*args: str, cwd: Path = TESTS) -> subprocess.CompletedProcess[str]:
    """Run ``python -m geerpc ARGS`` to completion."""
    return subprocess.run([PYTHON, "-m", "geerpc", *args], check=False, cwd=cwd, env=subprocess_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)


class Running(_cli.Running):
    """``python -m geerpc ARGS`` run from the tests' folder."""

    def __init__(self, *args: str) -> None:
        super().__init__(*args, cwd=TESTS, env=subprocess_env())


@pytest.fixture(scope="module")
def registry() -> Iterator[str]:
    process = Running("registry", "--port", "0", "--timeout", "30")
    try:
        yield process.first_line()
    finally:
        process.stop()


@pytest.fixture(scope="module")
def servers(registry: str) -> Iterator[list[str]]:
    # A class (instantiated by serve) and an instance renamed with --name: both are "Calc".
    processes = [Running("serve", "cli_service:Calc", "--registry", registry),
                 Running("serve", "cli_service:calc", "--name", "Calc", "--registry", registry)]
    try:
        yield [process.first_line() for process in processes]
    finally:
        for process in processes:
            process.stop()


@pytest.fixture
def server(servers: list[str]) -> str:
    return servers[0]


def assert_failed(result: subprocess.CompletedProcess[str], status: int, *fragments: str) -> None:
    assert result.returncode == status, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr


# --------------------------------------------------------------------------- call


def test_call_prints_the_result_as_json(server: str) -> None:
    result = geerpc("call", server, "Calc.add", "1", "2")
    assert (result.returncode, result.stdout, result.stderr) == (0, "3\n", "")


def test_call_args_are_json_when_they_parse_else_strings(server: str) -> None:
    result = geerpc("call", server, "Calc.typeof", "1", "abc", '{"a":1}', '"1"', "null", "1.5", "[1]",
                    '{"$bytes": "AAE="}', "-5", "--", "-x")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["int", "str", "dict", "str", "NoneType", "float", "list",
                                         "bytes", "int", "str"]
    echoed = geerpc("call", server, "Calc.echo", '{"a": [1, "x"]}')
    assert json.loads(echoed.stdout) == {"a": [1, "x"]}


def test_call_keyword_arguments_and_options_after_args(server: str) -> None:
    result = geerpc("call", server, "Calc.greet", "--kw", "greeting=hi", "bob", "--timeout", "5")
    assert (result.returncode, result.stdout) == (0, '"hi, bob"\n')


def test_call_separator_after_an_option(server: str) -> None:
    # argparse hands back a "--" met after an option with the leftovers: still the
    # separator, and what follows it (a second "--" included) is ARGs.
    result = geerpc("call", server, "Calc.typeof", "1", "--timeout", "5", "--", "-x", "--kw", "--")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["int", "str", "str", "str"]
    echoed = geerpc("call", server, "Calc.echo", "--timeout", "5", "--", "-x")
    assert (echoed.returncode, echoed.stdout) == (0, '"-x"\n')


def test_call_stream_prints_one_json_line_per_item(server: str, registry: str) -> None:
    for target in (server, registry):
        result = geerpc("call", target, "Calc.count", "3", "--stream")
        assert result.returncode == 0, result.stderr
        assert [json.loads(line)["i"] for line in result.stdout.splitlines()] == [0, 1, 2]
        assert json.loads(result.stdout.splitlines()[1])["raw"] == {"$bytes": "AQ=="}
    failed = geerpc("call", server, "Calc.count", "2", "--kw", "fail=true", "--stream")
    assert failed.returncode == 1
    assert len(failed.stdout.splitlines()) == 2  # the items before the error, then the error
    assert failed.stderr == "geerpc: Calc.count raised ValueError: stopped after 2\n"
    assert_failed(geerpc("call", server, "Calc.add", "1", "2", "--stream"), 1, "call it with call()")
    assert_failed(geerpc("call", server, "Calc.count", "2"), 1, "call it with stream()")
    assert_failed(geerpc("call", registry, "Calc.count", "2", "--stream", "--broadcast"), 2,
                  "--stream and --broadcast do not go together")


def test_call_prints_bytes_tagged_in_base64(server: str) -> None:
    result = geerpc("call", server, "Calc.blob", "3")
    assert (result.returncode, result.stdout) == (0, '{"$bytes": "AAEC"}\n')


def test_call_tags_what_json_cannot_carry(server: str) -> None:
    result = geerpc("call", server, "Calc.odd")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "raw": {"$bytes": "AP8="},
        "keys": {"$map": [[{"$bytes": "aw=="}, 1]]},
        "nan": {"$float": "NaN"},
        "tag": {"$map": [["$bytes", "x"]]},  # a real dict that would read as a tag
        "when": {"$timestamp": [1700000000, 5]},
    }


def test_call_result_nested_too_deeply_to_print(server: str) -> None:
    assert geerpc("call", server, "Calc.nest", "3").stdout == "[[[[]]]]\n"
    assert_failed(geerpc("call", server, "Calc.nest", "505"), 1,
                  "geerpc: Calc.nest returned a value nested too deeply to print as JSON")


def test_call_unknown_method_names_it(server: str) -> None:
    assert_failed(geerpc("call", server, "Calc.nope"), 1, "geerpc: Calc.nope: ", "'nope'")


@pytest.mark.parametrize(("args", "message"), [
    (["Calc.nope"], "Calc.nope: can't find method 'nope' of service 'Calc'"),
    (["Nope.x"], "Nope.x: can't find service 'Nope'"),
    (["Calc.add", "1"], "Calc.add(a: Any, b: Any) -> Any: missing a required argument: 'b'"),
    (["Calc.add", "1", "--kw", "c=2"], "Calc.add(a: Any, b: Any) -> Any: got an unexpected keyword argument 'c'"),
    (["Calc.unsendable"], "result of Calc.unsendable cannot be encoded: can not serialize 'object' object"),
])
def test_call_errors_geerpc_reports_name_the_method_once(server: str, args: list[str], message: str) -> None:
    # The method did not raise: no "raised", and the name is not put before a
    # message that already has it ("Calc.add: Calc.add(a, b): ...").
    result = geerpc("call", server, *args)
    assert_failed(result, 1)
    assert result.stderr == f"geerpc: {message}\n"
    broadcast = geerpc("call", server, *args, "--broadcast")
    assert broadcast.returncode == 1
    [line] = broadcast_lines(broadcast.stdout)
    assert line["error"] == message


def test_call_reports_the_remote_exception(server: str) -> None:
    result = geerpc("call", server, "Calc.div", "1", "0")
    assert_failed(result, 1)
    assert result.stderr == "geerpc: Calc.div raised ZeroDivisionError: division by zero\n"


def test_call_result_that_cannot_be_sent_is_not_reported_as_raised(server: str) -> None:
    result = geerpc("call", server, "Calc.unsendable")
    assert_failed(result, 1)
    # one line, the method named once, and no "raised": the method returned normally
    assert result.stderr.startswith("geerpc: result of Calc.unsendable cannot be encoded: "), result.stderr
    assert result.stderr.count("Calc.unsendable") == 1 and "raised" not in result.stderr


def test_call_timeout_exits_3(server: str) -> None:
    assert_failed(geerpc("call", server, "Calc.sleep", "5", "--timeout", "0.2"), 3,
                  "geerpc: Calc.sleep timed out after 0.2 s")


def test_call_unreachable_server_exits_1() -> None:
    port = free_port()
    assert_failed(geerpc("call", f"tcp@127.0.0.1:{port}", "Calc.add", "1", "2"), 1,
                  f"geerpc: cannot connect to tcp@127.0.0.1:{port}: Connection refused")


@pytest.mark.parametrize(("args", "message"), [
    (["call", "tcp@127.0.0.1:1"], "required: Service.method"),
    (["call", "nonsense", "Calc.add"], "bad TARGET"),
    (["call", "tcp@127.0.0.1:1", "Calc.add", "--timeout", "0"], "positive number of seconds"),
])
def test_call_usage_errors_exit_2(args: list[str], message: str) -> None:
    assert_failed(geerpc(*args), 2, message)


def test_call_through_the_registry(registry: str, servers: list[str]) -> None:
    result = geerpc("call", registry, "Calc.add", "20", "22")
    assert (result.returncode, result.stdout) == (0, "42\n")


def broadcast_lines(stdout: str) -> list[dict[str, object]]:
    """The JSON lines a broadcast prints, each checked to be one object naming its server."""
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert all(isinstance(line, dict) and isinstance(line.get("server"), str) for line in lines), stdout
    return lines


def test_broadcast_prints_each_servers_reply(registry: str, servers: list[str], tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    result = geerpc("call", registry, "Calc.mark", str(marks), "--broadcast")
    assert result.returncode == 0, result.stderr
    pids = [int(pid) for pid in marks.read_text().split()]
    assert len(pids) == 2 and len(set(pids)) == 2
    lines = broadcast_lines(result.stdout)
    # one line per server, in address order, each with the pid that server wrote
    assert [line["server"] for line in lines] == sorted(servers)
    assert sorted(line["result"] for line in lines) == sorted(pids)  # type: ignore[type-var]
    assert result.stderr == "geerpc: 2 of 2 servers returned a result\n"


def test_broadcast_timeout_gives_every_server_a_line_and_exits_3(registry: str, servers: list[str]) -> None:
    result = geerpc("call", registry, "Calc.sleep", "5", "--broadcast", "--timeout", "1.5")
    assert result.returncode == 3, result.stderr
    assert broadcast_lines(result.stdout) == [
        {"server": address, "error": "Calc.sleep timed out after 1.5 s", "type": "CallTimeout"}
        for address in sorted(servers)]
    assert result.stderr == "geerpc: 0 of 2 servers returned a result\n"


def test_broadcast_to_one_address_is_one_line(server: str) -> None:
    result = geerpc("call", server, "Calc.add", "1", "2", "--broadcast")
    assert (result.returncode, result.stderr) == (0, "geerpc: 1 of 1 server returned a result\n")
    assert broadcast_lines(result.stdout) == [{"server": server, "result": 3}]


async def test_broadcast_with_errors_shows_every_server() -> None:
    # One server answers, one raises, one cannot be reached: three lines, the count, status 1
    # (XClient.broadcast alone would stop at the first error and show nothing else).
    from cli_service import Calc, Failing

    from geerpc import Server
    from geerpc.registry import Registry

    good, failing = Server(), Server()
    good.register(Calc())
    failing.register(Failing(), "Calc")
    dead = f"tcp@127.0.0.1:{free_port()}"
    async with Registry(timeout=300) as registry:
        try:
            good_address = await good.start("127.0.0.1", 0, registry=registry.url)
            failing_address = await failing.start("127.0.0.1", 0, registry=registry.url)
            async with aiohttp.ClientSession() as http:
                headers = {"X-Geerpc-Server": dead, "X-Geerpc-Services": "Calc"}
                async with http.post(registry.url, headers=headers) as response:
                    assert response.status == 200
            status, out, err = await run_geerpc("call", registry.url, "Calc.add", "1", "2", "--broadcast")
        finally:
            await good.stop(grace=1.0)
            await failing.stop(grace=1.0)
    assert status == 1, err
    lines = {line["server"]: line for line in broadcast_lines(out)}
    assert list(lines) == sorted(lines)  # address order
    assert lines[good_address] == {"server": good_address, "result": 3}
    assert lines[failing_address] == {"server": failing_address, "type": "ValueError",
                                      "error": "Calc.add raised ValueError: not on this server"}
    assert lines[dead]["type"] == "ConnectError"
    assert lines[dead]["error"] == f"cannot connect to {dead}: Connection refused"
    assert err == "geerpc: 1 of 3 servers returned a result\n"


def test_broadcast_with_no_server_for_the_service(registry: str, servers: list[str]) -> None:
    assert_failed(geerpc("call", registry, "Nope.x", "--broadcast"), 1,
                  "geerpc: no server offering 'Nope' to broadcast Nope.x to\n")


def test_call_through_an_unreachable_registry_says_so() -> None:
    url = f"http://127.0.0.1:{free_port()}/_geerpc_/registry"
    assert_failed(geerpc("call", url, "Calc.add", "1", "2"), 1, f"geerpc: registry {url}")


# --------------------------------------------------------------------------- list


def test_list_prints_an_aligned_table(registry: str, servers: list[str]) -> None:
    result = geerpc("list", registry)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["ADDRESS", "SERVICES", "AGE"]
    assert sorted(row.split()[0] for row in rows) == sorted(servers)
    for row in rows:
        _, services, age = row.split()
        assert services == "Calc"
        assert age.endswith("s") and float(age[:-1]) >= 0
        assert row.index(services) == header.index("SERVICES")
        assert len(row) == len(header)  # AGE is right-aligned under its header


async def test_list_falls_back_to_the_servers_header() -> None:
    registry = GeeRPCLikeRegistry()
    registry.servers = ["tcp@127.0.0.1:9001", "tcp@127.0.0.1:9000"]
    url = await registry.start()
    try:
        proc = await asyncio.create_subprocess_exec(
            PYTHON, "-m", "geerpc", "list", url, env=subprocess_env(),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        await registry.stop()
    assert proc.returncode == 0, err
    assert [line.split() for line in out.decode().splitlines()] == [
        ["ADDRESS", "SERVICES", "AGE"],
        ["tcp@127.0.0.1:9000", "(unknown)", "-"],
        ["tcp@127.0.0.1:9001", "(unknown)", "-"],
    ]


async def run_geerpc(*args: str) -> tuple[int, str, str]:
    """``python -m geerpc ARGS`` from a test that keeps its own loop serving meanwhile."""
    proc = await asyncio.create_subprocess_exec(PYTHON, "-m", "geerpc", *args, cwd=TESTS, env=subprocess_env(),
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def many_addresses(n: int) -> list[str]:
    return [f"tcp@10.0.{i // 250}.{i % 250}:{9000 + i}" for i in range(n)]


async def test_list_reads_a_registry_with_thousands_of_servers() -> None:
    # 4,000 addresses make an X-Geerpc-Servers header of about 80 KiB, past
    # http.client's 64 KiB line limit; the registry sends it with every GET.
    from geerpc.registry import Registry

    addresses = many_addresses(4000)
    async with Registry(timeout=300, max_servers=5000) as registry:
        async with aiohttp.ClientSession() as session:
            async def announce(address: str) -> None:
                async with session.post(registry.url, headers={"X-Geerpc-Server": address}) as response:
                    assert response.status == 200

            await asyncio.gather(*(announce(address) for address in addresses))
        status, out, err = await run_geerpc("list", registry.url)
    assert (status, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["ADDRESS", "SERVICES", "AGE"]
    assert [row.split()[:2] for row in rows] == [[address, "(any)"] for address in sorted(addresses)]


async def test_list_reads_a_huge_servers_header() -> None:
    registry = GeeRPCLikeRegistry()  # the header and nothing else
    registry.servers = many_addresses(4000)
    url = await registry.start()
    try:
        status, out, err = await run_geerpc("list", url)
    finally:
        await registry.stop()
    assert (status, err) == (0, "")
    assert len(out.splitlines()) == 4001


async def test_list_falls_back_to_the_header_when_the_body_is_over_the_cap(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from geerpc.cli import listing

    async def oversized(request: web.Request) -> web.StreamResponse:
        document = {"servers": [{"address": "tcp@127.0.0.1:1", "services": None, "age": 1.0}]}
        return web.json_response(document, headers={"X-Geerpc-Servers": "tcp@127.0.0.1:2"})

    monkeypatch.setattr(listing, "_MAX_BODY", 10)
    registry = GeeRPCLikeRegistry()
    registry.override = oversized
    url = await registry.start()
    try:
        rows = await listing._get_rows(url)
    finally:
        await registry.stop()
    assert rows == [Row("tcp@127.0.0.1:2", "(unknown)", None)]


async def test_list_timeout_bounds_a_registry_that_drips_its_reply() -> None:
    # One byte every 0.2 s: each read is quick, the whole reply never is.
    handlers: set[asyncio.Task[None]] = set()

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await reader.readuntil(b"\r\n\r\n")
        reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b" " * 100
        try:
            for i in range(len(reply)):
                writer.write(reply[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(drip, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, out, err = await run_geerpc("list", f"http://127.0.0.1:{port}/r", "--timeout", "1")
        elapsed = loop.time() - started
    finally:
        server.close()
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()
    assert (status, out) == (3, "")
    assert err == f"geerpc: registry http://127.0.0.1:{port}/r did not answer within 1 s\n"
    assert elapsed < 8  # 1 s, plus the interpreter starting; the drip alone takes 20 s


def test_list_unreachable_registry_exits_1() -> None:
    url = f"http://127.0.0.1:{free_port()}/_geerpc_/registry"
    assert_failed(geerpc("list", url), 1, f"geerpc: cannot reach registry {url}: Connection refused")


# --------------------------------------------------------------------------- serve and registry


@pytest.mark.parametrize(("spec", "status", "message"), [
    ("cli_service", 2, "module:attr"),
    ("no_such_module:Thing", 1, "no module named 'no_such_module'"),
    ("cli_service:Missing", 1, "has no attribute 'Missing'"),
    ("cli_service:NeedsArgs", 1, "with no arguments"),
    ("cli_service:Exploding", 1, "raised RuntimeError: no database"),
    ("cli_service:Exits", 1, "geerpc: cli_service:Exits() raised SystemExit(0) (cli_service.py, line "),
    ("cli_service:Unprintable", 1, "raised _Unprintable: <exception str() failed> (cli_service.py, line "),
])
def test_serve_reports_a_bad_object(spec: str, status: int, message: str) -> None:
    assert_failed(geerpc("serve", spec), status, message)


@pytest.mark.parametrize(("source", "raised"), [
    ("import sys\nsys.exit()\n", "SystemExit() (exiting_mod.py, line 2)"),
    ("raise SystemExit(3)\n", "SystemExit(3) (exiting_mod.py, line 1)"),  # 3 would read as a timeout
    ("raise KeyboardInterrupt\n", "KeyboardInterrupt() (exiting_mod.py, line 1)"),
    # argparse at import time parses geerpc's own command line and exits 2
    ("import argparse\nargparse.ArgumentParser().parse_args()\n", "SystemExit(2) (exiting_mod.py, line 2)"),
])
def test_serve_reports_a_module_that_exits_while_imported(tmp_path: Path, source: str, raised: str) -> None:
    (tmp_path / "exiting_mod.py").write_text(source)
    result = geerpc("serve", "exiting_mod:Thing", cwd=tmp_path)
    assert_failed(result, 1)
    assert result.stderr.splitlines()[-1] == f"geerpc: importing 'exiting_mod' raised {raised}"


def test_serve_reports_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_failed(geerpc("serve", "cli_service:Calc", "--port", str(port)), 1, "cannot listen on")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_and_leaves_the_registry(registry: str, signum: int) -> None:
    process = Running("serve", "cli_service:calc", "--name", "Solo", "--registry", registry)
    try:
        address = process.first_line()
        assert geerpc("call", address, "Solo.add", "1", "1").stdout == "2\n"
        assert address in geerpc("list", registry).stdout
    finally:
        status = process.stop(signum)
    assert status == 0, process.stderr
    assert "Traceback" not in process.stderr
    assert address not in geerpc("list", registry).stdout  # deregistered on the way out


@pytest.mark.parametrize("command", [
    ["call", "tcp@127.0.0.1:{port}", "Calc.add", "1", "2"],
    ["call", "http://127.0.0.1:{port}/r", "Calc.add", "--broadcast"],
    ["list", "http://127.0.0.1:{port}/r"],
    ["serve", "cli_service:Calc", "--port", "{taken}"],
    ["registry", "--port", "{taken}"],
])
def test_every_command_reports_failures_with_one_prefix(command: list[str]) -> None:
    # Usage errors are argparse's ("geerpc registry: error: ..."); a failure is one
    # "geerpc: ..." line whichever command met it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        fill = {"port": str(free_port()), "taken": str(taken.getsockname()[1])}
        result = geerpc(*(arg.format(**fill) for arg in command))
    assert_failed(result, 1)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("geerpc: "), result.stderr
    assert fill["port"] in lines[0] or fill["taken"] in lines[0]  # it says where


def test_registry_command_stops_on_sigterm() -> None:
    process = Running("registry", "--port", "0")
    try:
        url = process.first_line()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/_geerpc_/registry")
    finally:
        status = process.stop()
    assert status == 0, process.stderr


def test_serve_list_and_call_through_etcd() -> None:
    binary = etcd_binary()
    if binary is None:
        if etcd_required():
            pytest.fail("etcd missing, and GEERPC_REQUIRE_ETCD=1 requires the etcd tests to run")
        pytest.skip("needs the etcd binary")
    etcd = EtcdProcess(binary)
    etcd.start()
    try:
        url = etcd.url("cli")
        process = Running("serve", "cli_service:Calc", "--registry", url)
        try:
            address = process.first_line()
            listed = geerpc("list", url)
            assert listed.stdout.splitlines()[1].split() == [address, "Calc", "-"]
            assert geerpc("call", url, "Calc.add", "1", "2").stdout == "3\n"
        finally:
            assert process.stop() == 0, process.stderr
        assert address not in geerpc("list", url).stdout
    finally:
        etcd.close()


# --------------------------------------------------------------------------- in process


def test_load_object_searches_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "cli_here_mod.py").write_text("class Thing:\n    def ping(self):\n        return 'pong'\n")
    (tmp_path / "cli_broken_mod.py").write_text("x = 1\nraise RuntimeError('boom')\n")
    monkeypatch.chdir(tmp_path)
    # As under the console script: the current directory is not on the path.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in ("cli_here_mod", "cli_broken_mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert load_object("cli_here_mod:Thing").ping() == "pong"
    with pytest.raises(CommandError, match=r"RuntimeError: boom \(cli_broken_mod.py, line 2\)"):
        load_object("cli_broken_mod:Thing")


@pytest.mark.parametrize("value", [
    None, True, 3, -1.5, "text", "", [1, "a"], {"a": {"b": [None]}}, b"", b"\x00\xff",
    {b"k": 1}, {1: "one", "two": 2}, {"$bytes": "x"}, {"$map": []}, [float("inf"), float("-inf")],
    msgpack.Timestamp(1700000000, 5), {"$timestamp": [0, 0]},
])
def test_values_round_trip_through_json_text(value: object) -> None:
    assert from_json(json.loads(dumps(value))) == value


def test_values_nan_and_tags() -> None:
    assert dumps(float("nan")) == '{"$float": "NaN"}'
    assert math.isnan(parse_arg('{"$float": "NaN"}'))
    assert dumps(b"\x00\x01\x02") == '{"$bytes": "AAEC"}'
    assert to_json({"a": b"x"}) == {"a": {"$bytes": "eA=="}}


@pytest.mark.parametrize(("text", "value"), [
    ("1", 1), ("abc", "abc"), ('{"a":1}', {"a": 1}), ('"1"', "1"), ("null", None), ("NaN", "NaN"),
    ("[1, 2", "[1, 2"), ("", ""), ('{"$bytes": "AAE="}', b"\x00\x01"),
])
def test_parse_arg(text: str, value: object) -> None:
    assert parse_arg(text) == value


@pytest.mark.parametrize("text", ['{"$bytes": "A"}', '{"$bytes": 1}', '{"$map": [1]}', '{"$float": "x"}',
                                  '{"$timestamp": [1, 1000000000]}', '{"$map": [[[1], 2]]}'])
def test_parse_arg_rejects_a_malformed_tag(text: str) -> None:
    with pytest.raises(ValueError):
        parse_arg(text)


def test_parse_arg_rejects_json_nested_too_deeply() -> None:
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_arg("[" * 5000 + "]" * 5000)  # too deep for the JSON parser
    # Deep enough for from_json (a frame per level, and one per list comprehension),
    # not for the JSON parser.
    text = "[" * 700 + "]" * 700
    json.loads(text)
    with pytest.raises(ValueError, match="nested too deeply"):
        parse_arg(text)


def test_broadcast_line_for_each_outcome() -> None:
    from geerpc.cli.call import broadcast_line
    from geerpc.errors import ConnectError, RemoteError

    server = "tcp@127.0.0.1:9000"
    cases = [
        (b"\x00", {"server": server, "result": {"$bytes": "AA=="}}, 0),
        (RemoteError("KeyError", "'k'"), {"server": server, "error": "Store.get raised KeyError: 'k'",
                                          "type": "KeyError"}, 1),
        (TimeoutError(), {"server": server, "error": "Store.get timed out after 2 s", "type": "CallTimeout"}, 3),
        (ConnectError("cannot connect"), {"server": server, "error": "cannot connect", "type": "ConnectError"}, 1),
    ]
    for outcome, line, status in cases:
        text, got = broadcast_line(server, outcome, "Store.get", 2.0)
        assert (json.loads(text), got) == (line, status)
        assert "\n" not in text


def test_table_from_json_and_header() -> None:
    rows = rows_from_json({"servers": [
        {"address": "tcp@10.0.0.6:9000", "services": None, "age": 3.5},
        {"address": "tcp@10.0.0.5:9000", "services": ["Arith", "Calc"], "age": 12.031},
        {"address": "tcp@10.0.0.7:9000", "services": [], "age": 0},
    ]})
    assert format_table(rows or []).splitlines() == [
        "ADDRESS            SERVICES      AGE",
        "tcp@10.0.0.5:9000  Arith,Calc  12.0s",
        "tcp@10.0.0.6:9000  (any)        3.5s",
        "tcp@10.0.0.7:9000  (none)       0.0s",
    ]
    assert rows_from_json({"not": "ours"}) is None
    assert rows_from_header("b,a") == [Row("a", "(unknown)", None), Row("b", "(unknown)", None)]
    assert rows_from_header("") == []


@pytest.mark.parametrize(("args", "message"), [
    ([], "required: COMMAND"),
    (["call", "t", "A.b", "--kw", "novalue"], "--kw wants NAME=VALUE"),
    (["call", "t", "NoDot"], "Service.method wants a dot between two names, not 'NoDot'"),
    (["call", "t", "A."], "Service.method wants a dot"),
    (["call", "t", ".b"], "Service.method wants a dot"),
    (["call", "t", "A.b", "--kw", "timeout=1"], "'timeout' cannot be passed"),
    (["call", "t", "A.b", "1", "--bogus"], "unrecognized arguments: --bogus"),
    (["call", "t", "A.b", '{"$bytes": "A"}'], "ARG 1"),
    (["call", "t", "A.b", "1", "[" * 5000 + "]" * 5000], "ARG 2 (" + "[" * 40 + "): JSON nested too deeply"),
    (["call", "t", "A.b", "--kw", "a=" + "[" * 5000], "--kw a: JSON nested too deeply"),
    (["call", "t", "A.b", "1", "--timeout", "5", "--bogus", "--", "-x"], "unrecognized arguments: --bogus"),
    (["list", "ftp://x"], "not a registry URL"),
    (["serve", "m:A", "--port", "x"], "not a port number"),
])
def test_usage_errors(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["call", "serve", "list"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_registry_help_and_usage_name_geerpc_registry(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["registry", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: geerpc registry ")
    with pytest.raises(SystemExit) as info:
        main(["registry", "--port", "x"])
    assert info.value.code == 2
    assert "geerpc registry: error: argument --port" in capsys.readouterr().err
