"""What a collection would free: the checks that what a test did left no reference cycle.

Run the work with the cyclic collector off (``gc.disable()``), then ask ``garbage``
what a collection finds. Objects alive before the work (``alive``) are left out: what
an earlier test left may become garbage meanwhile, and is not this test's. They are
held, so that no new object takes the address of one of them.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable


def geerpcs(o: object) -> bool:
    """Instances of geerpc's classes, and frames of its functions (an error's traceback keeps those)."""
    module = type(o).__module__  # not always a str: some types' is a descriptor
    return (isinstance(module, str) and module.startswith("geerpc")) or (
        type(o).__name__ == "frame" and "/geerpc/" in o.f_code.co_filename)  # type: ignore[attr-defined]


def transports(o: object) -> bool:
    """asyncio's transports (aiohttp's connections have no object of geerpc's)."""
    return isinstance(o, asyncio.BaseTransport)


def alive(kind: Callable[[object], bool] = geerpcs) -> list[object]:
    """The objects of ``kind`` alive now."""
    return [o for o in gc.get_objects() if kind(o)]


def garbage(old: list[object], kind: Callable[[object], bool] = geerpcs) -> list[str]:
    """Collect, and describe the unreachable objects of ``kind`` that are not in ``old``."""
    earlier = {id(o) for o in old}
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = []
        for o in gc.garbage:
            if id(o) in earlier or not kind(o):
                continue
            found.append(f"frame of {o.f_code.co_name}" if type(o).__name__ == "frame"  # type: ignore[attr-defined]
                         else repr(o) if kind is transports else type(o).__qualname__)
        return found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def leaves_no_garbage(work: Callable[[], Awaitable[None]], kind: Callable[[object], bool] = geerpcs,
                            settled: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run ``work()`` once (first-time imports and caches), then three times with the
    collector off: nothing of ``kind`` may be left as cyclic garbage. ``settled``, if
    given, is awaited before the check, still with the collector off: for work that
    ends after ``work()`` returns (a timed-out ``def`` call on its worker)."""
    await work()
    gc.collect()
    gc.disable()
    old = alive(kind)
    try:
        for _ in range(3):
            await work()
        if settled is not None:
            await settled()
        left = garbage(old, kind)
        assert left == [], left
    finally:
        gc.enable()
