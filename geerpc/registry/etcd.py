"""etcd as the registry: a server's key, kept alive by a lease.

Layer: registry, the etcd backend. A server writes one key, ``<prefix>/<address>``, whose
value is JSON ``{"address", "services", "metadata"}``, attached to a lease it keeps alive;
when the server stops (or dies) the lease goes and etcd deletes the key.
``geerpc.xclient.etcd_discovery`` reads the same keys; ``etcd_client`` holds the URL
parsing and the clients with failover that both use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl as ssl_module
from collections.abc import Iterable
from typing import Self

from ..address import parse_address
from ..backoff import Backoff, FailureLog
from ..errors import RegistryError
from .etcd_client import (
    DEFAULT_PORT,
    DEFAULT_PREFIX,
    DEFAULT_TTL,
    REGISTER_TIMEOUT,
    STOP_TIMEOUT,
    EtcdClients,
    EtcdEndpoint,
    EtcdRefused,
    EtcdURL,
    cancel_and_wait,
    parse_etcd_url,
)
from .etcd_gateway import EtcdError

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "DEFAULT_TTL", "EtcdClients", "EtcdRefused", "EtcdRegistration",
           "EtcdURL", "parse_etcd_url", "register"]

logger = logging.getLogger("geerpc.registry.etcd")


# --------------------------------------------------------------------------- registration


class EtcdRegistration:
    """A server's key in etcd, kept alive by a lease until ``stop()``.

    Made by ``register()``. The keep-alive task renews the lease every third of its TTL,
    rides out etcd being unreachable (trying every endpoint, with back-off), and when the
    lease is gone (it expired while etcd was away, or someone revoked it) grants a new one
    and writes the key again. Also an async context manager that stops on exit.
    """

    def __init__(self, url: EtcdURL, address: str, value: bytes, clients: EtcdClients) -> None:
        self.url = url
        self.address = address
        self.key = url.key(address)
        self._value = value
        self._clients = clients
        self._lease_id = 0
        self._granting = 0  # a lease granted whose put has not been confirmed yet
        self._granted_ttl = url.ttl
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._trouble = FailureLog(every=60.0)  # warn at the first failure, then once a minute

    @property
    def lease_id(self) -> int:
        """The lease the key is attached to now (it changes when a lost lease is replaced)."""
        return self._lease_id

    @property
    def running(self) -> bool:
        """True until ``stop()``."""
        return self._task is not None and not self._task.done()

    async def _grant_and_put(self, client: EtcdEndpoint) -> None:
        lease, ttl = await client.grant(self.url.ttl)
        # Remembered for stop(), should we be cancelled after the put but before the next line.
        self._granting = lease
        await client.put(self.key, self._value, lease=lease)
        self._lease_id, self._granted_ttl, self._granting = lease, max(1, ttl), 0

    async def _renew(self, client: EtcdEndpoint) -> None:
        ttl = await client.keep_alive(self._lease_id)
        if ttl > 0:
            self._granted_ttl = ttl
            return
        # etcd answers a keep-alive for an unknown lease with TTL 0, not an error.
        logger.warning("etcd lease %x of %s is gone; registering again", self._lease_id, self.address)
        await self._grant_and_put(client)

    async def _start(self, timeout: float) -> None:
        backoff = Backoff(0.1, 2.0)
        last: RegistryError | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await self._clients.call(self._grant_and_put)
                        break
                    except EtcdRefused as exc:  # a wrong password or failing TLS: waiting will not help
                        raise RegistryError(f"cannot register {self.address} in etcd at {self.url.describe()}: "
                                            f"{exc}") from exc
                    except RegistryError as exc:
                        last = exc
                    await asyncio.sleep(backoff.next_delay())
        except TimeoutError:
            detail = f"; last attempt: {last}" if last else ""
            raise RegistryError(f"cannot register {self.address} in etcd at {self.url.describe()}: "
                                f"no endpoint answered within {timeout:g} s{detail}") from last
        logger.info("registered %s in etcd at %s (lease %x, ttl %d s)",
                    self.address, self._clients.current_endpoint, self._lease_id, self._granted_ttl)
        self._task = asyncio.create_task(self._keep_alive(), name=f"geerpc etcd keep-alive {self.address}")

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = Backoff(0.1, 2.0)
        delay = self._granted_ttl / 3
        while True:
            await asyncio.sleep(delay)
            try:
                await self._clients.call(self._renew)
            except Exception as exc:  # RegistryError: no endpoint answered; anything else is a bug
                if not isinstance(exc, RegistryError):  # ... which must not end the keep-alive
                    logger.exception("etcd keep-alive of %s failed unexpectedly", self.address)
                level = logging.WARNING if self._trouble.failed(loop.time()) else logging.DEBUG
                logger.log(level, "etcd registration of %s: %s (failure %d, retrying)",
                           self.address, exc, self._trouble.failures)
                # Retry well inside the TTL, so a short outage never costs us the lease.
                delay = min(backoff.next_delay(), self._granted_ttl / 3)
                continue
            recovery = self._trouble.recovered(loop.time())
            if recovery is not None:
                logger.info("etcd registration of %s: etcd answers again after %d failed attempt(s) in %.1f s",
                            self.address, recovery.failures, recovery.seconds)
            backoff.reset()
            delay = self._granted_ttl / 3

    async def stop(self) -> None:
        """Stop the keep-alive and revoke the lease, so the key disappears at once.

        Gives up on revoking after 2 s (the key then expires with its lease). Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        try:
            if task is not None:
                await cancel_and_wait(task)
            await self._revoke()
        finally:
            await self._clients.close()

    async def _revoke(self) -> None:
        leases = [lease for lease in (self._granting, self._lease_id) if lease]
        if not leases:
            return

        async def revoke(client: EtcdEndpoint) -> None:
            for lease_id in leases:
                try:
                    await client.revoke(lease_id)
                except EtcdError as exc:
                    if "lease not found" not in exc.message:  # already gone is as good as revoked
                        raise

        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                await self._clients.call(revoke)
        except (RegistryError, TimeoutError) as exc:
            logger.warning("could not revoke the etcd lease of %s (%s); its key expires within %d s",
                           self.address, exc or "timed out", self._granted_ttl)
        else:
            logger.info("deregistered %s from etcd", self.address)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<EtcdRegistration {self.key.decode()!r} lease={self._lease_id:x} running={self.running}>"


