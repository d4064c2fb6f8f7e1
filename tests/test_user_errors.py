"""Mistakes a new user makes, and what geerpc tells them: each error says what happened
once, names the address once, and gives the likely cause."""

from __future__ import annotations

import asyncio
import fractions
import inspect
import logging
import math
import pydoc
import re
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from _raw import fake_server, serving
from conftest import ROOT, Arith

import geerpc
from geerpc import protocol as p
from geerpc.deadline import Deadline
from geerpc.sync import SyncClient, SyncXClient
from geerpc.xclient import MultiServerDiscovery, SelectMode, XClient
from geerpc.xclient.registry_discovery import RegistryDiscovery
from geerpc.xclient.selection import Skipped

GO_REFUSAL = p.encode_option(p.Option(error="unsupported codec 'application/msgpack', this server speaks gob"))


async def _close_after_option(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    # what a GeeRPC Go server does with an Option naming a codec it lacks
    await reader.readline()


async def _refuse_option(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(GO_REFUSAL)
    await writer.drain()
    await reader.read()


async def _answer_garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readline()
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
    await writer.drain()
    await reader.read()


async def _http_404(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    await writer.drain()
    await reader.read()


def _free_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _says_it_once(message: str, address: str) -> None:
    assert message.count(address) == 1, message
    assert "cannot connect" not in message and "cannot dial" not in message, message


@pytest.mark.parametrize(("behaviour", "scheme", "expected"), [
    (_close_after_option, "tcp", ("{a} closed the connection during the handshake: not a geerpc server, "
                                  "or it does not speak application/msgpack")),
    (_refuse_option, "tcp", ("{a} refused the connection: unsupported codec 'application/msgpack', "
                             "this server speaks gob")),
    (_answer_garbage, "tcp", "{a}: not a geerpc server (Option is not valid JSON"),
    (_http_404, "http", ("{a} answered CONNECT with 404 Not Found: an HTTP server, but not a geerpc or "
                         "GeeRPC RPC port")),
], ids=["closed", "refusal Option", "bad Option line", "CONNECT 404"])
async def test_a_failed_handshake_is_said_once_with_its_likely_cause(behaviour, scheme, expected):
    async with fake_server(behaviour) as tcp_address:
        address = tcp_address.replace("tcp@", f"{scheme}@")
        with pytest.raises(geerpc.HandshakeError) as info:
            await geerpc.dial(address, connect_timeout=5)
    message = str(info.value)
    assert message.startswith(expected.format(a=address)), message
    _says_it_once(message, address)
    assert isinstance(info.value, geerpc.ConnectError)


async def test_a_refused_tcp_connect_names_the_address_once_and_is_no_handshake_error():
    address = f"tcp@127.0.0.1:{_free_port()}"
    with pytest.raises(geerpc.ConnectError) as info:
        await geerpc.dial(address, connect_timeout=5)
    assert str(info.value) == f"cannot connect to {address}: Connection refused"
    assert not isinstance(info.value, geerpc.HandshakeError)


async def test_an_unresolvable_host_names_the_address_once():
    address = "tcp@no-such-host.invalid:1"
    with pytest.raises(geerpc.ConnectError) as info:  # resolution fails without any network
        await geerpc.dial(address, connect_timeout=5)
    message = str(info.value)
    assert message.startswith(f"cannot connect to {address}: ") and message.count(address) == 1, message
    assert not isinstance(info.value, geerpc.HandshakeError)


async def test_a_malformed_address_is_named_once():
    with pytest.raises(geerpc.ConnectError) as info:
        await geerpc.dial("bogus@x:1")
    message = str(info.value)
    assert message.count("bogus@x:1") == 1 and "unknown protocol 'bogus'" in message, message


# ---------------------------------------------------------------- timeouts: one rule, one message

NOT_A_NUMBER = "timeout must be a number of seconds or None, not {}"
NOT_POSITIVE = "timeout must be a positive number of seconds or None"
BAD_TIMEOUTS = [("1", TypeError, NOT_A_NUMBER.format("str")), (True, TypeError, NOT_A_NUMBER.format("bool")),
                (0, ValueError, NOT_POSITIVE), (-1.5, ValueError, NOT_POSITIVE),
                (math.nan, ValueError, NOT_POSITIVE)]
BAD_IDS = ["str", "bool", "zero", "negative", "nan"]


def _raises_exactly(error: type[Exception], message: str) -> Any:
    return pytest.raises(error, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize(("timeout", "error", "message"), BAD_TIMEOUTS, ids=BAD_IDS)
def test_deadline_after_refuses_a_bad_timeout_without_a_loop(timeout, error, message):
    with _raises_exactly(error, message):
        Deadline.after(timeout, 100.0)


def test_deadline_after_takes_infinity_as_no_timeout_and_any_real_number():
    assert Deadline.after(math.inf, 100.0) is None and Deadline.after(None, 100.0) is None
    assert Deadline.after(fractions.Fraction(1, 2), 100.0) == Deadline(100.5, 0.5)


ASYNC_ENTRY_POINTS = ["Client.call", "XClient.call", "XClient.broadcast", "dial connect_timeout",
                      "dial handle_timeout", "XClient connect_timeout"]


@pytest.mark.parametrize("entry", ASYNC_ENTRY_POINTS)
@pytest.mark.parametrize(("timeout", "error", "message"), BAD_TIMEOUTS, ids=BAD_IDS)
async def test_every_async_entry_point_refuses_a_bad_timeout_alike(server, client, entry, timeout, error, message):
    async with XClient([server.address]) as xc:
        attempts = {
            "Client.call": lambda: client.call("Arith.add", 1, 2, timeout=timeout),
            "XClient.call": lambda: xc.call("Arith.add", 1, 2, timeout=timeout),
            "XClient.broadcast": lambda: xc.broadcast("Arith.add", 1, 2, timeout=timeout),
            "dial connect_timeout": lambda: geerpc.dial(server.address, connect_timeout=timeout),
            "dial handle_timeout": lambda: geerpc.dial(server.address, handle_timeout=timeout),
            "XClient connect_timeout": lambda: _make_xclient(server.address, timeout),
        }
        with _raises_exactly(error, message):
            await attempts[entry]()
        assert await xc.call("Arith.add", 1, 2) == 3  # nothing was spent or broken
    assert len(server.snapshot().connections) <= 2  # the dials did not connect


async def _make_xclient(address: str, connect_timeout: Any) -> None:
    XClient([address], connect_timeout=connect_timeout)


@pytest.mark.parametrize("entry", ["Client.call", "XClient.call", "XClient.broadcast", "dial"])
async def test_infinity_means_no_timeout_everywhere(server, client, entry):
    async with XClient([server.address], connect_timeout=math.inf) as xc:
        if entry == "dial":
            async with await geerpc.dial(server.address, connect_timeout=math.inf, handle_timeout=math.inf) as c:
                assert await c.call("Arith.add", 1, 2) == 3
            return
        call = {"Client.call": client.call, "XClient.call": xc.call, "XClient.broadcast": xc.broadcast}[entry]
        assert await call("Arith.add", 1, 2, timeout=math.inf) == 3


@pytest.fixture
def loop_thread_server() -> Iterator[str]:
    """A geerpc server on a loop in its own thread, so the test thread may block."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-user-errors", daemon=True)
    thread.start()
    server = geerpc.Server()
    server.register(Arith())
    try:
        yield asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.mark.parametrize(("timeout", "error", "message"), BAD_TIMEOUTS, ids=BAD_IDS)
def test_the_blocking_clients_refuse_a_bad_timeout_alike(loop_thread_server, timeout, error, message):
    with SyncClient(loop_thread_server) as client, SyncXClient([loop_thread_server]) as xclient:
        for attempt in (lambda: client.call("Arith.add", 1, 2, timeout=timeout),
                        lambda: xclient.call("Arith.add", 1, 2, timeout=timeout),
                        lambda: xclient.broadcast("Arith.add", 1, 2, timeout=timeout),
                        lambda: SyncClient(loop_thread_server, connect_timeout=timeout),
                        lambda: SyncClient(loop_thread_server, handle_timeout=timeout),
                        lambda: SyncXClient([loop_thread_server], connect_timeout=timeout)):
            with _raises_exactly(error, message):
                attempt()
        assert client.call("Arith.add", 1, 2) == 3 and xclient.broadcast("Arith.add", 1, 2) == 3


# ---------------------------------------------------------------- a server address where a registry URL goes


@pytest.mark.parametrize("url", ["tcp@127.0.0.1:9999", "127.0.0.1:9999", "etcd://127.0.0.1:2379", "http://", ""])
def test_registry_discovery_refuses_what_is_not_an_http_registry_url(url):
    with _raises_exactly(ValueError, f"not a registry URL: {url!r} (want an http:// or https:// registry URL, "
                                     "such as http://127.0.0.1:9999/_geerpc_/registry)"):
        RegistryDiscovery(url)


async def test_registry_discovery_takes_http_and_https_urls():
    for url in ("http://127.0.0.1:9999/_geerpc_/registry", "https://registry.example/_geerpc_/registry"):
        await RegistryDiscovery(url).close()


# ---------------------------------------------------------------- GeeRPC Go servers sharing a registry


def test_skipped_holds_a_server_for_its_period_and_reports_each_period_once():
    skipped = Skipped(30.0)
    assert not skipped and skipped.fit(["a", "b"], 0.0) == ["a", "b"]
    assert skipped.add("a", "a closed the connection", 100.0) is True
    assert skipped.add("a", "a closed the connection", 110.0) is False  # a second caller saw the same dial fail
    assert skipped.holds("a", 129.9) and skipped.fit(["a", "b"], 129.9) == ["b"]
    assert not skipped.holds("a", 130.0) and skipped.fit(["a", "b"], 130.0) == ["a", "b"]
    assert not skipped  # expired and forgotten: picks cost nothing extra again
    assert skipped.add("a", "a closed it again", 130.0) is True  # the next period is logged again
    assert "a closed it again" in skipped.why(["a"], 131.0)


def _counting(behaviour: Any, dials: list[int]) -> Any:
    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        dials.append(1)
        await behaviour(reader, writer)
    return run


def _skip_warnings(caplog: pytest.LogCaptureFixture, address: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records
            if r.name == "geerpc.xclient" and r.levelno == logging.WARNING and address in r.getMessage()]


@pytest.mark.parametrize("first", ["call", "broadcast"])
@pytest.mark.parametrize("behaviour", [_close_after_option, _refuse_option], ids=["closes", "refuses"])
async def test_a_go_server_in_the_list_is_dialled_once_and_calls_go_to_the_geerpc_server(
        server, behaviour, first, caplog):
    caplog.set_level(logging.WARNING, "geerpc.xclient")
    dials: list[int] = []
    async with fake_server(_counting(behaviour, dials)) as go:
        discovery = MultiServerDiscovery([go, server.address])  # the Go server counts as offering any service
        async with XClient(discovery, SelectMode.ROUND_ROBIN) as xc:
            if first == "broadcast":
                assert await xc.broadcast("Arith.add", 3, 4, timeout=5) == 7
            for _ in range(8):
                assert await xc.call("Arith.add", 1, 2, timeout=5) == 3
            for _ in range(3):
                assert await xc.broadcast("Arith.add", 3, 4, timeout=5) == 7
    assert len(dials) == 1
    [warning] = _skip_warnings(caplog, go)
    assert "handshake" in warning.getMessage() or "refused" in warning.getMessage()


async def test_when_every_server_is_skipped_the_call_says_why(caplog):
    caplog.set_level(logging.WARNING, "geerpc.xclient")
    dials: list[int] = []
    async with fake_server(_counting(_close_after_option, dials)) as go:
        async with XClient([go]) as xc:
            with pytest.raises(geerpc.HandshakeError):  # the first dial finds it out
                await xc.call("Arith.add", 1, 2, timeout=5)
            for attempt in (lambda: xc.call("Arith.add", 1, 2, timeout=5),
                            lambda: xc.broadcast("Arith.add", 1, 2, timeout=5)):
                with pytest.raises(geerpc.NoServerAvailable) as info:
                    await attempt()
                message = str(info.value)
                assert "1 skipped" in message and "handshake failed" in message and "not geerpc servers" in message
                assert f"{go} closed the connection during the handshake" in message
    assert len(dials) == 1
    assert len(_skip_warnings(caplog, go)) == 1


async def test_a_broadcast_that_only_finds_go_servers_raises_no_server_available():
    async with fake_server(_refuse_option) as go:
        async with XClient([go]) as xc:
            with pytest.raises(geerpc.NoServerAvailable, match="handshake failed"):
                await xc.broadcast("Arith.add", 1, 2, timeout=5)


# ---------------------------------------------------------------- small things


def test_help_on_xclient_documents_every_constructor_argument_and_its_default():
    doc = inspect.getdoc(XClient)
    assert doc is not None and doc in pydoc.render_doc(XClient, renderer=pydoc.plaintext).replace("\n |  ", "\n")
    args = re.split(r"\n    (\w+): ", "\n" + doc.split("\nArgs:\n", 1)[1].split("\n\n", 1)[0])
    documented = dict(zip(args[1::2], args[2::2]))  # argument -> what the docstring says of it
    for name, param in inspect.signature(XClient).parameters.items():
        assert name in documented, f"XClient's docstring does not document {name}"
        if param.default is not param.empty:
            shown = param.default.name if isinstance(param.default, SelectMode) else repr(param.default)
            assert shown in documented[name], f"the docstring does not give {name}'s default {shown}"


def test_the_package_ships_an_mit_license():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) 2026 the geerpc authors" in text
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("mode", [SelectMode.ROUND_ROBIN, SelectMode.RANDOM])
async def test_with_a_go_server_skipped_the_select_mode_still_spreads_calls_over_the_others(server, mode):
    dials: list[int] = []
    async with serving(Arith()) as other, fake_server(_counting(_close_after_option, dials)) as go:
        async with XClient([go, server.address, other.address], mode) as xc:
            for _ in range(40):
                assert await xc.call("Arith.add", 1, 2, timeout=5) == 3
    calls = [s.snapshot().method("Arith.add").calls for s in (server, other)]
    # round robin takes the two in turn (the first call may have failed over from the Go server)
    assert len(dials) == 1 and sum(calls) == 40 and min(calls) >= (19 if mode is SelectMode.ROUND_ROBIN else 5), calls
