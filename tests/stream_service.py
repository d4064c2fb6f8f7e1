"""A streaming server in its own process, for memory tests: prints its address, then serves
until stdin closes. ``Feed.gigabyte`` would yield 1 GiB in 1 MiB items."""

from __future__ import annotations

import asyncio
import sys

import geerpc

MIB = 1024 * 1024


class Feed:
    def __init__(self) -> None:
        self.produced = 0

    async def gigabyte(self):
        for _ in range(1024):
            self.produced += 1
            yield bytes(MIB)

    async def produced_count(self):
        return self.produced


async def main() -> None:
    server = geerpc.Server()
    server.register(Feed())
    print(await server.start("127.0.0.1", 0), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop(grace=0.5)


if __name__ == "__main__":
    asyncio.run(main())