async def register(
    url: str,
    address: str,
    services: Iterable[str] | None,
    metadata: dict[str, object] | None = None,
    *,
    timeout: float = REGISTER_TIMEOUT,
    ssl: ssl_module.SSLContext | None = None,
    username: str | None = None,
    password: str | None = None,
) -> EtcdRegistration:
    """Register ``address`` (offering ``services``) in etcd and keep it alive.

    ``services=None`` means not known: discoveries count the server as offering every service.
    ``url`` is ``etcd[s]://[user[:password]@]host:port[,host:port...]/prefix?ttl=N&ssl=1``.
    ``metadata`` must be JSON-serialisable; discoveries read it but geerpc does not
    interpret it. Returns a running ``EtcdRegistration``: ``await reg.stop()`` deregisters.

    ``ssl`` (an ``ssl.SSLContext``: the CA to trust, and the client certificate when etcd
    runs with ``--client-cert-auth``) makes every call HTTPS; ``etcds://`` or ``ssl=1``
    alone uses the default context. ``username`` and ``password`` log in to etcd's auth
    (they win over the URL's; a user name alone takes the password from
    ``GEERPC_ETCD_PASSWORD``).

    Raises ``ValueError`` for a malformed URL, address, services, metadata or credentials,
    and ``RegistryError`` (naming the endpoints) when no endpoint answers within
    ``timeout``, at once when etcd refuses the password ("authentication failed") or the
    TLS handshake fails ("certificate verify failed").
    """
    config = parse_etcd_url(url)
    parse_address(address)  # ValueError naming the problem
    if isinstance(services, str):
        raise ValueError("services must be a list of names, not one string")
    names: list[str] | None = None
    if services is not None:
        given = list(services)
        if not all(isinstance(name, str) and name for name in given):
            raise ValueError(f"services must be non-empty strings, got {given!r}")
        names = sorted(set(given))
    try:
        value = json.dumps({"address": address, "services": names, "metadata": metadata or {}},
                           sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable: {exc}") from exc
    clients = EtcdClients.for_url(config, ssl=ssl, username=username, password=password)
    registration = EtcdRegistration(config, address, value, clients)
    try:
        await registration._start(timeout)
    except BaseException:
        await clients.close()
        raise
    return registration
