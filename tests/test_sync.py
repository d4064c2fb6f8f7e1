"""The blocking clients against real servers on loopback.

The servers and a registry run on an event loop in a thread of their own (one per
module), so the test thread runs no loop and may block, as a script would; some tests
run a loop in the test thread and block it, as a Jupyter cell does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import signal
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Arith, eventually_sync

import geerpc
from geerpc.registry import Registry
from geerpc.sync import SyncClient, SyncXClient
from geerpc.xclient import SelectMode


class Backend:
    """A registry and two servers, each serving its own Arith, on a loop thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-backend", daemon=True)
        self.thread.start()
        self.registry = Registry(timeout=30.0)
        self.ariths = [Arith(), Arith()]
        self.servers = [geerpc.Server(), geerpc.Server()]
        self.url = ""
        self.addresses: list[str] = []

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    async def start(self) -> None:
        self.url = await self.registry.start("127.0.0.1", 0)
        for server, arith in zip(self.servers, self.ariths):
            server.register(arith)
            self.addresses.append(await server.start("127.0.0.1", 0, registry=self.url))

    async def stop(self) -> None:
        for server in self.servers:
            await server.stop(grace=1.0)
        await self.registry.stop()

    def close(self) -> None:
        try:
            self.run(self.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def backend() -> Iterator[Backend]:
    b = Backend()
    try:
        b.run(b.start())
        yield b
    finally:
        b.close()


@pytest.fixture
def address(backend: Backend) -> str:
    return backend.addresses[0]


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("geerpc-sync")]


# --------------------------------------------------------------------------- SyncClient


def test_call_returns_the_result(address: str) -> None:
    with SyncClient(address) as client:
        assert client.call("Arith.add", 1, 2) == 3
        assert client.call("Arith.add", a="x", b="y") == "xy"
        assert client.call("Arith.echo", b"\x00\xff") == b"\x00\xff"


