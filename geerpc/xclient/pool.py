"""An XClient's connections: one Client per server address, dials shared.

Layer: under ``xclient.py`` (and its broadcast), over ``geerpc.client``. Concurrent
callers that need the same server await one dial task, and no lock is ever held
across a dial or a call (GeeRPC's XClient dials while holding its mutex).

A server whose handshake fails (it took the connection but is not a geerpc server,
such as a GeeRPC Go server sharing the registry: it speaks gob) is skipped by calls
and broadcasts for ``SKIP_PERIOD`` seconds, and logged once at WARNING per period;
``selection.Skipped`` keeps that table.

After ``TIMEOUTS_TO_REDIAL`` calls in a row time out on one server's connection, it
is closed once no other call is pending on it, and the next call dials afresh: a
connection can be stuck while the server is not (the client's keepalive pings catch
a peer that answers nothing at all).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from ssl import SSLContext
from typing import Any, Final

from ..client import Client, dial
from ..deadline import Deadline
from ..errors import CallTimeout, ConnectionClosed, HandshakeError
from ..interceptors import ClientInterceptor
from .selection import Skipped

__all__ = ["SKIP_PERIOD", "TIMEOUTS_TO_REDIAL", "Connections"]

log = logging.getLogger("geerpc.xclient")

# Seconds a server whose handshake failed is left out of picks and broadcasts.
SKIP_PERIOD: Final = 30.0
TIMEOUTS_TO_REDIAL: Final = 3  # CallTimeouts in a row on one connection before it is dialed afresh


class Connections:
    """The connections of one XClient, by server address, with the servers it skips.

    ``clients`` and ``dials`` are read by the XClient (and its tests); only this
    class changes them.
    """

    def __init__(self, *, connect_timeout: float | None, ssl: SSLContext | None, token: str | None,
                 insecure_token: bool, interceptors: tuple[ClientInterceptor, ...]) -> None:
        self.connect_timeout = connect_timeout
        self.interceptors = interceptors
        self._ssl, self._token, self._insecure_token = ssl, token, insecure_token
        self.clients: dict[str, Client] = {}
        self.dials: dict[str, asyncio.Task[Client]] = {}
        self.skipped = Skipped(SKIP_PERIOD)
        self.closed = False
        self._closing: set[asyncio.Task[None]] = set()
        self._timeouts: dict[str, int] = {}  # address -> CallTimeouts in a row on its connection

    async def get(self, address: str) -> Client:
        """The connection to ``address``, dialed if there is none (one dial for all callers)."""
        client = self.clients.get(address)
        if client is not None:
            if not client.closed:
                return client
            del self.clients[address]
        task = self.dials.get(address)
        if task is None:
            task = asyncio.ensure_future(self._dial(address))
            self.dials[address] = task
        # shield: one caller giving up must not cancel a dial others are waiting for
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # close() cancelled the dial, not anyone who called us
                raise ConnectionClosed("XClient closed while dialing") from None
            raise
        finally:
            del task  # a failed dial holds its error, whose traceback holds this frame: a cycle

    async def _dial(self, address: str) -> Client:
        try:
            client = await dial(address, connect_timeout=self.connect_timeout, token=self._token,
                                insecure_token=self._insecure_token,
                                ssl=self._ssl if address.startswith("tls@") else None)
        finally:
            self.dials.pop(address, None)
        if self.closed:
            await client.close()
            raise ConnectionClosed("XClient closed while dialing")
        self.clients[address] = client
        return client

    def skip(self, address: str, error: HandshakeError) -> None:
        """Leave ``address`` out of picks for a while: it is not a geerpc server."""
        if self.skipped.add(address, str(error), asyncio.get_running_loop().time()):
            log.warning("skipping %s for %g s: %s", address, self.skipped.period, error)

    def _timed_out(self, address: str, client: Client) -> None:
        """A call on ``address`` timed out: after several in a row, drop its connection.

        A server that answers nothing in time may sit behind a connection that is
        stuck; the next call dials afresh. A connection with other calls pending is
        kept until a timeout finds it idle.
        """
        count = self._timeouts.get(address, 0) + 1
        self._timeouts[address] = count
        if count >= TIMEOUTS_TO_REDIAL and not client.pending and self.clients.get(address) is client:
            log.info("%s: %d calls in a row timed out; dialing it afresh next time", address, count)
            del self._timeouts[address]
            self.forget(address, client)

    async def call_on(self, address: str, client: Client, deadline: Deadline | None, service_method: str,
                      args: Any, kwargs: dict[str, Any], metadata: Mapping[str, str | bytes] | None = None,
                      full: bool = False) -> Any:
        """One call on one server's connection, counting its timeouts in a row.

        Through the interceptors, when there are any, and as a ``Reply`` when ``full``.
        """
        try:
            if full or metadata is not None or self.interceptors:
                reply = await client.invoke_until(deadline, service_method, args, kwargs, metadata,
                                                  interceptors=self.interceptors)
                result = reply if full else reply.result
            else:
                result = await client.call_until(deadline, service_method, args, kwargs)
        except CallTimeout:
            self._timed_out(address, client)
            raise
        if self._timeouts:
            self._timeouts.pop(address, None)
        return result

    def forget(self, address: str, client: Client | None) -> None:
        """Close ``client`` (in the background) if it is still the connection to ``address``."""
        if client is not None and self.clients.get(address) is client:
            del self.clients[address]
            task = asyncio.ensure_future(client.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def keep_only(self, listed: Collection[str]) -> None:
        """Close the idle connections to servers not in ``listed``."""
        for address, client in list(self.clients.items()):
            if address not in listed and not client.pending:
                self.forget(address, client)

    async def close(self) -> None:
        """Cancel the dials and close every connection. Idempotent."""
        self.closed = True
        dials = list(self.dials.values())
        for task in dials:
            task.cancel()
        await asyncio.gather(*dials, return_exceptions=True)
        clients = list(self.clients.values())
        self.clients.clear()
        await asyncio.gather(*(c.close() for c in clients), *self._closing, return_exceptions=True)
