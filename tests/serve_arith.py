"""A server in its own process, for tests that kill or stop it: prints its address.

Usage: python serve_arith.py [REGISTRY_URL]
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import geerpc


class Arith:
    async def add(self, a, b):
        return a + b

    async def sleep(self, seconds):
        await asyncio.sleep(seconds)
        return seconds

    def block(self, seconds):
        time.sleep(seconds)
        return seconds

    async def whoami(self):
        return SERVER.address


SERVER = geerpc.Server()


async def main() -> None:
    SERVER.register(Arith())
    registry = sys.argv[1] if len(sys.argv) > 1 else None
    address = await SERVER.start("127.0.0.1", 0, registry=registry)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(SERVER.stop(grace=1.0)))
    print(address, flush=True)
    await SERVER.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