def test_threads_share_one_client(address: str) -> None:
    errors: list[BaseException] = []

    def worker(client: SyncClient, t: int) -> None:
        try:
            for i in range(50):
                assert client.call("Arith.add", t * 1000, i, timeout=10) == t * 1000 + i
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    with SyncClient(address) as client:
        threads = [threading.Thread(target=worker, args=(client, t)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == []
    assert not any(thread.is_alive() for thread in threads)


def test_timeout_raises_call_timeout_and_the_client_stays_usable(address: str) -> None:
    with SyncClient(address) as client:
        with pytest.raises(geerpc.CallTimeout, match="Arith.sleep timed out"):
            client.call("Arith.sleep", 5, timeout=0.1)
        assert client.call("Arith.add", 2, 2) == 4


def test_handler_error_raises_remote_error(address: str) -> None:
    with SyncClient(address) as client:
        with pytest.raises(geerpc.RemoteError) as info:
            client.call("Arith.fail", "boom")
        assert (info.value.type, str(info.value)) == ("ValueError", "boom")
        with pytest.raises(geerpc.MethodNotFound):
            client.call("Arith.nope")


def test_call_after_close_raises_connection_closed(address: str) -> None:
    client = SyncClient(address)
    client.close()
    client.close()  # idempotent
    assert client.closed
    assert sync_threads() == []
    with pytest.raises(geerpc.ConnectionClosed):
        client.call("Arith.add", 1, 2)


def test_close_fails_a_call_in_flight(backend: Backend, address: str) -> None:
    arith = backend.ariths[0]
    backend.loop.call_soon_threadsafe(arith.started.clear)
    outcome: list[BaseException | object] = []
    client = SyncClient(address)

    def call() -> None:
        try:
            outcome.append(client.call("Arith.sleep", 30))
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    eventually_sync(arith.started.is_set)
    client.close()
    caller.join(5)
    assert len(outcome) == 1 and isinstance(outcome[0], geerpc.ConnectionClosed)


def test_refused_address_raises_connect_error_and_leaves_no_thread() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    before = threading.active_count()
    with pytest.raises(geerpc.ConnectError, match=f"127.0.0.1:{port}"):
        SyncClient(f"tcp@127.0.0.1:{port}")
    assert threading.active_count() == before
    assert sync_threads() == []


def test_silent_listener_raises_connect_timeout() -> None:
    with socket.socket() as listener:  # accepts the TCP connection, never answers the Option
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with pytest.raises(geerpc.ConnectTimeout):
            SyncClient(f"tcp@127.0.0.1:{port}", connect_timeout=0.2)
    assert sync_threads() == []


async def test_constructor_and_call_work_inside_a_running_loop(address: str) -> None:
    # As in a Jupyter cell: the client's loop is its own, so blocking this one is safe.
    with SyncClient(address) as client:
        assert client.call("Arith.add", 1, 2) == 3
    assert sync_threads() == []


def test_blocking_calls_from_a_coroutine_in_the_same_thread(backend: Backend, address: str) -> None:
    async def main() -> list[Any]:
        # Called synchronously, without await, from inside the running loop.
        with SyncClient(address) as client, SyncXClient(list(backend.addresses)) as xclient:
            return [client.call("Arith.add", 1, 2), xclient.call("Arith.mul", 6, 7),
                    xclient.broadcast("Arith.add", 2, 3, timeout=5)]

    assert asyncio.run(main()) == [3, 42, 5]
    assert sync_threads() == []


def test_timeout_inside_a_running_loop_raises_call_timeout(address: str) -> None:
    async def main(client: SyncClient) -> None:
        with pytest.raises(geerpc.CallTimeout):
            client.call("Arith.sleep", 5, timeout=0.1)

    with SyncClient(address) as client:
        asyncio.run(main(client))
        assert client.call("Arith.add", 1, 2) == 3


def on_own_loop(client: SyncClient | SyncXClient, function: Any) -> Any:
    """Run ``function`` as a callback on ``client``'s own loop thread; its result or exception."""
    outcome: concurrent.futures.Future[Any] = concurrent.futures.Future()

    def callback() -> None:
        try:
            outcome.set_result(function())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.set_exception(exc)

    client._loop.call_soon_threadsafe(callback)
    return outcome.result(10)


OWN_LOOP = r"cannot block on its own loop thread .*wait forever"


def test_call_on_its_own_loop_thread_raises_runtime_error(backend: Backend, address: str) -> None:
    with SyncClient(address) as client, SyncXClient(list(backend.addresses)) as xclient:
        with pytest.raises(RuntimeError, match=f"SyncClient {OWN_LOOP}"):
            on_own_loop(client, lambda: client.call("Arith.add", 1, 2))
        with pytest.raises(RuntimeError, match=f"SyncXClient {OWN_LOOP}"):
            on_own_loop(xclient, lambda: xclient.call("Arith.add", 1, 2))
        with pytest.raises(RuntimeError, match=f"SyncXClient {OWN_LOOP}"):
            on_own_loop(xclient, lambda: xclient.broadcast("Arith.add", 1, 2))

        async def task() -> Any:  # a task on the loop is refused the same way
            return client.call("Arith.add", 1, 2)

        with pytest.raises(RuntimeError, match=f"SyncClient {OWN_LOOP}"):
            asyncio.run_coroutine_threadsafe(task(), client._loop).result(10)
        # Refused before anything reached the loop: both clients carry on.
        assert client.call("Arith.add", 1, 2) == 3
        assert xclient.call("Arith.add", 2, 2) == 4


def test_another_clients_loop_thread_may_block(address: str) -> None:
    with SyncClient(address) as first, SyncClient(address) as second:
        assert on_own_loop(first, lambda: second.call("Arith.add", 1, 2)) == 3


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="needs the main thread")
def test_interrupted_wait_cancels_the_call(backend: Backend, address: str) -> None:
    arith = backend.ariths[0]
    backend.loop.call_soon_threadsafe(arith.started.clear)
    backend.loop.call_soon_threadsafe(arith.cancelled.clear)
    main = threading.main_thread().ident
    assert main is not None

    def interrupt() -> None:  # Ctrl-C, once the call is running on the server
        eventually_sync(arith.started.is_set)
        signal.pthread_kill(main, signal.SIGINT)

    with SyncClient(address) as client:
        interrupter = threading.Thread(target=interrupt)
        interrupter.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                client.call("Arith.sleep", 30)
        finally:
            interrupter.join(10)
        eventually_sync(arith.cancelled.is_set)  # the cancel reached the server's handler
        assert client.call("Arith.add", 1, 1) == 2


# --------------------------------------------------------------------------- dropped without close()


def drop(clients: list[Any]) -> None:
    """Drop the last references to ``clients`` (without closing them) and collect."""
    clients.clear()
    gc.collect()


def test_dropped_client_warns_and_closes_its_connection(address: str) -> None:
    clients = [SyncClient(address)]
    inner = clients[0]._client  # the async client underneath; it does not refer back
    assert clients[0].call("Arith.add", 1, 2) == 3
    with pytest.warns(ResourceWarning, match=f"unclosed SyncClient {address}"):
        drop(clients)
    assert inner.closed
    assert sync_threads() == []


def test_dropped_clients_leave_no_threads_behind(backend: Backend, address: str) -> None:
    before = threading.active_count()
    clients: list[Any] = []
    for _ in range(5):
        clients += [SyncClient(address), SyncXClient([address]), SyncXClient(backend.url)]
    for client in clients:
        assert client.call("Arith.add", 1, 2, timeout=5) == 3
    del client
    with pytest.warns(ResourceWarning) as record:
        drop(clients)
    assert threading.active_count() == before
    assert sync_threads() == []
    # One warning per client, and only ours: no transport or session left unclosed.
    messages = [str(warning.message) for warning in record]
    assert len(messages) == 15, messages
    assert all(message.startswith("unclosed Sync") for message in messages), messages


# --------------------------------------------------------------------------- SyncXClient


def test_xclient_over_a_registry_calls_and_broadcasts(backend: Backend) -> None:
    with SyncXClient(backend.url, SelectMode.ROUND_ROBIN) as xclient:
        assert xclient.call("Arith.add", 20, 22, timeout=5) == 42
        before = [arith.calls for arith in backend.ariths]
        assert xclient.broadcast("Arith.add", 1, 2, timeout=5) == 3
        eventually_sync(lambda: [a.calls - b for a, b in zip(backend.ariths, before)] == [1, 1])
        with pytest.raises(geerpc.RemoteError, match="boom"):
            xclient.broadcast("Arith.fail", "boom", timeout=5)
    with pytest.raises(geerpc.ConnectionClosed):
        xclient.call("Arith.add", 1, 2)
    xclient.close()
    assert sync_threads() == []


def test_xclient_over_an_address_list_times_out(backend: Backend) -> None:
    with SyncXClient(list(backend.addresses), failover=False) as xclient:
        assert xclient.call("Arith.mul", 6, 7) == 42
        with pytest.raises(geerpc.CallTimeout):
            xclient.call("Arith.sleep", 5, timeout=0.1)


def test_xclient_bad_url_raises_and_leaves_no_thread() -> None:
    before = threading.active_count()
    with pytest.raises(ValueError, match="not a registry URL"):
        SyncXClient("ftp://example.invalid/registry")
    assert threading.active_count() == before
    assert sync_threads() == []
