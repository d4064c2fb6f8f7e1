"""Keepalive pings: a server that hangs with its socket open is noticed.

Hostile rows (in the style of HOSTILE.md):
- a SIGSTOPped server (socket open, the kernel still ACKing) with calls pending and
  no call timeout: the calls fail with ConnectionClosed within keepalive plus
  keepalive_timeout, instead of waiting for ever;
- a server that is merely slow answers the pings, and its calls go on;
- a server that does not read (its max_in_flight is full, so our pings wait unread)
  says it is still here unasked, and the client keeps the connection;
- an old server that does not echo Keepalive is never pinged;
- a malformed PONG is a protocol error, not a sign of life.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

import pytest

import geerpc
from geerpc import protocol as p

from _raw import fake_server, read_message, serving
from conftest import PYTHON, ROOT, Arith, subprocess_env


async def test_a_stopped_server_is_noticed_by_calls_without_a_timeout() -> None:
    proc = await asyncio.create_subprocess_exec(
        PYTHON, str(ROOT / "tests" / "serve_arith.py"), stdout=asyncio.subprocess.PIPE, env=subprocess_env())
    try:
        assert proc.stdout is not None
        address = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()
        async with await geerpc.dial(address, keepalive=0.2, keepalive_timeout=0.3) as client:
            assert await client.call("Arith.add", 1, 2) == 3
            proc.send_signal(signal.SIGSTOP)
            calls = [asyncio.ensure_future(client.call("Arith.sleep", 30)) for _ in range(10)]
            for call in calls:
                with pytest.raises(geerpc.ConnectionClosed, match="did not answer a keepalive ping within 0.3 s"):
                    await asyncio.wait_for(call, 10)  # a bound for the test only: no call timeout
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        await proc.wait()


async def test_a_slow_server_answers_the_pings_and_its_calls_go_on() -> None:
    async with serving(Arith()) as server:
        assert server.address is not None
        async with await geerpc.dial(server.address, keepalive=0.05, keepalive_timeout=0.1) as client:
            assert await client.call("Arith.sleep", 0.6) == 0.6  # many intervals with nothing else said


async def test_a_server_that_does_not_read_says_it_is_still_here() -> None:
    gate = asyncio.Event()

    class Gate:
        async def wait(self) -> str:
            await gate.wait()
            return "done"

    async with serving(Gate(), max_in_flight=1) as server:
        assert server.address is not None
        async with await geerpc.dial(server.address, keepalive=0.1, keepalive_timeout=0.1) as client:
            # One running, sixteen held: the hold is full, so the server stops reading
            # and our pings stay in the socket; its unasked PONGs keep us alive.
            calls = [asyncio.ensure_future(client.call("Gate.wait")) for _ in range(40)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(asyncio.shield(asyncio.gather(*calls)), 1.0)
            assert not client.closed
            gate.set()
            assert await asyncio.gather(*calls) == ["done"] * 40


async def test_a_server_that_does_not_echo_keepalive_is_never_pinged() -> None:
    seen: list[object] = []

    async def old_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(p.encode_option(p.Option()))  # no Keepalive in the ack
        while True:
            message = await read_message(reader)
            seen.append(message)
            if type(message) is p.Request and message.service_method == "S.late":
                await asyncio.sleep(0.5)  # silent far past the client's interval
                writer.write(p.encode_response(message.seq, "late"))

    async with fake_server(old_server) as address:
        async with await geerpc.dial(address, keepalive=0.05, keepalive_timeout=0.05) as client:
            assert await client.call("S.late") == "late"
    assert [type(m) for m in seen] == [p.Request]


async def test_the_option_carries_keepalive_and_the_server_echoes_it() -> None:
    option = p.decode_option(p.encode_option(p.Option(keepalive=2_000_000_000)))
    assert option.keepalive == 2_000_000_000
    assert b"Keepalive" not in p.encode_option(p.Option())
    with pytest.raises(p.BadOption, match="Keepalive must be an integer"):
        p.decode_option(b'{"MagicNumber": 3927900, "Keepalive": true}')
    async with serving(Arith()) as server:
        assert server.address is not None
        reader, writer = await asyncio.open_connection(*server.address[4:].rsplit(":", 1))
        try:
            writer.write(p.encode_option(p.Option(keepalive=7)) + p.encode_ping(42))
            ack = p.decode_option(await asyncio.wait_for(reader.readline(), 5))
            assert ack.keepalive == 7
            header = await asyncio.wait_for(reader.readexactly(4), 5)
            payload = await reader.readexactly(int.from_bytes(header, "big"))
            assert payload.startswith(p.PONG_PREFIX) and p.decode_pong(payload) == 42
        finally:
            writer.close()
            await writer.wait_closed()


@pytest.mark.parametrize("body", [b"\x92\x04\xa1x", b"\x92\x04\xff"])
async def test_a_malformed_pong_closes_the_connection(body: bytes) -> None:
    async def bad_pong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(p.encode_option(p.Option()))
        await read_message(reader)
        writer.write(p.frame(body))
        await reader.read()

    async with fake_server(bad_pong) as address:
        async with await geerpc.dial(address) as client:
            with pytest.raises(geerpc.ConnectionClosed, match="broke the protocol"):
                await client.call("S.m", timeout=5)


async def test_keepalive_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        await geerpc.dial("tcp@127.0.0.1:1", keepalive=0)
    with pytest.raises(TypeError):
        await geerpc.dial("tcp@127.0.0.1:1", keepalive="10")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keepalive_timeout must be a finite number"):
        await geerpc.dial("tcp@127.0.0.1:1", keepalive_timeout=None)  # type: ignore[arg-type]
