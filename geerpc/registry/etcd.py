"""etcd as the registry: URL parsing, failover across endpoints, and a server's leased key.

Layer: registry, the etcd backend. A server writes one key, ``<prefix>/<address>``, whose
value is JSON ``{"address", "services", "metadata"}``, attached to a lease it keeps alive;
when the server stops (or dies) the lease goes and etcd deletes the key.
``geerpc.xclient.etcd_discovery`` reads the same keys.

This module imports errors and address parsing from geerpc and nothing from the server,
client or xclient. aetcd is imported only when something talks to etcd, so importing
this module works without the ``etcd`` extra installed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Final, Self, TypeVar
from urllib.parse import parse_qsl

from ..address import parse_address
from ..errors import RegistryError

if TYPE_CHECKING:
    import aetcd  # type: ignore[import-untyped]

__all__ = ["DEFAULT_PORT", "DEFAULT_PREFIX", "DEFAULT_TTL", "EtcdClients", "EtcdRegistration", "EtcdURL",
           "parse_etcd_url", "register"]

logger = logging.getLogger("geerpc.registry.etcd")

DEFAULT_PORT: Final = 2379
DEFAULT_PREFIX: Final = "/geerpc"
DEFAULT_TTL: Final = 10  # seconds
REGISTER_TIMEOUT: Final = 5.0  # etcd is meant to be always up: failing to reach it is a config error
CALL_TIMEOUT: Final = 2.0  # deadline of one call on one endpoint
STOP_TIMEOUT: Final = 2.0  # revoking the lease on stop; past it the key expires with the lease

T = TypeVar("T")

# How the gRPC channel under each aetcd client behaves. Why each one:
_CHANNEL_OPTIONS: Final = {
    # Our own subchannel pool, so that a client created right after etcd restarted does not
    # inherit the reconnect back-off of another channel to the same address (about a second).
    "grpc.use_local_subchannel_pool": 1,
    # Come back quickly once etcd is up again (gRPC's default back-off grows to 2 minutes).
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    # Notice a peer that vanished without closing the connection (a dead host, a partition)
    # while a watch is open. etcd accepts pings from 5 s apart, and only with a call open.
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_timeout_ms": 5_000,
    "grpc.http2.max_pings_without_data": 0,
}


def _import_aetcd() -> ModuleType:
    try:
        import aetcd
    except ImportError as exc:
        raise ImportError("the etcd registry needs the aetcd package: pip install 'geerpc[etcd]'") from exc
    module: ModuleType = aetcd
    return module


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True, slots=True)
class EtcdURL:
    """A parsed ``etcd://host:port[,host:port...]/prefix?ttl=N``."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str  # "/geerpc": a leading slash, no trailing one
    ttl: int  # seconds

    @property
    def key_prefix(self) -> bytes:
        """Every server's key starts with this."""
        return f"{self.prefix}/".encode()

    def key(self, address: str) -> bytes:
        """The key a server at ``address`` registers under."""
        return f"{self.prefix}/{address}".encode()

    def describe(self) -> str:
        """``h1:2379,h2:2379``, for messages."""
        return ",".join(_endpoint_text(host, port) for host, port in self.endpoints)


def parse_etcd_url(url: str) -> EtcdURL:
    """Parse ``etcd://h1:2379,h2:2379/prefix?ttl=N``.

    The port defaults to 2379, the prefix to ``/geerpc`` and the lease TTL to 10 s.
    IPv6 hosts are written in brackets (``[::1]:2379``). Raises ``ValueError`` saying
    what is wrong with the URL.
    """
    if not isinstance(url, str):
        raise ValueError(f"etcd URL must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "etcd":
        raise ValueError(f"etcd URL {url!r}: want etcd://host:port[,host:port...]/prefix[?ttl=N]")
    if "#" in rest:
        raise ValueError(f"etcd URL {url!r}: a fragment (#...) means nothing here")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        raise ValueError(f"etcd URL {url!r}: user names and passwords are not supported")
    if not netloc:
        raise ValueError(f"etcd URL {url!r}: no endpoints (want etcd://host:port/prefix)")
    endpoints = tuple(_parse_endpoint(url, item) for item in netloc.split(","))
    segments = [s for s in path.split("/") if s]
    if any(not s.isprintable() or " " in s for s in segments):
        raise ValueError(f"etcd URL {url!r}: the prefix has spaces or control characters")
    prefix = "/" + "/".join(segments) if segments else DEFAULT_PREFIX
    return EtcdURL(endpoints, prefix, _parse_ttl(url, query))


def _parse_endpoint(url: str, item: str) -> tuple[str, int]:
    if not item:
        raise ValueError(f"etcd URL {url!r}: empty endpoint in the host list")
    has_port = "]:" in item if item.startswith("[") else ":" in item
    host, port_text = item.rsplit(":", 1) if has_port else (item, str(DEFAULT_PORT))
    if ":" in host and not host.startswith("["):
        raise ValueError(f"etcd URL {url!r}: write IPv6 hosts in brackets, as in [::1]:2379")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"etcd URL {url!r}: bad port {port_text!r} in {item!r} (want 1 to 65535)")
    try:
        address = parse_address(f"{host}:{port_text}")
    except ValueError:
        raise ValueError(f"etcd URL {url!r}: bad host {host!r}") from None
    return address.host, address.port


