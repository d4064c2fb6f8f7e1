"""Registration and discovery with many servers: ZooKeeper, etcd and the built-in registry.

    python3 bench/bench_discovery.py [--servers 1000] [--clients 4] [--backends zookeeper,etcd,registry]

For each backend, side by side in one run, on 127.0.0.1 only:

1. ``--clients`` discoveries start watching an empty registry; then ``--servers``
   addresses are registered, and the run times how long until every discovery lists
   all of them ("full list");
2. one of those registrations stops (deregisters), and the run times how long until
   every discovery has dropped it ("stopped");
3. a child process registers one more address and is SIGKILLed once every discovery
   lists it, and the run times how long until every discovery has dropped it
   ("killed"): that is each backend's expiry (``--expiry``, default 10 s: ZooKeeper's
   session timeout, etcd's lease TTL and its default, the registry's timeout). With
   2 s, keeping 1,000 etcd leases alive from this one process is 1,500 keep-alives a
   second, more than a small machine serves through etcd's JSON gateway.

The servers are not real RPC servers: each is an address registered through its
backend's own registration path. ZooKeeper: ``ZooKeeperRegistration``s (an ephemeral
node each, with its keeper task), ``--per-session`` of them sharing one ZooKeeper
session, since 1,000 kazoo clients would be 3,000 threads in this one process. etcd:
``EtcdRegistration``s (a lease and a key each, each lease kept alive), sharing
``--per-session`` per set of connections. The built-in registry: one ``Heartbeat``
each (POST ``X-Geerpc-Server``, the period the registry asks for). The discoveries
are ``ZooKeeperDiscovery``, ``EtcdDiscovery`` and ``RegistryDiscovery`` (watching),
each with its own connection. ZooKeeper and etcd run as child processes on free
ports and temporary data directories (the test suite's ``tests/zk_server.py`` and
``tests/etcd_server.py``), the registry as ``python -m geerpc.registry``. A backend
whose program is missing is skipped. Every wait is bounded (``--deadline``).

The figures are read in the README's ZooKeeper section. Times are wall clock, with
the backend, the registrations and the discoveries sharing the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from geerpc.xclient.discovery import ServerList

_ONE_SERVER = """
import asyncio, sys

async def main():
    url, address = sys.argv[1], sys.argv[2]
    if url.startswith("zk://"):
        from geerpc.registry.zookeeper import register
        await register(url, address, ["Bench"])
    elif url.startswith("etcd://"):
        from geerpc.registry.etcd import register
        await register(url, address, ["Bench"])
    else:
        from geerpc.registry.heartbeat import heartbeat
        beat = heartbeat(url, address, services=["Bench"])
        await beat.wait_first()
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@dataclass
class Result:
    backend: str
    servers: int
    registered: float = float("nan")  # seconds to register them all
    full_list: float = float("nan")  # seconds from the first registration until every client lists all
    stopped: float = float("nan")  # seconds from stop() until every client dropped it
    killed: float = float("nan")  # seconds from SIGKILL until every client dropped it
    notes: list[str] = field(default_factory=list)


def address(i: int) -> str:
    return f"tcp@127.0.{(i // 250) + 1}.{(i % 250) + 1}:9000"


async def until(condition: Callable[[], bool], deadline: float, what: str) -> float:
    """Seconds until ``condition()`` holds, polled every 2 ms; TimeoutError past ``deadline``."""
    start = time.perf_counter()
    async with asyncio.timeout(deadline):
        while not condition():
            await asyncio.sleep(0.002)
    return time.perf_counter() - start


def listing(clients: Sequence[ServerList]) -> Callable[[str], list[bool]]:
    return lambda addr: [addr in client.services() for client in clients]


# --------------------------------------------------------------------------- backends


