"""ZooKeeper as the registry: one ephemeral node per server, alive with its session.

Layer: registry, the ZooKeeper backend. A server creates one ephemeral node,
``<path>/<address>`` (the address %-escaped, see ``zk_client.node_name``), holding JSON
``{"address", "services", "metadata"}``, the same value as etcd's key. ZooKeeper deletes
it when the server's session ends: at once on ``stop()``, or when a dead server's session
expires. ``geerpc.xclient.zookeeper_discovery`` reads the same nodes; ``zk_client`` holds
the URL parsing and the kazoo session both use.

Strategy: a keeper task waits for the session to change state, and whenever it is
connected with a session in which our node was not yet seen, makes sure the node is
there: after ZooKeeper restarted (the same session, the node kept) that is one
look-up; after the session expired (a new one, the node gone) it creates the node
again. A watch on the node wakes the keeper too, should someone delete it by hand. A
node of ours still held by our own dead session (a server restarted on the same
address faster than its old session expired) is replaced.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from typing import Any, Self

from ..address import parse_address
from ..backoff import Backoff, FailureLog
from ..errors import RegistryError
from .zk_client import (
    DEFAULT_PATH,
    DEFAULT_PORT,
    DEFAULT_SESSION_TIMEOUT,
    REGISTER_TIMEOUT,
    STOP_TIMEOUT,
    NodeExists,
    NoNode,
    ZkSession,
    ZkUnavailable,
    ZkURL,
    parse_zk_url,
)

__all__ = ["DEFAULT_PATH", "DEFAULT_PORT", "DEFAULT_SESSION_TIMEOUT", "ZkURL", "ZooKeeperRegistration",
           "parse_zk_url", "register"]

logger = logging.getLogger("geerpc.registry.zookeeper")


class ZooKeeperRegistration:
    """A server's ephemeral node in ZooKeeper, kept until ``stop()``.

    Made by ``register()``. Survives ZooKeeper restarts and lost sessions with no help:
    kazoo reconnects (with back-off) and, when the session expired meanwhile, opens a new
    one, in which the node is created again. Also an async context manager that stops
    on exit.
    """

    def __init__(self, url: ZkURL, address: str, value: bytes, session: ZkSession) -> None:
        self.url = url
        self.address = address
        self.node = url.node(address)
        self._value = value
        self._session = session
        self._wake = asyncio.Event()
        self._seen_in = 0  # the session in which our node was last confirmed
        self._recheck = False  # a watch said the node went: confirm it again, whatever _seen_in says
        self.registrations = 0  # times the node was created (1 + re-registrations)
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._trouble = FailureLog(every=60.0)  # warn at the first failure, then once a minute
        self._watch = session.watcher(self._node_event)
        session.on_change(self._wake.set)

    @property
    def session_id(self) -> int:
        """The ZooKeeper session in which the node was last confirmed (0 before the first)."""
        return self._seen_in

    @property
    def running(self) -> bool:
        """True until ``stop()``."""
        return self._task is not None and not self._task.done()

    def _node_event(self, kind: str, path: str) -> None:
        # A DELETED may arrive late: after _ensure replaced a stale node and confirmed
        # ours. Ask the keeper to look again rather than forget the confirmation.
        if kind == "DELETED":
            self._recheck = True
            self._wake.set()

    async def _ensure(self) -> None:
        """Make sure our node exists in the current session, creating it if need be."""
        session = self._session.session_id
        stat = await self._session.exists(self.node, watch=self._watch)
        if stat is not None and stat.owner == session:
            self._seen_in = session
            return
        if stat is not None:
            # Ours by name but held by another session: our own earlier life (restarted
            # faster than its session expired), or a stranger claiming our address.
            logger.info("replacing the ZooKeeper node %s held by session %x", self.node, stat.owner)
            try:
                await self._session.delete(self.node, stat.version)
            except NoNode:
                pass
        try:
            await self._session.create_ephemeral(self.node, self._value)
        except NodeExists:
            raise ZkUnavailable(f"the node {self.node} was created by someone else meanwhile") from None
        self.registrations += 1
        if self.registrations > 1:
            logger.warning("registered %s in ZooKeeper again (session %x): its node had gone",
                           self.address, session)
        self._seen_in = session
        await self._session.exists(self.node, watch=self._watch)  # watch the node we made

    async def _start(self, timeout: float) -> None:
        backoff = Backoff(0.1, 1.0)
        last: Exception | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if not self._session.connected and not await self._session.wait_connected(timeout):
                        continue  # the outer timeout ends this
                    try:
                        await self._ensure()
                        break
                    except (ZkUnavailable, NoNode) as exc:
                        last = exc
                    await asyncio.sleep(backoff.next_delay())
        except TimeoutError:
            detail = f"; last attempt: {last}" if last else ""
            raise RegistryError(f"cannot register {self.address} in ZooKeeper at {self.url.describe()}: "
                                f"no host answered within {timeout:g} s{detail}") from last
        logger.info("registered %s in ZooKeeper at %s (session %x, timeout %g s)",
                    self.address, self.url.describe(), self._seen_in, self.url.session_timeout)
        self._task = asyncio.create_task(self._keep(), name=f"geerpc ZooKeeper node {self.address}")

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.1, 2.0)
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._session.connected:
                continue  # kazoo reconnects; its next state change wakes us
            if not self._recheck and self._seen_in == self._session.session_id:
                continue
            self._recheck = False
            try:
                await self._ensure()
            except Exception as exc:  # ZkUnavailable, NoNode: retried; anything else is a bug
                if not isinstance(exc, ZkUnavailable | NoNode):  # ... which must not end the keeper
                    logger.exception("keeping the ZooKeeper node of %s failed unexpectedly", self.address)
                level = logging.WARNING if self._trouble.failed(loop.time()) else logging.DEBUG
                logger.log(level, "ZooKeeper registration of %s: %s (failure %d, retrying)",
                           self.address, exc, self._trouble.failures)
                await asyncio.sleep(backoff.next_delay())
                self._recheck = True
                self._wake.set()
                continue
            recovery = self._trouble.recovered(loop.time())
            if recovery is not None:
                logger.info("ZooKeeper registration of %s works again after %d failed attempt(s) in %.1f s",
                            self.address, recovery.failures, recovery.seconds)
            backoff.reset()

    async def stop(self) -> None:
        """Delete the node (at once for every watcher) and end the session. Idempotent.

        Gives up on deleting after 2 s; closing the session then removes the node, or
        ZooKeeper does when the session expires.
        """
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await self._session.delete(self.node)
            except NoNode:
                pass
            except (ZkUnavailable, TimeoutError) as exc:
                logger.warning("could not delete the ZooKeeper node of %s (%s); it goes with its session",
                               self.address, exc or "timed out")
            else:
                logger.info("deregistered %s from ZooKeeper", self.address)
        finally:
            await self._session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<ZooKeeperRegistration {self.node!r} session={self._seen_in:x} running={self.running}>"


def node_value(address: str, services: Iterable[str] | None, metadata: dict[str, Any] | None) -> bytes:
    """The JSON a server's node holds. Raises ``ValueError`` for bad services or metadata."""
    parse_address(address)  # ValueError naming the problem
    if isinstance(services, str):
        raise ValueError("services must be a list of names, not one string")  # noqa: TRY004
    names: list[str] | None = None
    if services is not None:
        given = list(services)
        if not all(isinstance(name, str) and name for name in given):
            raise ValueError(f"services must be non-empty strings, got {given!r}")
        names = sorted(set(given))
    try:
        return json.dumps({"address": address, "services": names, "metadata": metadata or {}},
                          sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc


async def register(
    url: str,
    address: str,
    services: Iterable[str] | None,
    metadata: dict[str, Any] | None = None,
    *,
    timeout: float = REGISTER_TIMEOUT,
) -> ZooKeeperRegistration:
    """Register ``address`` (offering ``services``) in ZooKeeper until stopped.

    ``url`` is ``zk://host:port[,host:port...]/path[?session_timeout=N]``.
    ``services=None`` means not known: discoveries count the server as offering every
    service. ``metadata`` must be JSON-serialisable. Returns a running
    ``ZooKeeperRegistration``: ``await reg.stop()`` deregisters.

    Raises ``ValueError`` for a malformed URL, address, services or metadata, and
    ``RegistryError`` (naming the hosts) when no host answers within ``timeout``.
    """
    config = parse_zk_url(url)
    value = node_value(address, services, metadata)
    session = ZkSession(config)
    registration = ZooKeeperRegistration(config, address, value, session)
    try:
        await registration._start(timeout)
    except BaseException:
        await session.close()
        raise
    return registration