def _parse_ttl(url: str, query: str) -> int:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"etcd URL {url!r}: malformed query {query!r}") from None
    names = [name for name, _ in pairs]
    if len(set(names)) < len(names):
        raise ValueError(f"etcd URL {url!r}: a parameter is given twice")
    ttl = DEFAULT_TTL
    for name, value in pairs:
        if name != "ttl":
            raise ValueError(f"etcd URL {url!r}: unknown parameter {name!r} (only ttl is known)")
        if not (value.isascii() and value.isdigit()) or int(value) <= 0:
            raise ValueError(f"etcd URL {url!r}: ttl must be a positive whole number of seconds")
        ttl = int(value)
    return ttl


def _endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- clients


class EtcdClients:
    """One aetcd client per endpoint, and failover between them.

    aetcd talks to one ``host:port`` per client, so trying the next endpoint when one
    fails is done here. ``call()`` runs an operation on the endpoint that last worked,
    moving on to the others in turn, each under a deadline (aetcd alone would wait
    forever on an unresponsive etcd).
    """

    def __init__(self, endpoints: Sequence[tuple[str, int]], *, call_timeout: float = CALL_TIMEOUT) -> None:
        self.aetcd = _import_aetcd()
        import grpc  # type: ignore[import-untyped]

        # What counts as "this endpoint failed": anything from gRPC or aetcd, or our deadline.
        self.failures: tuple[type[BaseException], ...] = (
            self.aetcd.ClientError, grpc.RpcError, grpc.aio.BaseError, TimeoutError, OSError,
        )
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        self.endpoints = tuple(endpoints)
        self.call_timeout = call_timeout
        self._clients: dict[int, aetcd.Client] = {}
        self._current = 0

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call goes to first."""
        return _endpoint_text(*self.endpoints[self._current])

    def client(self) -> aetcd.Client:
        """The aetcd client of the current endpoint (created on first use)."""
        client = self._clients.get(self._current)
        if client is None:
            host, port = self.endpoints[self._current]
            # timeout= becomes the gRPC deadline of every unary call this client makes.
            client = self.aetcd.Client(host, port, timeout=self.call_timeout, options=_CHANNEL_OPTIONS)
            self._clients[self._current] = client
        return client

    async def call(self, op: Callable[[aetcd.Client], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run ``op(client)`` on one endpoint after another until one succeeds.

        Each attempt gets ``timeout`` (default ``call_timeout``) seconds. Raises
        ``RegistryError`` naming every endpoint and how it failed when none did.
        """
        problems: list[str] = []
        last: BaseException | None = None
        for _ in self.endpoints:
            endpoint = self.current_endpoint
            try:
                async with asyncio.timeout(self.call_timeout if timeout is None else timeout):
                    return await op(self.client())
            except self.failures as exc:
                problems.append(f"{endpoint}: {_describe_error(exc)}")
                last = exc
                self._current = (self._current + 1) % len(self.endpoints)
        raise RegistryError(f"no etcd endpoint answered ({'; '.join(problems)})") from last

    async def reset(self) -> None:
        """Close the current endpoint's client; the next use makes a new one."""
        client = self._clients.pop(self._current, None)
        if client is not None:
            await _close_client(client)

    async def close(self) -> None:
        """Close every client. Idempotent; a new call would open them again."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await _close_client(client)


async def _close_client(client: aetcd.Client) -> None:
    try:
        async with asyncio.timeout(1.0):
            await client.close()
    except Exception as exc:  # a failing close must not stop us closing the rest
        logger.debug("closing an etcd client failed: %r", exc)
        channel = client.channel  # aetcd's close can wedge on its watch lock: close the channel itself
        if channel is not None:
            async with asyncio.timeout(1.0):
                await channel.close()


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end; our own cancellation still propagates.

    On Python 3.11 aetcd's use of ``asyncio.wait_for`` can swallow a cancellation that
    lands just as a call completes, leaving the task running: so cancel again until it ends.
    """
    for _ in range(20):
        task.cancel()
        await asyncio.wait([task], timeout=0.5)
        if task.done():
            return
    logger.error("an etcd background task ignores cancellation: %r", task)


def _describe_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "timed out"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _Backoff:
    """Exponential back-off with jitter: first, 2*first, ... up to ``cap`` seconds."""

    def __init__(self, first: float = 0.1, cap: float = 2.0) -> None:
        self.first, self.cap = first, cap
        self._next = first

    def next(self) -> float:
        delay = self._next
        self._next = min(self.cap, self._next * 2)
        return delay * random.uniform(0.5, 1.0)  # jitter, so many clients do not retry in step

    def reset(self) -> None:
        self._next = self.first


