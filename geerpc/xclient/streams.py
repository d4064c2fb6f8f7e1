"""An XClient's streams: one server chosen as for a call, failover only before the first item.

Once an item has arrived the consumer has seen part of that server's stream, so a
failure after it is the consumer's to see (another server would start over). Before
it, a server that cannot be reached, that lost the connection, or that is stopping
(``Unavailable``) is left for the next one, as ``XClient.call`` does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

from ..client import Client
from ..deadline import Deadline
from ..errors import CallTimeout
from ..interceptors import ClientInterceptor
from ..stream import DEFAULT_WINDOW_BYTES, DEFAULT_WINDOW_ITEMS, Stream

#: ``XClient._pick``: (service, service_method, tried, last error) -> the server to use
Pick = Callable[[str | None, str, set[str], BaseException | None], Awaitable[str]]

__all__ = ["stream"]


async def stream(pick: Pick, connect: Callable[[str], Awaitable[Client]],
                 failed_over: Callable[[str, Client | None, BaseException, str], bool],
                 interceptors: tuple[ClientInterceptor, ...], deadline: Deadline | None, service_method: str,
                 args: Sequence[Any], kwargs: dict[str, Any], metadata: Mapping[str, str | bytes] | None,
                 failover_errors: tuple[type[BaseException], ...],
                 window_items: int = DEFAULT_WINDOW_ITEMS,
                 window_bytes: int = DEFAULT_WINDOW_BYTES) -> AsyncGenerator[Any, None]:
    """The items of ``service_method``'s stream from one server (see ``XClient.stream``):
    chosen by ``pick``, dialled by ``connect``; ``failed_over`` says whether a
    failure moves on to another server."""
    at = None if deadline is None else deadline.at
    service = service_method.rpartition(".")[0] or None
    tried: set[str] = set()
    last_error: BaseException | None = None
    try:
        while True:
            try:
                async with asyncio.timeout_at(at):
                    address = await pick(service, service_method, tried, last_error)
            except TimeoutError as exc:
                if isinstance(exc, CallTimeout) or deadline is None:
                    raise
                raise deadline.expired_error(service_method, "finding a server") from None
            tried.add(address)
            client = None
            try:
                async with asyncio.timeout_at(at):
                    client = await connect(address)
                items = Stream(client, service_method, args, kwargs, deadline, metadata, window_items, window_bytes,
                               interceptors)
                try:
                    first = await items.__anext__()
                except StopAsyncIteration:
                    return
                except BaseException:
                    await items.aclose()
                    raise
                break
            except failover_errors as exc:
                if not failed_over(address, client, exc, service_method):
                    raise
                last_error = exc
            except TimeoutError as exc:
                if isinstance(exc, CallTimeout) or deadline is None:
                    raise
                raise deadline.expired_error(service_method, f"dialing {address}") from None
    finally:
        # A failover's error was caught in this frame, so its traceback holds the
        # frame: kept in a name of it, it would make every failover a reference cycle.
        last_error = None
    try:
        yield first
        async for item in items:
            yield item
    finally:
        await items.aclose()
