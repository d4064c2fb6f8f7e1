"""geerpc in one run: a registry, three servers, calls, a stream, broadcasts and a server leaving.

    python demo.py

Everything listens on 127.0.0.1 and stops by itself within a few seconds.
"""

from __future__ import annotations

import asyncio
import collections
import logging

import geerpc
from geerpc.registry import Registry
from geerpc.xclient import RegistryDiscovery, SelectMode, XClient


class Arith:
    """The service every server offers. ``delay`` makes one server slow."""

    def __init__(self, name: str, delay: float = 0.0) -> None:
        self.name = name
        self.delay = delay

    async def add(self, a: int, b: int) -> int:
        return a + b

    async def whoami(self) -> str:
        return self.name

    async def slow_add(self, a: int, b: int) -> dict[str, object]:
        await asyncio.sleep(self.delay)
        return {"server": self.name, "sum": a + b}

    async def countdown(self, n: int):  # a generator method streams
        for i in range(n, 0, -1):
            yield f"{self.name}: {i}"


def title(text: str) -> None:
    print(f"\n== {text}")


async def main() -> None:
    registry = Registry(timeout=30)
    url = await registry.start("127.0.0.1", 0)
    print(f"registry listening at {url}")

    servers: dict[str, geerpc.Server] = {}
    for name, delay in (("alpha", 0.01), ("beta", 0.02), ("gamma", 2.0)):
        server = geerpc.Server()
        server.register(Arith(name, delay))
        address = await server.start("127.0.0.1", 0, registry=url)
        servers[name] = server
        print(f"server {name:5} at {address}, registered (slow_add takes {delay:g} s)")

    discovery = RegistryDiscovery(url, update_interval=10)
    try:
        for mode in (SelectMode.RANDOM, SelectMode.ROUND_ROBIN):
            async with XClient(discovery, mode, close_discovery=False) as xc:
                title(f"12 calls with SelectMode.{mode.name}")
                answered = [await xc.call("Arith.whoami", timeout=2) for _ in range(12)]
                print("  answered by:", " ".join(answered))
                print("  per server: ", dict(sorted(collections.Counter(answered).items())))

        async with XClient(discovery, SelectMode.ROUND_ROBIN, close_discovery=False) as xc:
            title("call Arith.add(1, 2)")
            print("  result:", await xc.call("Arith.add", 1, 2, timeout=2))

            title("stream Arith.countdown(3) from one server")
            print("  items:", [item async for item in xc.stream("Arith.countdown", 3, timeout=2)])

            title("broadcast Arith.add(3, 4) to every server")
            print("  one reply:", await xc.broadcast("Arith.add", 3, 4, timeout=2))

            title("broadcast Arith.slow_add(5, 6) with timeout=0.5 s (gamma takes 2 s)")
            loop = asyncio.get_running_loop()
            start = loop.time()
            try:
                await xc.broadcast("Arith.slow_add", 5, 6, timeout=0.5)
            except geerpc.CallTimeout as exc:
                print(f"  CallTimeout after {loop.time() - start:.2f} s: {exc}")

            title("server beta stops: it deregisters at once, clients carry on")
            beta = servers.pop("beta")
            await beta.stop(grace=1.0)
            deadline = loop.time() + 2  # the registry's watch tells the discovery at once
            while beta.address in await discovery.get_all():
                if loop.time() > deadline:
                    raise RuntimeError("beta is still listed")
                await asyncio.sleep(0.02)
            names = {server.address: name for name, server in servers.items()}
            print("  registry now lists:", ", ".join(f"{names[a]} ({a})" for a in await discovery.get_all()))
            answered = [await xc.call("Arith.whoami", timeout=2) for _ in range(6)]
            print("  6 calls answered by:", " ".join(answered))

            title("call an unknown method")
            try:
                await xc.call("Arith.divide", 1, 0, timeout=2)
            except geerpc.RemoteError as exc:
                print(f"  {type(exc).__name__}: {exc}")

            title("call with the wrong arguments")
            try:
                await xc.call("Arith.add", 1, timeout=2)
            except geerpc.RemoteError as exc:
                print(f"  {type(exc).__name__}: {exc}")
    finally:
        await discovery.close()
        for server in servers.values():
            await server.stop(grace=0.5)
        await registry.stop()
    print("\ndone: every server and the registry stopped")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main())
