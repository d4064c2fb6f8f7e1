"""ZooKeeperDiscovery: the server list read from ZooKeeper's nodes, kept current by watches.

Layer: xclient, one of the discoveries. It reads the nodes ``geerpc.registry.zookeeper``
writes (``<path>/<address>`` -> JSON ``{"address", "services", "metadata"}``) and hands
the list to ``ServerList``, which does the selection. It talks to ZooKeeper through
``geerpc.registry.zk_client`` and relies on nothing of the XClient.

Strategy: read the children of the path with a watch on them, and each child's data
with a watch on it; a watch that fires marks what to read again (the children, or one
child), and a reader task reads only that. ZooKeeper's watches fire once, so every read
sets its watch anew. When the connection comes back (the same session after a
ZooKeeper restart, or a new one after the old expired, whose watches are gone), read
everything again. While ZooKeeper is away the last list stays in force, and nothing is
retried until kazoo, reconnecting with back-off, reports a connection: nothing spins.
A path that does not exist yet lists no server, and an ``exists`` watch on it says
when it appears.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Final, Self

from ..address import parse_address
from ..backoff import Backoff, FailureLog
from ..errors import RegistryError
from ..registry.zk_client import NoNode, ZkSession, ZkUnavailable, parse_zk_url
from .discovery import FirstList, ServerList

__all__ = ["FIRST_LIST_TIMEOUT", "ZooKeeperDiscovery"]

logger = logging.getLogger("geerpc.xclient.zookeeper_discovery")

FIRST_LIST_TIMEOUT: Final = 3.0  # how long the first read waits for the first list
_READS_AT_ONCE: Final = 256  # data reads in flight together, on a path of thousands of servers

_Entry = tuple[str, frozenset[str] | None]  # address, services (None: not known)


class ZooKeeperDiscovery(ServerList):
    """Servers registered in ZooKeeper under the URL's path, kept current by watches.

    ``url`` is ``zk://host:port[,host:port...]/path`` (a ``session_timeout`` in it sets
    this client's session). The session and the reader task start with the first
    ``get()``, ``get_all()`` or ``refresh()``; the first read waits up to
    ``first_list_timeout`` seconds for the first list, later reads never wait. Changes
    arrive as ZooKeeper reports them, well within a second. ``close()`` ends the session.

    Raises ``ValueError`` for a malformed URL.
    """

    def __init__(self, url: str, *, first_list_timeout: float = FIRST_LIST_TIMEOUT,
                 seed: int | None = None) -> None:
        self.url = parse_zk_url(url)
        super().__init__(seed=seed)
        self._first = FirstList(first_list_timeout)
        self._session: ZkSession | None = None
        self._entries: dict[str, _Entry] = {}  # node name -> what it says
        self._skipped: dict[str, int] = {}  # bad nodes already logged, with the zxid of their value
        self._children_dirty = True
        self._dirty: set[str] = set()  # nodes whose data is to be read again
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._trouble = FailureLog(every=60.0)  # warn at the first failure, then once a minute

    # ------------------------------------------------------------ Discovery interface

    async def refresh(self) -> None:
        """Read the whole path now and apply it (also starts the watches).

        Raises ``RegistryError`` when ZooKeeper does not answer (the list is then
        unchanged) or once closed.
        """
        if self._closed:
            raise RegistryError("ZooKeeperDiscovery is closed")
        session = self._start()
        if not session.connected and not await session.wait_connected(self._first.timeout):
            raise ZkUnavailable(f"ZooKeeper at {self.url.describe()} did not answer "
                                f"within {self._first.timeout:g} s")
        self._children_dirty = True
        self._dirty.update(self._entries, self._skipped)
        await self._read()

    async def close(self) -> None:
        """Stop the reader and end the session; idempotent. The last list stays readable."""
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _ensure_fresh(self) -> None:
        if self._closed:
            return
        self._start()
        await self._first.wait()  # ZooKeeper away: serve what there is (nothing yet) rather than hang

    def _describe(self) -> str:
        return (f"{len(self._servers)} server(s) in ZooKeeper at {self.url.describe()}{self.url.path}, "
                f"{self._first.describe()}")

    # ------------------------------------------------------------ background task

    def _start(self) -> ZkSession:
        if self._session is None:
            loop = asyncio.get_running_loop()
            self._session = session = ZkSession(self.url)
            self._children_watch = session.watcher(self._children_event)
            self._data_watch = session.watcher(self._data_event)
            session.on_change(self._reconnected)
            session.start()
            self._first.start(loop.time())
            self._task = loop.create_task(self._run(), name=f"geerpc ZooKeeper discovery {self.url.path}")
        return self._session

    def _reconnected(self) -> None:
        # Connected again: the same session (watches kept, but changes may have been
        # missed in between) or a new one (watches gone). Read everything again.
        assert self._session is not None
        if self._session.connected:
            self._children_dirty = True
            self._dirty.update(self._entries, self._skipped)
            self._wake.set()

    def _children_event(self, kind: str, path: str) -> None:
        self._children_dirty = True
        self._wake.set()

    def _data_event(self, kind: str, path: str) -> None:
        name = path.rpartition("/")[2]
        if name in self._entries or kind == "CHANGED":
            self._dirty.add(name)
            self._wake.set()

    async def _run(self) -> None:
        assert self._session is not None
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.1, 2.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._session.connected:
                continue  # the next connection wakes us
            try:
                await self._read()
            except Exception as exc:  # ZkUnavailable; anything unexpected must not end the loop
                if not isinstance(exc, ZkUnavailable):
                    logger.exception("ZooKeeper discovery failed unexpectedly")
                level = logging.WARNING if self._trouble.failed(loop.time()) else logging.DEBUG
                logger.log(level, "ZooKeeper discovery at %s: %s (failure %d, retrying)",
                           self.url.describe(), exc, self._trouble.failures)
                await asyncio.sleep(backoff.next_delay())
                self._wake.set()
                continue
            recovery = self._trouble.recovered(loop.time())
            if recovery is not None:
                logger.info("ZooKeeper discovery at %s: ZooKeeper answers again after %d failed attempt(s) "
                            "in %.1f s", self.url.describe(), recovery.failures, recovery.seconds)
            backoff.reset()

    async def _read(self) -> None:
        """Read what the watches marked: the children, then the data of the marked nodes."""
        assert self._session is not None
        session = self._session
        if self._children_dirty:
            self._children_dirty = False
            try:
                names = set(await session.get_children(self.url.path, watch=self._children_watch))
            except NoNode:  # no server registered yet: wait for the path to appear
                names = set()
                if await session.exists(self.url.path, watch=self._children_watch) is not None:
                    self._children_dirty = True  # created just now: list it
                    self._wake.set()
            except BaseException:
                self._children_dirty = True
                raise
            for gone in set(self._entries) - names:
                del self._entries[gone]
                self._skipped.pop(gone, None)
            self._dirty = {name for name in self._dirty if name in names}
            self._dirty.update(names - set(self._entries) - set(self._skipped))
        dirty, self._dirty = self._dirty, set()
        try:
            gate = asyncio.Semaphore(_READS_AT_ONCE)
            await asyncio.gather(*(self._read_node(name, gate) for name in dirty))
        except BaseException:
            self._dirty |= dirty
            raise
        self._publish()
        self._first.listed.set()

    async def _read_node(self, name: str, gate: asyncio.Semaphore) -> None:
        assert self._session is not None
        async with gate:
            try:
                value, stat = await self._session.get(f"{self.url.path}/{name}", watch=self._data_watch)
            except NoNode:  # gone since the listing; the children watch tells us too
                self._entries.pop(name, None)
                self._skipped.pop(name, None)
                return
        entry = self._parse(name, value, stat.mzxid)
        if entry is None:
            self._entries.pop(name, None)
        else:
            self._entries[name] = entry

    def _publish(self) -> None:
        servers: dict[str, frozenset[str] | None] = {}
        for address, services in self._entries.values():
            if address in servers:  # two nodes naming one address: it offers both sets
                known = servers[address]
                services = None if known is None or services is None else known | services
            servers[address] = services
        self.update(servers)

    def _parse(self, name: str, value: bytes, zxid: int) -> _Entry | None:
        """A node's value as (address, services), or None (logged once) when unusable."""
        try:
            data = json.loads(value)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")  # noqa: TRY004 - caught below
            address = data.get("address")
            if not isinstance(address, str):
                raise ValueError("no address")  # noqa: TRY004
            parse_address(address)
            services = data.get("services")
            if services is not None and (
                    not isinstance(services, list) or not all(isinstance(s, str) for s in services)):
                raise ValueError("services is not a list of names")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            if self._skipped.get(name) != zxid:
                self._skipped[name] = zxid
                logger.warning("skipping ZooKeeper node %s/%s: %s", self.url.path, name, exc)
            return None
        self._skipped.pop(name, None)
        return address, None if services is None else frozenset(services)