class _Trouble:
    """Logs a run of failures without spamming: the first one, then one a minute, then the recovery."""

    def __init__(self, log: logging.Logger, what: str, *, every: float = 60.0) -> None:
        self.log, self.what, self.every = log, what, every
        self.failures = 0
        self._logged_at = 0.0

    def failed(self, error: BaseException, now: float) -> None:
        self.failures += 1
        if self.failures == 1 or now - self._logged_at >= self.every:
            self._logged_at = now
            self.log.warning("%s: %s (failure %d, retrying)", self.what, error, self.failures)
        else:
            self.log.debug("%s: %s (failure %d)", self.what, error, self.failures)

    def recovered(self) -> None:
        if self.failures:
            self.log.info("%s: etcd answers again after %d failed attempt(s)", self.what, self.failures)
            self.failures = 0


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
        self._trouble = _Trouble(logger, f"etcd registration of {address}")

    @property
    def lease_id(self) -> int:
        """The lease the key is attached to now (it changes when a lost lease is replaced)."""
        return self._lease_id

    @property
    def running(self) -> bool:
        """True until ``stop()``."""
        return self._task is not None and not self._task.done()

    async def _grant_and_put(self, client: aetcd.Client) -> None:
        lease = await client.lease(self.url.ttl)
        # Remembered for stop(), should we be cancelled after the put but before the next line.
        self._granting = lease.id
        await client.put(self.key, self._value, lease=lease.id)
        self._lease_id, self._granted_ttl, self._granting = lease.id, max(1, int(lease.ttl)), 0

    async def _renew(self, client: aetcd.Client) -> None:
        reply = await client.refresh_lease(self._lease_id)
        if reply is not None and reply.TTL > 0:
            self._granted_ttl = int(reply.TTL)
            return
        # etcd answers a keep-alive for an unknown lease with TTL 0, not an error.
        logger.warning("etcd lease %x of %s is gone; registering again", self._lease_id, self.address)
        await self._grant_and_put(client)

    async def _start(self, timeout: float) -> None:
        backoff = _Backoff()
        last: RegistryError | None = None
        try:
            async with asyncio.timeout(timeout):
                while True:
                    try:
                        await self._clients.call(self._grant_and_put)
                        break
                    except RegistryError as exc:
                        last = exc
                    await asyncio.sleep(backoff.next())
        except TimeoutError:
            detail = f"; last attempt: {last}" if last else ""
            raise RegistryError(f"cannot register {self.address} in etcd at {self.url.describe()}: "
                                f"no endpoint answered within {timeout:g} s{detail}") from last
        logger.info("registered %s in etcd at %s (lease %x, ttl %d s)",
                    self.address, self._clients.current_endpoint, self._lease_id, self._granted_ttl)
        self._task = asyncio.create_task(self._keep_alive(), name=f"geerpc etcd keep-alive {self.address}")

    async def _keep_alive(self) -> None:
        loop = asyncio.get_running_loop()
        backoff = _Backoff()
        delay = self._granted_ttl / 3
        while True:
            await asyncio.sleep(delay)
            try:
                await self._clients.call(self._renew)
            except Exception as exc:  # RegistryError: no endpoint answered; anything else is a bug
                if not isinstance(exc, RegistryError):  # ... which must not end the keep-alive
                    logger.exception("etcd keep-alive of %s failed unexpectedly", self.address)
                self._trouble.failed(exc, loop.time())
                # Retry well inside the TTL, so a short outage never costs us the lease.
                delay = min(backoff.next(), self._granted_ttl / 3)
                continue
            self._trouble.recovered()
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
                await _cancel_and_wait(task)
            await self._revoke()
        finally:
            await self._clients.close()

    async def _revoke(self) -> None:
        leases = [lease for lease in (self._granting, self._lease_id) if lease]
        if not leases:
            return

        async def revoke(client: aetcd.Client) -> None:
            for lease_id in leases:
                try:
                    await client.revoke_lease(lease_id)
                except self._clients.aetcd.ClientError as exc:
                    if "lease not found" not in str(exc):  # already gone is as good as revoked
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
) -> EtcdRegistration:
    """Register ``address`` (offering ``services``) in etcd and keep it alive.

    ``services=None`` means not known: discoveries count the server as offering every service.
    ``url`` is ``etcd://host:port[,host:port...]/prefix?ttl=N``. ``metadata`` must be
    JSON-serialisable; discoveries read it but geerpc does not interpret it.
    Returns a running ``EtcdRegistration``: ``await reg.stop()`` deregisters.

    Raises ``ValueError`` for a malformed URL, address, services or metadata, and
    ``RegistryError`` (naming the endpoints) when no endpoint answers within ``timeout``.
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
    clients = EtcdClients(config.endpoints)
    registration = EtcdRegistration(config, address, value, clients)
    try:
        await registration._start(timeout)
    except BaseException:
        await clients.close()
        raise
    return registration