@asynccontextmanager
async def zookeeper_backend(args: argparse.Namespace) -> AsyncIterator[Backend]:
    from zk_server import ZooKeeperProcess, zookeeper_command

    command = zookeeper_command()
    if command is None:
        raise LookupError("no java or Debian's zookeeper.jar (apt-get install zookeeperd)")
    process = ZooKeeperProcess(command)
    await asyncio.to_thread(process.start)
    try:
        from geerpc.registry.zk_client import ZkSession, parse_zk_url
        from geerpc.registry.zookeeper import ZooKeeperRegistration, node_value
        from geerpc.xclient.zookeeper_discovery import ZooKeeperDiscovery

        url = process.url("bench", session_timeout=args.expiry)
        config = parse_zk_url(url)
        sessions: list[Any] = []

        async def register_all(addresses: list[str]) -> list[Any]:
            registrations = []
            for start in range(0, len(addresses), args.per_session):
                session = ZkSession(config)
                sessions.append(session)
                for addr in addresses[start:start + args.per_session]:
                    registrations.append(ZooKeeperRegistration(config, addr, node_value(addr, ["Bench"], None),
                                                               session))
            await gather_bounded([r._start(args.deadline) for r in registrations], args.concurrency)
            return registrations

        async def stop_one(registration: Any) -> None:
            # What stop() does, but the session is shared: end the keeper, delete the node.
            registration._task.cancel()
            await registration._session.delete(registration.node)

        async def close(registrations: list[Any]) -> None:
            for registration in registrations:
                if registration._task is not None:
                    registration._task.cancel()
            await asyncio.gather(*(s.close() for s in sessions))

        yield Backend("ZooKeeper", url, lambda: ZooKeeperDiscovery(url), register_all, stop_one, close,
                      f"session timeout {args.expiry:g} s, {args.per_session} nodes a session")
    finally:
        await asyncio.to_thread(process.close)


@asynccontextmanager
async def etcd_backend(args: argparse.Namespace) -> AsyncIterator[Backend]:
    from etcd_server import EtcdProcess, etcd_binary

    binary = etcd_binary()
    if binary is None:
        raise LookupError("no etcd binary (apt-get install etcd-server)")
    process = EtcdProcess(binary)
    await asyncio.to_thread(process.start)
    try:
        from geerpc.registry.etcd import EtcdClients, EtcdRegistration, parse_etcd_url
        from geerpc.registry.zookeeper import node_value  # the same JSON value as etcd's
        from geerpc.xclient.etcd_discovery import EtcdDiscovery

        ttl = max(1, round(args.expiry))
        url = process.url("bench", ttl=ttl)
        config = parse_etcd_url(url)
        clients: list[Any] = []

        async def register_all(addresses: list[str]) -> list[Any]:
            registrations = []
            for start in range(0, len(addresses), args.per_session):
                shared = EtcdClients.for_url(config)
                clients.append(shared)
                for addr in addresses[start:start + args.per_session]:
                    registrations.append(EtcdRegistration(config, addr, node_value(addr, ["Bench"], None), shared))
            await gather_bounded([r._start(args.deadline) for r in registrations], args.concurrency)
            return registrations

        async def stop_one(registration: Any) -> None:
            # What stop() does, but the connections are shared: end the keep-alive, revoke.
            registration._task.cancel()
            await registration._revoke()

        async def close(registrations: list[Any]) -> None:
            for registration in registrations:
                if registration._task is not None:
                    registration._task.cancel()
            await asyncio.sleep(0)
            await asyncio.gather(*(c.close() for c in clients))

        yield Backend("etcd", url, lambda: EtcdDiscovery(url), register_all, stop_one, close,
                      f"lease TTL {ttl} s, {args.per_session} leases a connection set")
    finally:
        await asyncio.to_thread(process.close)


@asynccontextmanager
async def registry_backend(args: argparse.Namespace) -> AsyncIterator[Backend]:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "geerpc.registry", "--port", "0", "--timeout", f"{args.expiry:g}",
        "--max-servers", str(args.servers + 10), stdout=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert child.stdout is not None
        async with asyncio.timeout(args.deadline):
            url = (await child.stdout.readline()).decode().strip()
        from geerpc.registry.heartbeat import Heartbeat
        from geerpc.xclient.registry_discovery import RegistryDiscovery

        async def register_all(addresses: list[str]) -> list[Any]:
            beats = [Heartbeat(url, addr, services=["Bench"]) for addr in addresses]
            for beat in beats:
                beat.start()
            await gather_bounded([beat.wait_first() for beat in beats], args.concurrency)
            return beats

        async def stop_one(beat: Any) -> None:
            await beat.stop()

        async def close(beats: list[Any]) -> None:
            await gather_bounded([beat.stop() for beat in beats], args.concurrency)

        yield Backend("registry", url, lambda: RegistryDiscovery(url), register_all, stop_one, close,
                      f"registry timeout {args.expiry:g} s, one heartbeat (HTTP session) a server")
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()


