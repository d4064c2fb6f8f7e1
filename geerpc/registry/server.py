"""The registry's HTTP endpoint: GeeRPC's two-header contract on top of the liveness table.

This layer owns the aiohttp server, the clock and the watchers; every decision about
who is alive is made by ``table.LivenessTable``, and ``render.ListRenderer`` turns
the list into header values and JSON; the headers and defaults it shares with its
clients are in ``contract.py``. It imports nothing from the RPC layers. The
HTTP API is described precisely in ``docs/registry.md``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import ssl as _ssl
import time
from collections.abc import Callable
from types import TracebackType
from typing import Final, Self

from aiohttp import web

from ..httpconn import releasing
from .auth import Tokens
from .contract import (
    DEFAULT_PATH,
    DEFAULT_TIMEOUT,
    DEFAULT_WAIT,
    H_INDEX,
    H_INSTANCE,
    H_PERIOD,
    H_SERVERS,
    H_SERVICES,
    H_TIMEOUT,
    MAX_SERVICES,
    MIN_PERIOD,
    RELIST_PERIOD,
    format_seconds,
    parse_services,
    period_for,
)
from .dashboard import PAGE_HEADERS, accepts_json, prefers_html, render_dashboard
from .metrics import CONTENT_TYPE, METRICS_PATH, Counts, RegistryMetrics
from .render import ListRenderer
from .requests import BadRequest, one_header, query_index, query_service, query_wait, server_header
from .table import MAX_SERVERS, LivenessTable, TableFull

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT",
    "HANDSHAKE_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "MAX_WAIT",
    "MAX_WATCHERS",
    "Registry",
    "format_seconds",
]

log = logging.getLogger("geerpc.registry")

MAX_WAIT: Final = 300.0
MAX_WATCHERS: Final = 1024
# aiohttp keeps an idle connection for an hour by default. Its keepalive timer also runs
# from a connection's start until a whole request head has arrived, so this bounds a
# slow header read too (a slowloris ties up a socket for this long, not forever).
KEEPALIVE_TIMEOUT: Final = 75.0
# Seconds an HTTPS connection has to finish its TLS handshake (as the RPC port's
# handshake_timeout); asyncio's own default is a minute.
HANDSHAKE_TIMEOUT: Final = 10.0


class Registry:
    """GeeRPC's registry as an aiohttp endpoint, with deregistration, services and watches.

    ``timeout`` is how many seconds a server stays listed without a heartbeat
    (0: forever). ``max_servers`` caps the table (a new server beyond it gets 503),
    ``max_watchers`` caps concurrent long-poll GETs (beyond it: 429), and
    ``max_watchers_per_peer`` those from one IP address, so one client cannot take
    the slots of all the others (default: a sixteenth of ``max_watchers``, at least
    16 or all of them). ``max_wait``
    caps a watch's ``wait``, ``keepalive_timeout`` closes idle connections (and
    connections that have not sent a whole request head) after that many seconds.
    ``handshake_timeout`` is how long an HTTPS connection has to finish its TLS
    handshake before it is closed (a client that never sends its ClientHello holds
    a socket that long, not for asyncio's default minute).
    ``heartbeat_period`` is the period every reply asks servers to beat at
    (``X-Geerpc-Period``; at most ``period_for(timeout)``): it bounds how long a
    live server stays unlisted after the registry restarts, at the cost of
    ``servers / heartbeat_period`` POSTs a second (see docs/registry.md).
    ``clock`` is a monotonic clock in seconds. Browsers get a live dashboard at the
    path and at ``/`` (see ``dashboard.py``), Prometheus its metrics at ``/metrics``
    (see ``metrics.py``; ``registry.metrics.registry`` is this registry's own
    ``CollectorRegistry``).

    ``token`` (optional) must come as ``Authorization: Bearer <token>`` with every
    POST and DELETE; ``read_token`` (optional, needs ``token``) with every GET, the
    dashboard and ``/metrics`` included (the write token reads too). Without them
    the registry is open, as GeeRPC's is. Refusals are 401s (see ``auth.py``).

    Use ``url = await registry.start(host, port)`` and ``await registry.stop()``, or
    ``async with Registry() as registry:`` which starts on 127.0.0.1 with a free port
    unless ``start()`` was already called, and stops on exit.
    """

    def __init__(
        self,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        path: str = DEFAULT_PATH,
        max_servers: int = MAX_SERVERS,
        max_services: int = MAX_SERVICES,
        max_watchers: int = MAX_WATCHERS,
        max_watchers_per_peer: int | None = None,
        max_wait: float = MAX_WAIT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        heartbeat_period: float = RELIST_PERIOD,
        clock: Callable[[], float] = time.monotonic,
        token: str | None = None,
        read_token: str | None = None,
    ) -> None:
        self.tokens = Tokens(token, read_token)  # ValueError for a token no header can carry
        if not path.startswith("/"):
            raise ValueError(f"path must start with '/', not {path!r}")
        if path == METRICS_PATH:
            raise ValueError(f"path {path!r} is where the registry serves its metrics; choose another")
        # Not ~0: a watch clamped to nothing would answer at once, and every watching
        # client would ask again as fast as it could.
        if not (math.isfinite(max_wait) and max_wait >= 0.1):
            raise ValueError(f"max_wait must be a finite number of seconds >= 0.1, not {max_wait!r}")
        if (not isinstance(heartbeat_period, (int, float)) or isinstance(heartbeat_period, bool)
                or not (math.isfinite(heartbeat_period) and heartbeat_period >= MIN_PERIOD)):
            raise ValueError(f"heartbeat_period must be a finite number of seconds >= {MIN_PERIOD}, "
                             f"not {heartbeat_period!r}")
        self.table = LivenessTable(timeout, max_servers=max_servers, max_services=max_services)
        # Never longer than the timeout allows: a period past it would expire servers between beats.
        self.heartbeat_period = (min(float(heartbeat_period), period_for(timeout)) if self.table.timeout > 0
                                 else float(heartbeat_period))
        self.instance = secrets.token_hex(8)  # renewed by every start()
        self.path = path
        for name, value in (("max_watchers", max_watchers), ("max_watchers_per_peer", max_watchers_per_peer)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.max_watchers = max_watchers
        # default: a sixteenth of the slots, but at least 16 (all of them when fewer)
        self.max_watchers_per_peer = (max(min(max_watchers, 16), max_watchers // 16)
                                      if max_watchers_per_peer is None else max_watchers_per_peer)
        self.max_wait = max_wait
        self.keepalive_timeout = keepalive_timeout
        if (not isinstance(handshake_timeout, (int, float)) or isinstance(handshake_timeout, bool)
                or not (math.isfinite(handshake_timeout) and handshake_timeout > 0)):
            raise ValueError(f"handshake_timeout must be a positive, finite number of seconds, "
                             f"not {handshake_timeout!r}")
        self.handshake_timeout = float(handshake_timeout)
        self._page = render_dashboard(path)
        self._clock = clock
        self._started_at = clock()
        self._changed = asyncio.Event()
        self._rearm = asyncio.Event()
        self._watchers = 0
        self._watchers_by_peer: dict[str, int] = {}  # only peers with a parked watch
        self._closing = False
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.lists = ListRenderer(self.table)
        self.url: str | None = None
        self.counts = Counts()
        self.metrics = RegistryMetrics(self)  # read only when scraped

    @property
    def timeout(self) -> float:
        return self.table.timeout

    @property
    def watchers(self) -> int:
        """How many watches are parked now, waiting for a change (or their ``wait``)."""
        return self._watchers

    def count_listed(self) -> int:
        """How many servers are listed now: expired entries are dropped first, as a GET does."""
        self._expire()
        return len(self.table)

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, ssl: _ssl.SSLContext | None = None) -> str:
        """Listen on ``host:port`` (0: a free port); return the registry's URL once listening.

        With ``ssl`` (a server context, such as
        ``ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)`` with its certificate
        loaded) the registry speaks HTTPS only and the URL is ``https://``.
        """
        if self._runner is not None:
            raise RuntimeError(f"registry already started at {self.url}")
        if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(ssl).__name__}")
        if ssl is not None and ssl.check_hostname:
            raise ValueError("a registry's ssl context must not check host names "
                             "(make it with ssl.create_default_context(ssl.Purpose.CLIENT_AUTH))")
        app = web.Application()
        for method in ("GET", "HEAD"):
            app.router.add_route(method, self.path, self._get)
            if self.path != "/":
                app.router.add_route(method, "/", self._dashboard)
            app.router.add_route(method, METRICS_PATH, self._metrics)
        app.router.add_route("POST", self.path, self._post)
        app.router.add_route("DELETE", self.path, self._delete)
        # handler_cancellation: a watcher that hangs up must not keep its slot for `wait` seconds.
        runner = web.AppRunner(
            app,
            access_log=None,
            handler_cancellation=True,
            shutdown_timeout=5.0,
            keepalive_timeout=self.keepalive_timeout,
            # aiohttp logs malformed requests (e.g. an oversized header, answered 400)
            # with a traceback; give them a logger of ours that users can quieten.
            logger=logging.getLogger("geerpc.registry.http"),
        )
        await runner.setup()
        try:
            # A plaintext request to this port fails the TLS handshake at its first
            # bytes and is closed; one that sends nothing is closed after handshake_timeout.
            site = _Site(runner, host, port, ssl, self.handshake_timeout)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._closing = False
        # Uptime tells discoveries whether an empty list may just mean "restarted".
        self._started_at = self._clock()
        self.instance = secrets.token_hex(8)  # so a heartbeat can tell it reached a new run
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"{'https' if ssl is not None else 'http'}://{shown}:{bound_port}{self.path}"
        if self.table.timeout > 0:
            self._sweeper = asyncio.create_task(self._sweep(), name="geerpc-registry-sweep")
        log.info("registry listening at %s (timeout %ss)", self.url, format_seconds(self.timeout))
        return self.url

    async def stop(self) -> None:
        """Stop listening, answer pending watches, close connections. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._closing = True
        self._notify()  # pending watches answer at once with the current list
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.gather(sweeper, return_exceptions=True)  # the caller's cancellation still propagates
        await runner.cleanup()
        log.info("registry at %s stopped", self.url)

    async def __aenter__(self) -> Self:
        if self._runner is None:
            await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- changes and expiry ----------------------------------------------------------

    def _notify(self) -> None:
        # Each generation of watchers waits on its own Event; a change wakes that
        # generation and starts a new one, so nobody can miss a change or see it twice.
        self._changed.set()
        self._changed = asyncio.Event()

    def _after(self, index_before: int) -> None:
        if self.table.index != index_before:
            self._notify()

    def _expire(self) -> float:
        now = self._clock()
        if self.table.expire(now):
            self._notify()
        return now

    async def _sweep(self) -> None:
        # Reads expire entries too; this sweep exists so watchers learn of an expiry
        # without anybody reading. It sleeps until the oldest entry's deadline (new
        # heartbeats never make that deadline earlier), and at most a second.
        # A heartbeat into an empty table is the one event that makes the deadline
        # earlier; it sets _rearm so the sweep recomputes at once.
        while True:
            now = self._expire()
            deadline = self.table.next_expiry()
            delay = 1.0 if deadline is None else min(1.0, deadline - now)
            self._rearm.clear()
            try:
                # asyncio may wake a hair early (clock resolution): never spin on a zero delay.
                async with asyncio.timeout(max(delay, 0.005)):
                    await self._rearm.wait()
            except TimeoutError:
                pass

    # -- handlers --------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        return {H_TIMEOUT: format_seconds(self.timeout), H_INDEX: str(self.table.index),
                H_PERIOD: format_seconds(self.heartbeat_period), H_INSTANCE: self.instance}

    def _reply(self, status: int, reason: str) -> web.Response:
        self.counts.refuse(status)
        # backslashreplace: a reason may quote undecodable bytes the client sent.
        body = (reason + "\n").encode("utf-8", "backslashreplace")
        return web.Response(status=status, body=body, content_type="text/plain", headers=self._headers())

    def _unauthorized(self, write: bool) -> web.Response:
        # No X-Geerpc-* headers: a caller without the token learns nothing of the list.
        self.counts.refuse(401)
        what = "changing the list" if write else "reading the list"
        return web.Response(status=401, body=f"{what} needs the registry's token (Authorization: Bearer ...)\n"
                            .encode(), content_type="text/plain",
                            headers={"WWW-Authenticate": 'Bearer realm="geerpc-registry"'})

    def _may_read(self, request: web.Request, *, page: bool = False) -> bool:
        # The dashboard's page cannot send a header on its first load: it may carry
        # ?token= (and its script then sends the header). Other GETs use the header only,
        # so tokens stay out of URLs, logs and proxies wherever they can.
        query = request.query.get("token") if page else None
        return self.tokens.may_read(request.headers.get("Authorization"), query)

    async def _post(self, request: web.Request) -> web.Response:
        if not self.tokens.may_write(request.headers.get("Authorization")):
            return self._unauthorized(write=True)
        try:
            address = server_header(request, announcing=True)
            services = parse_services(one_header(request, H_SERVICES), max_services=self.table.max_services)
        except BadRequest as exc:
            return self._reply(400, str(exc))
        except ValueError as exc:
            return self._reply(400, f"{H_SERVICES}: {exc}")
        before = self.table.index
        if not self.table:
            self._rearm.set()
        try:
            self.table.heartbeat(address, services, self._clock())
        except TableFull as exc:
            response = self._reply(503, str(exc))
            response.headers["Retry-After"] = "60"
            return response
        finally:
            self._after(before)
        self.counts.heartbeats += 1
        return web.Response(status=200, headers=self._headers())

    async def _delete(self, request: web.Request) -> web.Response:
        if not self.tokens.may_write(request.headers.get("Authorization")):
            return self._unauthorized(write=True)
        try:
            address = server_header(request)
        except BadRequest as exc:
            return self._reply(400, str(exc))
        before = self.table.index
        removed = self.table.remove(address, self._clock())
        self._after(before)
        if not removed:
            return self._reply(404, f"{address} is not registered")
        self.counts.deregistrations += 1
        return web.Response(status=200, headers=self._headers())

    async def _dashboard(self, request: web.Request) -> web.Response:
        if not self._may_read(request, page=True):
            return self._unauthorized(write=False)
        return web.Response(body=self._page, headers=PAGE_HEADERS)

    async def _metrics(self, request: web.Request) -> web.Response:
        # Outside every limit on the registry path: a scrape parks nothing, takes no slot,
        # and changes nothing but dropping expired servers, as any GET does.
        if not self._may_read(request):
            return self._unauthorized(write=False)
        return web.Response(body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE})

    async def _get(self, request: web.Request) -> web.Response:
        if not self._may_read(request, page=prefers_html(request.headers.get("Accept", ""))):
            return self._unauthorized(write=False)
        try:
            service = query_service(request)
            index = query_index(request)
            wait = query_wait(request, self.max_wait)
        except BadRequest as exc:
            return self._reply(400, str(exc))
        # A browser gets the dashboard (which watches through JSON), never a long poll.
        html = prefers_html(request.headers.get("Accept", ""))
        self._expire()
        if index is not None and index == self.table.index and not self._closing and not html:
            peer = request.remote or ""
            mine = self._watchers_by_peer.get(peer, 0)
            refusal = None
            if self._watchers >= self.max_watchers:
                refusal = f"too many watchers ({self.max_watchers}); poll instead"
            elif mine >= self.max_watchers_per_peer:
                refusal = f"too many watchers from {peer or 'this peer'} ({self.max_watchers_per_peer}); poll instead"
            if refusal is not None:
                response = self._reply(429, refusal)
                response.headers["Retry-After"] = "1"
                return response
            self._watchers += 1
            self._watchers_by_peer[peer] = mine + 1
            try:
                async with asyncio.timeout(min(DEFAULT_WAIT, self.max_wait) if wait is None else wait):
                    await self._changed.wait()
            except TimeoutError:
                pass  # the wait is over: answer with the unchanged list
            finally:
                self._watchers -= 1
                left = self._watchers_by_peer[peer] - 1
                if left:
                    self._watchers_by_peer[peer] = left
                else:
                    del self._watchers_by_peer[peer]
        return self._render(request, service, html)

    def _render(self, request: web.Request, service: str | None, html: bool) -> web.Response:
        now = self._expire()
        headers = self._headers()
        headers[H_SERVERS] = self.lists.servers_header(now, service)
        headers["Vary"] = "Accept"  # one URL, three representations
        if html:
            return web.Response(status=200, headers={**headers, **PAGE_HEADERS}, body=self._page)
        if not accepts_json(request.headers.get("Accept", "")):
            return web.Response(status=200, headers=headers)
        head: dict[str, object] = {"index": self.table.index, "timeout": self.timeout,
                                   "uptime": round(now - self._started_at, 3),
                                   "period": self.heartbeat_period, "instance": self.instance}
        return web.Response(status=200, headers=headers, body=self.lists.json(now, service, head),
                            content_type="application/json")


class _Site(web.BaseSite):
    """aiohttp's TCPSite with a bound on the TLS handshake, which TCPSite does not offer:
    the listening server is made here, with ``ssl_handshake_timeout``."""

    __slots__ = ("_handshake_timeout", "_host", "_port")

    def __init__(self, runner: web.BaseRunner, host: str, port: int, ssl: _ssl.SSLContext | None,
                 handshake_timeout: float) -> None:
        super().__init__(runner, ssl_context=ssl)
        self._host = host
        self._port = port
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        return f"{'https' if self._ssl_context is not None else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        # Each connection's transport is released when lost (see geerpc.httpconn).
        self._server = await asyncio.get_running_loop().create_server(
            releasing(server), self._host, self._port, ssl=self._ssl_context, backlog=self._backlog, reuse_address=True,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context is not None else None)
