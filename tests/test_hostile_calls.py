"""Hostile calls against a real server on 127.0.0.1: what a cancelled, hung-up or
odd request leaves behind, and odd Option values (HOSTILE.md rows 38 and 43).

Each test checks the reply or the close expected, then that the server still serves.
Nothing here sleeps to wait for something to happen (see ``conftest.eventually``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import tracemalloc

import pytest
from _raw import Raw, assert_serving, option, raw_connection, request, serving
from conftest import Arith, eventually

from geerpc import protocol as p

BLOB = 8 * 1024 * 1024


class Holder:
    """A handler that holds its (large) argument until it is cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()

    async def hold(self, blob):
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return len(blob)


def _traced() -> int:
    return tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize("how", ["cancel", "eof"])
@pytest.mark.parametrize("timeout", [None, 30.0])
async def test_cancelled_call_frees_its_arguments_without_the_cyclic_gc(how, timeout):
    """Row 38. The check: with the cyclic GC disabled, the memory tracemalloc traces
    must fall back below the level before the call once the handler is cancelled.
    An 8 MiB argument dwarfs everything else a call allocates, and freed by reference
    counting alone it is gone the moment the task is; kept by a reference cycle
    (task -> CancelledError -> traceback -> frame -> task) it would stay until a
    ``gc.collect()`` that never comes. The request frame is built before tracing
    starts, so only what the server allocates is counted."""
    holder = Holder()
    async with serving(Arith(), holder) as server:
        frame = request(1, "Holder.hold", b"x" * BLOB, timeout=timeout)
        gc.collect()
        gc.disable()
        tracemalloc.start()
        try:
            raw = await Raw.handshake(server.address)
            try:
                base = _traced()
                await raw.send(frame)
                async with asyncio.timeout(5):
                    await holder.started.wait()
                assert _traced() > base + BLOB  # the argument is resident while the call runs
                if how == "cancel":
                    await raw.send(p.encode_cancel(1))
                else:
                    raw.writer.write_eof()
                async with asyncio.timeout(5):
                    await holder.cancelled.wait()
                await eventually(lambda: _traced() < base + BLOB // 2, what="the argument freed")
            finally:
                await raw.close()
        finally:
            tracemalloc.stop()
            gc.enable()
        await assert_serving(server)