@dataclass
class Backend:
    name: str
    url: str
    discovery: Callable[[], ServerList]
    register_all: Callable[[list[str]], Any]
    stop_one: Callable[[Any], Any]
    close: Callable[[list[Any]], Any]
    how: str


BACKENDS = {"zookeeper": zookeeper_backend, "etcd": etcd_backend, "registry": registry_backend}


async def gather_bounded(coroutines: list[Any], limit: int) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coroutine: Any) -> Any:
        async with gate:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


# --------------------------------------------------------------------------- the run


async def measure(backend: Backend, args: argparse.Namespace) -> Result:
    result = Result(backend.name, args.servers, notes=[backend.how])
    addresses = [address(i) for i in range(args.servers)]
    async with AsyncExitStack() as stack:
        clients = [backend.discovery() for _ in range(args.clients)]
        for client in clients:
            stack.push_async_callback(client.close)
            await client.get_all()  # starts its watch on the empty list
        seen = listing(clients)

        start = time.perf_counter()
        registrations = await backend.register_all(addresses)
        stack.push_async_callback(backend.close, registrations)
        result.registered = time.perf_counter() - start
        await until(lambda: all(len(c.services()) == args.servers for c in clients), args.deadline, "full list")
        result.full_list = time.perf_counter() - start

        victim = addresses[0]
        start = time.perf_counter()
        await backend.stop_one(registrations[0])
        await until(lambda: not any(seen(victim)), args.deadline, "stopped server dropped")
        result.stopped = time.perf_counter() - start

        extra = address(args.servers + 1)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _ONE_SERVER, backend.url, extra, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": ROOT})
        try:
            assert child.stdout is not None
            async with asyncio.timeout(args.deadline):
                await child.stdout.readline()
            await until(lambda: all(seen(extra)), args.deadline, "killable server listed")
            start = time.perf_counter()
            child.kill()
            await child.wait()
            await until(lambda: not any(seen(extra)), args.deadline + args.expiry * 3, "killed server dropped")
            result.killed = time.perf_counter() - start
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
    return result


def report(results: list[Result], args: argparse.Namespace) -> None:
    print(f"\n{args.servers} servers, {args.clients} clients each; seconds")
    print(f"{'backend':<10} {'register':>9} {'full list':>10} {'stopped':>9} {'killed':>8}   how")
    for r in results:
        print(f"{r.backend:<10} {r.registered:9.3f} {r.full_list:10.3f} {r.stopped:9.3f} {r.killed:8.3f}   "
              + "; ".join(r.notes))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4, help="discoveries per backend (default 4)")
    parser.add_argument("--backends", default="zookeeper,etcd,registry")
    parser.add_argument("--expiry", type=float, default=10.0,
                        help="ZooKeeper session timeout, etcd TTL, registry timeout, in seconds (default 10)")
    parser.add_argument("--per-session", type=int, default=50,
                        help="ZooKeeper nodes per session, etcd leases per connection set (default 50)")
    parser.add_argument("--concurrency", type=int, default=64, help="registrations in flight (default 64)")
    parser.add_argument("--deadline", type=float, default=60.0, help="bound on every wait, seconds")
    args = parser.parse_args(argv)
    results = []
    for name in args.backends.split(","):
        try:
            async with BACKENDS[name](args) as backend:
                print(f"{backend.name}: {args.servers} servers ...", flush=True)
                results.append(await measure(backend, args))
        except LookupError as exc:
            print(f"{name}: skipped ({exc})", flush=True)
        except TimeoutError:
            print(f"{name}: a wait passed its deadline of {args.deadline:g} s", flush=True)
            results.append(Result(name, args.servers, notes=["timed out"]))
    report(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
