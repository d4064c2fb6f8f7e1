"""geerpc and the bare asyncio + msgpack baseline, exactly as bench_rpc.py runs them."""

from __future__ import annotations

import asyncio

import bench_rpc

from . import workloads


class _Ours:
    NEEDS: tuple[str, ...] = ()
    HOW = "one connection, 64 tasks"

    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.NAME = kind, name

    def serve(self) -> None:
        asyncio.run(bench_rpc.serve(self.kind))

    def run(self, address: str, sizes: workloads.Sizes) -> dict[str, float]:
        return asyncio.run(self._run(address, sizes))

    async def _run(self, address: str, sizes: workloads.Sizes) -> dict[str, float]:
        client = await bench_rpc.connect(self.kind, address)
        try:
            return await workloads.run_async(bench_rpc.method(self.kind, client, "add"),
                                             bench_rpc.method(self.kind, client, "echo"), sizes)
        finally:
            if self.kind == "geerpc":
                await client.close()
            else:
                client.transport.close()


baseline = _Ours("baseline", "bare asyncio + msgpack")
geerpc = _Ours("geerpc", "geerpc")
