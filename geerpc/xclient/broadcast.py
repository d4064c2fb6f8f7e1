"""A broadcast's fan-out: one call to each of the servers found, at once.

Layer: under ``XClient.broadcast`` (which finds the servers), over ``pool.Connections``.
GeeRPC's ``XClient.Broadcast``: the first error cancels the other calls (the
cancellation reaches their servers) and is raised; otherwise one successful reply is
returned. A server found not to be a geerpc server (its handshake fails) is skipped
and has no say. Ejection and selection play no part: every server is called.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ..deadline import Deadline
from ..errors import CallTimeout, ConnectionClosed, HandshakeError, NoServerAvailable
from .attempts import cancel_and_wait
from .pool import Connections

__all__ = ["call_all"]

_SKIPPED: Final = object()  # a broadcast's answer from a server found not to be a geerpc server


async def call_all(pool: Connections, servers: Sequence[str], deadline: Deadline | None, service_method: str,
                   args: Sequence[Any], kwargs: dict[str, Any], metadata: Mapping[str, str | bytes] | None,
                   none_left: Callable[[], NoServerAvailable]) -> Any:
    """Call ``service_method`` on every one of ``servers`` within ``deadline``.

    Returns one successful reply; raises the first error, CallTimeout at the
    deadline, or ``none_left()`` when every server turned out not to be a geerpc one.
    """
    loop = asyncio.get_running_loop()

    async def one(address: str) -> Any:
        try:
            client = await pool.get(address)
        except HandshakeError as exc:
            pool.skip(address, exc)  # not a geerpc server: it has no say in the broadcast
            return _SKIPPED
        try:
            return await pool.call_on(address, client, deadline, service_method, args, kwargs, metadata)
        except ConnectionClosed:
            pool.forget(address, client)
            raise

    def expired() -> CallTimeout:
        assert deadline is not None
        return deadline.expired_error(f"broadcast of {service_method}", f"on {len(servers)} servers")

    tasks = [asyncio.ensure_future(one(address)) for address in servers]
    error: BaseException | None = None
    try:
        result, error = await _settled(tasks, deadline, loop, expired)
        if error is not None:
            raise error
        if result is _SKIPPED:
            raise none_left()
        return result
    finally:
        await cancel_and_wait(tasks)
        # The error raised has this frame in its traceback, and the tasks and ``error``
        # hold the error: both go, or every failed broadcast is a reference cycle.
        tasks.clear()
        error = None


async def _settled(tasks: list[asyncio.Task[Any]], deadline: Deadline | None, loop: asyncio.AbstractEventLoop,
                   expired: Callable[[], CallTimeout]) -> tuple[Any, BaseException | None]:
    """Wait for the calls: (one reply, None), ``_SKIPPED`` for the reply when every
    server was skipped, or (None, the error to raise): the first error, or
    ``expired()`` at the deadline. It returns the error rather than raising it, so
    that its frame, which holds the tasks, is not in the error's traceback."""
    pending: set[asyncio.Task[Any]] = set(tasks)
    result: Any = _SKIPPED
    while pending:
        left = None if deadline is None else max(0.0, deadline.left(loop.time()))
        done, pending = await asyncio.wait(pending, timeout=left, return_when=asyncio.FIRST_EXCEPTION)
        out_of_time = not done
        for task in done:
            if task.cancelled():  # only close() cancels these from outside
                return None, ConnectionClosed("XClient closed during the broadcast")
            error = task.exception()
            if isinstance(error, CallTimeout) and deadline is not None and deadline.expired(loop.time()):
                out_of_time = True  # the broadcast's own deadline; a real error beside it comes first
            elif error is not None:
                return None, error
            elif task.result() is not _SKIPPED:
                result = task.result()
        if out_of_time:
            return None, expired()
    return result, None
