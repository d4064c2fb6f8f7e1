"""EtcdDiscovery: the server list read from etcd and kept current by a watch.

Layer: xclient, one of the discoveries. It reads the keys ``geerpc.registry.etcd`` writes
(``<prefix>/<address>`` -> JSON ``{"address", "services", "metadata"}``) and hands the
list to ``ServerList``, which does the selection. It relies on nothing of the XClient,
and talks to etcd's JSON gateway through ``geerpc.registry.etcd_client``.

Strategy: list the prefix, then watch it from the next revision, so that no change
between the two is missed. When the watch breaks (etcd stopped, a network fault),
list again and watch again, with back-off, trying the other endpoints. Meanwhile the
last list stays in force: a client keeps calling the servers it knows. An etcd that
comes back with its data wiped (as in a container without a volume) counts revisions
from 1 again: seen when a relisting is below what was applied (or by another cluster
id, or a Raft term gone back), its listing then replaces ours whatever its revision.
While the watch is quiet, etcd is asked for its status every ``_PROBE_EVERY`` seconds:
a member that vanished without closing the connection (a dead host, a partition) is
noticed within that, not when TCP gives up hours later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl as ssl_module
from typing import Final, Self

from ..address import parse_address
from ..backoff import Backoff, FailureLog
from ..errors import RegistryError
from ..registry.etcd_client import EtcdClients, EtcdEndpoint, cancel_and_wait, parse_etcd_url
from ..registry.etcd_gateway import Event, Listing
from .discovery import FirstList, ServerList

__all__ = ["FIRST_LIST_TIMEOUT", "EtcdDiscovery"]

logger = logging.getLogger("geerpc.xclient.etcd_discovery")

FIRST_LIST_TIMEOUT: Final = 3.0  # how long the first read waits for the first list
_STABLE_WATCH: Final = 5.0  # a watch that lived this long starts the back-off afresh
_PROBE_EVERY: Final = 10.0  # while watching, how often etcd must show it still answers

_Entry = tuple[str, frozenset[str] | None]  # address, services (None: not known)


class EtcdDiscovery(ServerList):
    """Servers registered in etcd under the URL's prefix, kept current by a watch.

    ``url`` is ``etcd[s]://[user[:password]@]host:port[,host:port...]/prefix[?ssl=1]``
    (a ``ttl`` in it is ignored here). The background task starts with the first
    ``get()``, ``get_all()`` or ``refresh()``; the first read waits up to
    ``first_list_timeout`` seconds for the first list, later reads never wait. Changes
    arrive as etcd reports them, well within a second. ``close()`` stops the task and
    closes the connections.

    ``ssl``, ``username`` and ``password`` are as for ``geerpc.registry.etcd.register``:
    an ``ssl.SSLContext`` (with the client certificate for ``--client-cert-auth``), and
    etcd's auth, winning over the URL's, the password else from ``GEERPC_ETCD_PASSWORD``.
    A wrong password or failing TLS shows in ``refresh()``'s ``RegistryError`` and in the
    log, and is retried with back-off like an outage.

    Raises ``ValueError`` for a malformed URL or credentials.
    """

    def __init__(self, url: str, *, first_list_timeout: float = FIRST_LIST_TIMEOUT,
                 seed: int | None = None, ssl: ssl_module.SSLContext | None = None,
                 username: str | None = None, password: str | None = None) -> None:
        self.url = parse_etcd_url(url)
        super().__init__(seed=seed)
        self._clients = EtcdClients.for_url(self.url, ssl=ssl, username=username, password=password)
        self._first = FirstList(first_list_timeout)
        self._entries: dict[bytes, _Entry] = {}
        self._skipped: dict[bytes, int] = {}  # bad keys already logged, with their revision
        # Revision of the listing in force: watch events up to it are already in it.
        self._listed_revision = 0
        # Newest revision applied, so that a slower listing never undoes newer events.
        self._applied_revision = 0
        # Whose revisions those are: an etcd whose data was wiped counts revisions from
        # 1 again. Its cluster id may be the same (it is derived from the member names
        # and URLs), but its Raft term starts over, and a term never goes back otherwise.
        self._cluster: tuple[int, int] | None = None  # cluster id, Raft term
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._trouble = FailureLog(every=60.0)  # warn at the first failure, then once a minute

    # ------------------------------------------------------------ Discovery interface

    async def refresh(self) -> None:
        """List the prefix now and apply it (also starts the watch).

        Raises ``RegistryError`` when no endpoint answers (the list is then unchanged)
        or once closed.
        """
        if self._closed:
            raise RegistryError("EtcdDiscovery is closed")
        self._start()
        self._apply_listing(await self._clients.call(self._list))

    async def close(self) -> None:
        """Stop the watch and close the connections to etcd; idempotent.

        The last list stays readable.
        """
        if self._closed:
            return
        self._closed = True
        task, self._task = self._task, None
        try:
            if task is not None:
                await cancel_and_wait(task)
        finally:
            await self._clients.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _ensure_fresh(self) -> None:
        self._start()
        await self._first.wait()  # etcd away: serve what there is (nothing yet) rather than hang

    def _describe(self) -> str:
        return (f"{len(self._servers)} server(s) in etcd at {self.url.describe()}{self.url.prefix}, "
                f"{self._first.describe()}")

    # ------------------------------------------------------------ background task

    def _start(self) -> None:
        if self._task is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._first.start(loop.time())
            self._task = loop.create_task(self._run(), name=f"geerpc etcd discovery {self.url.prefix}")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.1, 1.0)
        while True:
            started = loop.time()
            try:
                await self._list_and_watch()
                problem: BaseException = RegistryError("the etcd watch ended")
            except RegistryError as exc:  # no endpoint answered the listing
                problem = exc
            except Exception as exc:  # the watch broke; anything unexpected must not end the loop
                problem = RegistryError(f"the etcd watch broke ({type(exc).__name__}: {exc})")
                if not isinstance(exc, self._clients.failures):
                    logger.exception("etcd discovery failed unexpectedly")
            level = logging.WARNING if self._trouble.failed(loop.time()) else logging.DEBUG
            logger.log(level, "etcd discovery at %s: %s (failure %d, retrying)",
                       self.url.describe(), problem, self._trouble.failures)
            if loop.time() - started > _STABLE_WATCH:
                backoff.reset()
            await asyncio.sleep(backoff.next_delay())

    async def _list_and_watch(self) -> None:
        listing = await self._clients.call(self._list)
        self._apply_listing(listing, relisting=True)
        # The watch goes to the endpoint that answered the listing; a prober beside it
        # ends it when that endpoint stops answering.
        client = self._clients.client()
        watch = asyncio.create_task(self._watch(client, listing.header.revision + 1))
        probe = asyncio.create_task(self._probe(client))
        try:
            await asyncio.wait([watch, probe], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(probe)
            await cancel_and_wait(watch)
        failure = None if watch.cancelled() else watch.exception()
        if failure is not None:
            raise failure
        if probe.done() and not probe.cancelled():
            raise RegistryError(f"etcd at {self._clients.current_endpoint} stopped answering "
                                f"({probe.result()}); watching anew")

    async def _watch(self, client: EtcdEndpoint, start_revision: int) -> None:
        created = False
        async for events in client.watch_prefix(self.url.key_prefix, start_revision):
            if not created:  # only now: a listing alone does not keep us current
                created = True
                recovery = self._trouble.recovered(asyncio.get_running_loop().time())
                if recovery is not None:
                    logger.info("etcd discovery at %s: etcd answers again after %d failed attempt(s) in %.1f s",
                                self.url.describe(), recovery.failures, recovery.seconds)
            for event in events:
                self._apply_event(event)

    async def _probe(self, client: EtcdEndpoint) -> str:
        """Return (how it failed) once ``client`` stops answering."""
        while True:
            await asyncio.sleep(_PROBE_EVERY)
            try:
                async with asyncio.timeout(self._clients.call_timeout):
                    await client.status()
            except self._clients.failures as exc:
                return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__

    async def _list(self, client: EtcdEndpoint) -> Listing:
        return await client.get_prefix(self.url.key_prefix)

    # ------------------------------------------------------------ applying changes

    def _apply_listing(self, listing: Listing, *, relisting: bool = False) -> None:
        """Apply a listing. ``relisting``: taken while no watch runs, so that nothing
        newer can have been applied from the same etcd since it was read."""
        header = listing.header
        revision, cluster = header.revision, (header.cluster_id, header.raft_term)
        # A linearizable read returns etcd's current revision, so a relisting below what
        # we applied, another cluster id, or a Raft term gone back means etcd started
        # over (its data wiped, as in a container without a volume).
        if self._cluster is not None and (cluster[0] != self._cluster[0] or cluster[1] < self._cluster[1]
                                          or (relisting and revision < self._applied_revision)):
            logger.warning("etcd at %s started over (revision %d, we had applied %d: its data was reset?); "
                           "taking its list afresh", self.url.describe(), revision, self._applied_revision)
            self._applied_revision = 0  # the old revisions mean nothing here
        self._cluster = cluster
        if revision < self._applied_revision:
            return  # a listing older than events already applied
        entries: dict[bytes, _Entry] = {}
        for kv in listing.kvs:
            entry = self._parse(kv.key, kv.value, kv.mod_revision)
            if entry is not None:
                entries[kv.key] = entry
        self._entries = entries
        self._listed_revision = self._applied_revision = revision
        self._publish()
        self._first.listed.set()

    def _apply_event(self, event: Event) -> None:
        kv = event.kv
        if kv.mod_revision <= self._listed_revision:
            return
        entry = None if event.kind == "DELETE" else self._parse(kv.key, kv.value, kv.mod_revision)
        if entry is None:  # deleted, or overwritten by something we cannot use
            self._entries.pop(kv.key, None)
            if event.kind == "DELETE":
                self._skipped.pop(kv.key, None)
        else:
            self._entries[kv.key] = entry
        self._applied_revision = max(self._applied_revision, kv.mod_revision)
        self._publish()

    def _publish(self) -> None:
        servers: dict[str, frozenset[str] | None] = {}
        for address, services in self._entries.values():
            if address in servers:  # two keys naming one address: it offers both sets
                known = servers[address]
                services = None if known is None or services is None else known | services
            servers[address] = services
        self.update(servers)

    def _parse(self, key: bytes, value: bytes, revision: int) -> _Entry | None:
        """A key's value as (address, services), or None (logged once) when unusable."""
        try:
            data = json.loads(value)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            address = data.get("address")
            if not isinstance(address, str):
                raise ValueError("no address")
            parse_address(address)
            services = data.get("services")
            if services is not None and (
                    not isinstance(services, list) or not all(isinstance(s, str) for s in services)):
                raise ValueError("services is not a list of names")
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
            if self._skipped.get(key) != revision:
                self._skipped[key] = revision
                logger.warning("skipping etcd key %r: %s", key.decode(errors="replace"), exc)
            return None
        self._skipped.pop(key, None)
        return address, None if services is None else frozenset(services)
