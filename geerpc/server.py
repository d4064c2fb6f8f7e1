"""The Server: services, listening sockets, registry announcement and graceful stop.

Per-connection work lives in ``connection.ServerConnection``, which sees the server
only through ``host.ConnectionHost``; this module implements that interface and owns
what is shared: the method table, limits, the thread pool for plain ``def``
handlers, the life cycle (start, serve_forever, stop) and ``snapshot()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from ssl import SSLContext
from types import TracebackType
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

from . import http
from . import protocol as p
from .admission import Admission
from .connection import ServerConnection
from .debug import render_debug_page
from .gate import DecodeGate
from .host import Limits
from .interceptors import ServerInterceptor, awaits_only_proceed, check_interceptors
from .tls import check_server_context
from .service import Method, Service, build_service
from .snapshot import ConnectionStats, ServerSnapshot, service_stats
from .workers import Job, WorkerPool

if TYPE_CHECKING:
    from .metrics import ServerMetrics

__all__ = ["Server"]

log = logging.getLogger("geerpc.server")


class _Announcement(Protocol):
    async def stop(self) -> None: ...


class Server:
    """Serves the public methods of registered objects as ``"Service.method"``.

    Args:
        handle_timeout: seconds a handler may run (None: no limit). A client's own
            HandleTimeout, or the deadline it sends with a call, can only shorten it.
        max_frame_size: largest frame accepted or sent, in bytes (default 16 MiB).
        max_in_flight: calls running at once per connection; past it further requests
            are held (up to max(max_in_flight, 16) of them), then the server stops
            reading that connection until calls finish (backpressure).
        max_elements: the most elements one request may hold (every array element,
            map entry and container counts one); a request over it is answered
            InvalidArguments, decoded no further than the limit.
        connection_budget: bytes one connection may hold (default 64 MiB): requests
            waiting, the arguments of running calls (as decoded, estimated) with a
            reservation for each one's reply, replies not yet sent, and the frame being
            received. At the budget it starts no call and reads nothing until calls end
            or its peer has read replies, so a server holds about connections x budget
            at most. A request that alone would exceed it is answered InvalidArguments.
        max_connections: connections open at once. At the cap, the connection idle the
            longest (nothing in flight) is closed to make room for a new one; only when
            none is idle is the new one refused.
        max_connections_per_ip: connections open at once from one IP address (default
            a sixteenth of max_connections, but at least 16, or max_connections if
            fewer: 64 of 1,024), with the same eviction of that address's longest idle
            one. Unix-socket peers have no address cap.
        handshake_timeout: seconds a new connection has to send its Option.
        frame_timeout: seconds a frame that has started may take to arrive whole.
        idle_timeout: close a connection that sent nothing for this many seconds and
            has no call in flight (default 300; None: keep idle connections). Clients
            redial: a Client whose connection was closed while idle dials again on
            its next call.
        max_workers: threads for plain ``def`` handlers.
        interceptors: ``async`` callables ``(call, proceed)`` run around every call,
            outermost first (``geerpc.interceptors``); ``call`` is the CallContext.
        auth: an interceptor that establishes who calls, run before all others, such
            as ``geerpc.BearerTokens({token: identity})``: a call it refuses reaches
            neither the other interceptors nor the handler.
    """

    def __init__(
        self,
        *,
        handle_timeout: float | None = None,
        max_frame_size: int = p.DEFAULT_MAX_FRAME_SIZE,
        max_in_flight: int = 128,
        max_elements: int = p.DEFAULT_MAX_ELEMENTS,
        connection_budget: int = 64 * 1024 * 1024,
        max_connections: int = 1024,
        max_connections_per_ip: int | None = None,
        handshake_timeout: float = 10.0,
        frame_timeout: float = 30.0,
        idle_timeout: float | None = 300.0,
        max_workers: int = 32,
        interceptors: Sequence[ServerInterceptor] | None = None,
        auth: ServerInterceptor | None = None,
    ) -> None:
        if handle_timeout is not None and not handle_timeout > 0:
            raise ValueError("handle_timeout must be positive or None")
        for name, value in (("max_frame_size", max_frame_size), ("max_in_flight", max_in_flight),
                            ("max_elements", max_elements), ("connection_budget", connection_budget),
                            ("max_connections", max_connections), ("max_workers", max_workers)):
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if max_connections_per_ip is None:
            max_connections_per_ip = max(min(max_connections, 16), max_connections // 16)
        elif type(max_connections_per_ip) is not int or max_connections_per_ip < 1:
            raise ValueError(f"max_connections_per_ip must be a positive integer or None, "
                             f"not {max_connections_per_ip!r}")
        if max_frame_size > 2**32 - 1:
            raise ValueError("max_frame_size must fit the 4-byte length prefix")
        for name, limit in (("handshake_timeout", handshake_timeout), ("frame_timeout", frame_timeout),
                            ("idle_timeout", idle_timeout)):
            if limit is not None and not (isinstance(limit, (int, float)) and 0 < limit < float("inf")):
                raise ValueError(f"{name} must be a positive number of seconds")
        self.handle_timeout = handle_timeout
        self.max_frame_size = max_frame_size
        self.max_in_flight = max_in_flight
        self.max_connections = max_connections
        self.max_connections_per_ip = max_connections_per_ip
        self.handshake_timeout = handshake_timeout
        self.frame_timeout = frame_timeout
        self.idle_timeout = idle_timeout
        self.max_elements = max_elements
        self.connection_budget = connection_budget
        self.limits = Limits(max_frame_size=max_frame_size, max_in_flight=max_in_flight,
                             max_elements=max_elements, connection_budget=connection_budget,
                             handle_timeout=handle_timeout, handshake_timeout=handshake_timeout,
                             frame_timeout=frame_timeout, idle_timeout=idle_timeout)
        #: run around every call, outermost first (``geerpc.interceptors``); ``auth`` first of all
        self.interceptors: tuple[ServerInterceptor, ...] = check_interceptors(
            ([auth] if auth is not None else []) + list(interceptors or ()), "server")
        self.auth = auth
        #: the TLS context of every connection (set by ``start(ssl=...)``), or None
        self.tls: SSLContext | None = None
        self.tls_failures = 0  # TLS handshakes that failed or timed out
        self.inline_interceptors = all(awaits_only_proceed(i) for i in self.interceptors)
        self._metrics: ServerMetrics | None = None
        self.protocol_errors = 0  # connections closed because the peer broke the protocol
        self._services: dict[str, Service] = {}
        self._methods: dict[str, Method] = {}
        self._workers = WorkerPool(max_workers)
        self._connections: set[ServerConnection] = set()  # every open one, evicted ones until closed
        self._admission: Admission[ServerConnection] = Admission(max_connections, max_connections_per_ip)
        self._listener: asyncio.Server | None = None
        #: the share of the loop decoding large frames may take (made by start(), on its loop)
        self.decode_gate: DecodeGate
        self._unix_path: str | None = None
        self._announcement: _Announcement | None = None
        #: True from the moment stop() begins (read it; stop() sets it)
        self.stopping = False
        # ConnectionHost's lookup and submit, bound once: they are on every call's path
        self.lookup: Callable[[str], Method | None] = self._methods.get
        self.submit: Callable[[Job], None] = self._workers.submit
        self._stop_task: asyncio.Task[None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._drained: asyncio.Event | None = None
        self._stopped: asyncio.Event | None = None
        self.address: str | None = None
        self.started_at: float | None = None  # time.monotonic() when start() returned

    # ------------------------------------------------------------- services

    def register(self, instance: Any, name: str | None = None) -> str:
        """Expose the public methods of ``instance`` as ``"<name>.<method>"``.

        ``name`` defaults to the class name. Returns the service name. Raises
        ValueError if the name is taken or ``instance`` has no public methods.
        """
        service = build_service(instance, name)
        if service.name in self._services:
            raise ValueError(f"service {service.name!r} is already registered")
        self._services[service.name] = service
        for method in service.methods.values():
            self._methods[method.name] = method
        return service.name

    @property
    def services(self) -> dict[str, list[str]]:
        """Service name -> sorted method names."""
        return {name: sorted(s.methods) for name, s in self._services.items()}

    def snapshot(self, now: float | None = None) -> ServerSnapshot:
        """The server's state now: services and their methods' counters and latencies,
        connections and the calls each has in flight. ``now`` is ``time.monotonic()``."""
        if now is None:
            now = time.monotonic()
        return ServerSnapshot(
            address=self.address,
            uptime=max(0.0, now - self.started_at) if self.started_at is not None else 0.0,
            stopping=self.stopping,
            services=tuple(service_stats(self._services[name]) for name in sorted(self._services)),
            connections=tuple(ConnectionStats(c.running, c.held, c.bytes_held, c.parked) for c in self._connections),
            protocol_errors=self.protocol_errors,
        )

    # ------------------------------------------------------------- ConnectionHost

    def has_service(self, name: str) -> bool:
        return name in self._services

    def connection_opened(self, connection: object) -> str | None:
        assert isinstance(connection, ServerConnection)
        refusal, evicted = self._admission.admit(connection, connection.peer_ip)
        if refusal is not None:
            log.warning("refusing a connection: %s", refusal)
            return refusal
        if evicted is not None:
            log.info("closing a connection from %s idle for a while, to make room for a new one",
                     evicted.peer_ip or "a unix socket")
            evicted.close()
        self._connections.add(connection)
        return None

    def connection_closed(self, connection: object) -> None:
        connection = cast(ServerConnection, connection)
        self._connections.discard(connection)
        self._admission.remove(connection)
        self._check_drained()

    def connection_quiet(self, connection: object) -> None:
        self._check_drained()

    def protocol_error(self) -> None:
        self.protocol_errors += 1

    def tls_failed(self, exc: BaseException) -> None:
        self.tls_failures += 1

    def http_answer(self, request: http.Request) -> bytes | None:
        return http.route(request, lambda: render_debug_page(self.snapshot()),
                          lambda: self.metrics.exposition())

    @property
    def metrics(self) -> ServerMetrics:
        """This server's Prometheus metrics (``/metrics``); ``metrics.registry`` is its
        own ``CollectorRegistry``. Built on first use, so prometheus_client is loaded
        only by a server that is scraped."""
        if self._metrics is None:
            from .metrics import ServerCollector, ServerMetrics

            self._metrics = ServerMetrics(ServerCollector(self._methods, self._connections,
                                                          lambda: self.protocol_errors))
        return self._metrics

    # ------------------------------------------------------------- life cycle

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, registry: str | None = None,
                    ssl: SSLContext | None = None, registry_token: str | None = None,
                    registry_ssl: SSLContext | None = None) -> str:
        """Listen, and return the address clients dial (``"tcp@127.0.0.1:PORT"``).

        ``host`` may also be a whole address: ``"unix@/path/to.sock"``,
        ``"tcp@host:port"`` or ``"tls@host:port"``. Returns once the socket is
        listening. With ``ssl`` (a server ``ssl.SSLContext``, made with
        ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` and
        ``load_cert_chain``) every connection is TLS from its first byte and the
        address is ``tls@host:port``; a context with ``verify_mode = CERT_REQUIRED``
        and the clients' CA loaded asks every client for a certificate (mutual TLS).

        With ``registry`` (an ``http://`` or ``https://`` registry URL, an ``etcd://``
        or a ``zk://`` URL) the server announces itself there and keeps announcing until
        ``stop()``; ``start`` returns after the first attempt (an unreachable HTTP registry
        is retried in the background; an unreachable etcd or ZooKeeper raises ``RegistryError``).
        ``registry_token`` is the registry's write token, ``registry_ssl`` the context
        that verifies an ``https://`` registry (or an etcd over TLS).
        """
        if self._listener is not None or self.stopping:
            raise RuntimeError("server already started (a stopped server cannot be restarted)")
        self.tls = check_server_context(ssl)
        if self.tls is not None and host.startswith("unix@"):
            raise ValueError("ssl= is for TCP: a unix socket is local (drop ssl=, or listen on tls@host:port)")
        loop = asyncio.get_running_loop()
        self.decode_gate = DecodeGate(loop)
        self._drained = asyncio.Event()
        self._stopped = asyncio.Event()
        # stop() called while this runs waits for it, so nothing started here is missed
        self._starting = loop.create_future()
        try:
            await self._listen(loop, host, port)
            if registry is not None:
                assert self.address is not None
                self._announcement = await _announce(registry, self.address, sorted(self._services),
                                                     registry_token, registry_ssl)
        except BaseException:
            self._starting.set_result(None)
            await self.stop(grace=0)
            raise
        self._starting.set_result(None)
        if self.stopping:
            raise RuntimeError("server stopped while it was starting")
        self.started_at = time.monotonic()
        log.info("serving %s on %s", ", ".join(sorted(self._services)) or "no services", self.address)
        assert self.address is not None
        return self.address

    async def _listen(self, loop: asyncio.AbstractEventLoop, host: str, port: int) -> None:
        factory = lambda: ServerConnection(self)  # noqa: E731
        if host.startswith("unix@"):
            path = host[len("unix@"):]
            if not path:
                raise ValueError("unix@ address needs a socket path")
            self._listener = await loop.create_unix_server(factory, path)
            self._unix_path = path
            self.address = f"unix@{path}"
            return
        if "@" in host:
            scheme, _, rest = host.partition("@")
            if scheme not in ("tcp", "tls") or (scheme == "tls") != (self.tls is not None):
                raise ValueError(f"cannot listen on {host!r}: want host, tcp@host:port, unix@path, "
                                 f"or tls@host:port with ssl=")
            host, _, port_text = rest.rpartition(":")
            host = host.strip("[]")
            port = int(port_text)
        self._listener = await loop.create_server(factory, host, port, reuse_address=True)
        sockname = self._listener.sockets[0].getsockname()
        shown = f"[{sockname[0]}]" if self._listener.sockets[0].family == socket.AF_INET6 else sockname[0]
        self.address = f"{'tcp' if self.tls is None else 'tls'}@{shown}:{sockname[1]}"

    async def serve_forever(self) -> None:
        """Wait until the server is stopped; cancelling this stops it."""
        if self._stopped is None:
            raise RuntimeError("call start() first")
        try:
            await self._stopped.wait()
        except asyncio.CancelledError:
            await asyncio.shield(self.stop())
            raise

    async def stop(self, grace: float = 5.0) -> None:
        """Stop gracefully; safe to call more than once (later calls wait for the first).

        Deregisters first, stops accepting, answers new requests with an Unavailable
        error, lets calls in flight finish for up to ``grace`` seconds, then cancels
        them (their callers get Unavailable) and closes every connection.
        """
        if self._stop_task is None:
            self.stopping = True
            self._stop_task = asyncio.ensure_future(self._stop(grace))
        await asyncio.shield(self._stop_task)

    async def _stop(self, grace: float) -> None:
        if self._starting is not None:
            await self._starting  # a start in progress finishes first: then all it made is known
        if self._announcement is not None:
            try:
                await self._announcement.stop()
            except Exception:  # noqa: BLE001 - a registry problem must not block the stop
                log.warning("deregistering %s failed", self.address, exc_info=True)
        if self._listener is not None:
            self._listener.close()
        if self._drained is not None and any(c.in_flight for c in self._connections):
            self._check_drained()
            try:
                async with asyncio.timeout(grace):
                    await self._drained.wait()
            except TimeoutError:
                pass
        for connection in list(self._connections):
            connection.cancel_calls()
        await asyncio.sleep(0)  # let cancelled handlers queue their Unavailable replies
        for connection in list(self._connections):
            connection.close()
        waiters = [c.closed for c in self._connections]
        if waiters:
            _, late = await asyncio.wait(waiters, timeout=1.0)
            for connection in list(self._connections):
                connection.abort()  # a peer that does not read our last replies
            if late:
                await asyncio.wait(late, timeout=1.0)
        if self._listener is not None:
            await self._listener.wait_closed()
        if self._unix_path is not None:
            try:
                os.unlink(self._unix_path)
            except OSError:
                pass
        self._workers.shutdown()
        if self._stopped is not None:
            self.decode_gate.close()
            self._stopped.set()
        log.info("stopped %s", self.address)

    def _check_drained(self) -> None:
        # Only while stopping: a connection that closed earlier must not pre-set it.
        if self.stopping and self._drained is not None and not any(c.in_flight for c in self._connections):
            self._drained.set()

    async def __aenter__(self) -> Server:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()


async def _announce(registry: str, address: str, services: list[str], token: str | None,
                    context: SSLContext | None) -> _Announcement:
    """Announce ``address`` at ``registry`` until stopped, with its token and TLS context."""
    from .registry.heartbeat import announce, announce_heartbeat

    if registry.startswith(("http://", "https://")):
        return await announce_heartbeat(registry, address, services, token=token, ssl=context)
    if token is not None:
        raise ValueError("registry_token is for http(s):// registries: give etcd's user and password in its URL")
    if context is not None:
        if not registry.startswith(("etcd://", "etcds://")):
            raise ValueError(f"registry_ssl is for https:// and etcd registries, not {registry.split(':', 1)[0]}://")
        from .registry.etcd import register

        return await register(registry, address, services, ssl=context)
    return await announce(registry, address, services)

