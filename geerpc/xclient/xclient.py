"""XClient: one call over many servers, with selection, failover and broadcast.

It keeps one Client per server address (``pool.Connections``: dials shared, no lock
held across a dial or a call; servers whose handshake fails skipped for a while;
stuck connections dialed afresh).

Failover (rpcx's Failover mode): when a server cannot be reached (dial refused or
timed out), or its connection is found closed before any reply, or it answers
Unavailable because it is stopping, the call moves on to another server, each
server at most once, all within the caller's timeout. A call whose connection
dropped *after* it was sent may have run on the lost server: failover can run it
twice, so use ``failover=False`` for calls that must not repeat. A RemoteError (the
method ran and raised) is never retried, and a timeout only for a call marked
``idempotent=True`` on an XClient with ``retry=`` (below).

Routing around trouble (README, *Calls that route around trouble*): LEAST_LOADED
picks by what this XClient measures (``balance.Balancer``: peak-EWMA latency,
pending attempts, outlier ejection); ``retry=`` and ``hedge_after=`` make calls
marked ``idempotent=True`` a run of attempts (``attempts.run``, with the budget in
``retry.py``). Failover is not a retry: it spends no budget. Strategy for the cost of
features left off: with RANDOM or ROUND_ROBIN and neither retry nor hedging, a call
takes ``_call`` as before, which measures nothing; ``call()`` only adds a check of
``idempotent`` and of one flag, and ``_pick`` one attribute test.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator, Mapping, Sequence
from ssl import SSLContext
from types import TracebackType
from typing import Any

from ..client import Client
from ..context import CURRENT, Reply, outgoing_deadline
from ..deadline import Deadline, check_timeout
from ..errors import (
    CallTimeout,
    ConnectError,
    ConnectionClosed,
    ConnectTimeout,
    HandshakeError,
    NoServerAvailable,
    RemoteError,
    Unavailable,
)
from ..interceptors import ClientInterceptor, check_interceptors
from . import attempts, streams
from .balance import Balancer, Outcome, ServerStats
from .broadcast import call_all
from .discovery import Discovery, MultiServerDiscovery
from .pool import SKIP_PERIOD, TIMEOUTS_TO_REDIAL, Connections
from .retry import Retry, check_hedge_after
from .selection import SelectMode, pick
from .urls import discovery_for

__all__ = ["SKIP_PERIOD", "TIMEOUTS_TO_REDIAL", "XClient"]

log = logging.getLogger("geerpc.xclient")

# Errors after which the method did not run, or the connection failed before any reply.
_FAILOVER_ERRORS = (ConnectError, ConnectTimeout, ConnectionClosed, Unavailable)


class XClient:
    """Calls services offered by the servers that ``discovery`` knows.

    Creating one does not connect: servers are dialled by the first calls, and each
    connection is kept for the next. Use it with ``async with``, or call ``close()``.

    Args:
        discovery: a Discovery, a list of server addresses (``["tcp@host:port", ...]``),
            or a registry URL (``http://...`` or ``https://...`` for the built-in
            registry, ``etcd://...`` for etcd).
        mode: how a call picks its server, SelectMode.RANDOM (default),
            SelectMode.ROUND_ROBIN, or SelectMode.LEAST_LOADED (the lower of two
            random servers' latency x (pending + 1), as measured here); a broadcast
            calls them all.
        failover: when True (default), a call whose server cannot be reached or is
            stopping moves on to another server (see the module docstring).
        connect_timeout: seconds for each dial and handshake, default 10.0; None or
            infinity for no limit. A call's own timeout bounds its dials too.
        close_discovery: when True (default), ``close()`` closes the discovery too;
            pass False to share one discovery between XClients.
        interceptors: ``async`` callables ``(call, proceed)`` run around every
            attempt, outermost first: a call that fails over runs them once per
            server tried, and a broadcast once per server (``geerpc.interceptors``);
            default None, no interceptor.
        ssl: the ``ssl.SSLContext`` for servers listed as ``tls@`` addresses (default
            None: ``ssl.create_default_context()``); ``tcp@`` ones are dialed without TLS.
        token: sent with every call, as for ``geerpc.dial`` (default None: none).
        insecure_token: as for ``geerpc.dial`` (default False: a token never goes in
            clear to another host).
        eject: eject a server after 5 failures in a row (30 s times the times it was
            ejected, at most 5 min; at most half the servers; one probe call when the
            time is up). Default None: on for LEAST_LOADED, which it needs.
        retry: a ``Retry``: calls marked ``idempotent=True`` are retried after their
            attempt's timeout, Unavailable or a connection failure, within the
            call's timeout and the retry budget. Default None: no retries.
        hedge_after: seconds without a reply after which an idempotent call sends one
            more copy to another server (the first reply wins, the other is
            cancelled), or ``"p95"``: this XClient's running 95th percentile of
            latency. Hedges spend the retry budget (10 % of calls without a Retry).
            Default None: no hedging.

    Raises:
        ValueError: a string that is not a registry URL, a mode that is not a
            SelectMode, a ``connect_timeout`` of zero, below zero or NaN,
            ``eject=True`` with a mode other than LEAST_LOADED, a ``hedge_after``
            not positive or a string other than ``"p95"``.
        TypeError: a ``connect_timeout`` or ``hedge_after`` that is not a number, an
            ``eject`` that is not a bool or None, a ``retry`` that is not a Retry.
    """

    def __init__(
        self,
        discovery: Discovery | str | list[str],
        mode: SelectMode = SelectMode.RANDOM,
        *,
        failover: bool = True,
        connect_timeout: float | None = 10.0,
        close_discovery: bool = True,
        interceptors: Sequence[ClientInterceptor] | None = None,
        ssl: SSLContext | None = None,
        token: str | None = None,
        insecure_token: bool = False,
        eject: bool | None = None,
        retry: Retry | None = None,
        hedge_after: float | str | None = None,
    ) -> None:
        if not isinstance(mode, SelectMode):
            raise ValueError(f"mode must be a SelectMode, not {mode!r}")
        if eject is not None and not isinstance(eject, bool):
            raise TypeError(f"eject must be True, False or None, not {type(eject).__name__}")
        if eject and mode is not SelectMode.LEAST_LOADED:
            raise ValueError(f"eject=True needs SelectMode.LEAST_LOADED, not {mode}: ejection works on the "
                             f"latency and failures LEAST_LOADED measures, and RANDOM and ROUND_ROBIN promise "
                             f"an even spread over every listed server")
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a geerpc.xclient.Retry or None, not {type(retry).__name__}")
        hedge = check_hedge_after(hedge_after)
        check_timeout(connect_timeout)  # refused here, not at the first dial
        self._pool = pool = Connections(connect_timeout=connect_timeout, ssl=ssl, token=token,
                                        insecure_token=insecure_token,
                                        interceptors=check_interceptors(interceptors, "client"))
        self._clients, self._dials, self._skipped = pool.clients, pool.dials, pool.skipped
        self._ssl, self._token, self._insecure_token = ssl, token, insecure_token
        self.discovery = _as_discovery(discovery)
        self.mode = mode
        self.failover = failover
        self.connect_timeout = connect_timeout
        self._close_discovery = close_discovery
        self._seen_version = -1
        self._closed = False
        self._rng = random.Random()
        self._index = self._rng.randrange(1 << 30)  # round robin while some servers are skipped
        least = mode is SelectMode.LEAST_LOADED
        self._balancer = Balancer(eject=eject is not False) if least else None
        self._policy = attempts.Policy(retry, hedge, self._rng) if retry is not None or hedge is not None else None
        self._plain = not least and self._policy is None  # the path that measures nothing

    @property
    def interceptors(self) -> tuple[ClientInterceptor, ...]:
        """The client interceptors run around every attempt."""
        return self._pool.interceptors

    @interceptors.setter
    def interceptors(self, value: Sequence[ClientInterceptor] | None) -> None:
        self._pool.interceptors = check_interceptors(value, "client")

    async def _prune(self) -> None:
        """Close idle connections to servers that left the list."""
        version = self.discovery.version
        if version == self._seen_version:
            return
        self._seen_version = version
        current = set(await self.discovery.get_all())
        if self._balancer is not None:
            self._balancer.update(current, asyncio.get_running_loop().time())
        self._pool.keep_only(current)

    # ------------------------------------------------------------- calls

    async def call(self, service_method: str, /, *args: Any, timeout: float | None = None,
                   metadata: Mapping[str, str | bytes] | None = None, idempotent: bool = False,
                   **kwargs: Any) -> Any:
        """Call one server chosen by the select mode; fail over as the module says.

        ``timeout`` and ``metadata`` are as for ``Client.call`` (inside a handler,
        the handler's deadline follows). ``idempotent=True`` says the call may run
        more than once: only such calls are retried or hedged (``retry=``,
        ``hedge_after=``); it is not sent to the server. Raises NoServerAvailable
        when discovery offers no server for the service (or every one is skipped,
        see the module docstring), CallTimeout when ``timeout`` passes (dials,
        failover and retries included), TypeError for an ``idempotent`` that is not
        a bool, and otherwise what ``Client.call`` raises, a bad ``timeout`` included.
        """
        if idempotent is not False and idempotent is not True:
            raise TypeError(f"idempotent must be True or False, not {type(idempotent).__name__}")
        if self._plain:
            return await self._call(service_method, args, kwargs, timeout, metadata, False)
        return await self._managed(service_method, args, kwargs, timeout, metadata, False, idempotent)

    async def invoke(self, service_method: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None,
                     *, timeout: float | None = None, metadata: Mapping[str, str | bytes] | None = None,
                     idempotent: bool = False) -> Reply:
        """``call()`` in full: the result and the reply's metadata, as a ``Reply``;
        the remote arguments may be named ``timeout``, ``metadata`` or ``idempotent``."""
        if idempotent is not False and idempotent is not True:
            raise TypeError(f"idempotent must be True or False, not {type(idempotent).__name__}")
        if self._plain:
            reply: Reply = await self._call(service_method, args, kwargs or {}, timeout, metadata, True)
        else:
            reply = await self._managed(service_method, args, kwargs or {}, timeout, metadata, True, idempotent)
        return reply

    def stream(self, service_method: str, /, *args: Any, timeout: float | None = None,
               metadata: Mapping[str, str | bytes] | None = None, **kwargs: Any) -> AsyncGenerator[Any, None]:
        """Stream from one server chosen as for ``call()``: ``async for item in xc.stream(...)``.

        Failover only before the first item (``xclient.streams``); after it, errors
        reach the consumer as ``Client.stream``'s do. ``timeout`` bounds the whole
        stream, dials included. Leaving the loop closes the server's generator.
        """
        self._check_open()
        deadline = _deadline(timeout, asyncio.get_running_loop().time(), service_method)
        return streams.stream(self._pick, self._pool.get, self._failed_over, self.interceptors, deadline,
                              service_method, args, kwargs, metadata, _FAILOVER_ERRORS)

    def stats(self) -> dict[str, ServerStats]:
        """Per server, what this XClient measured: pending attempts, EWMA latency
        (seconds), the loop time its ejection ends, failures in a row, ejections.

        With RANDOM or ROUND_ROBIN nothing is measured: each connected server's
        pending calls, and None or 0 for the rest. Call it on the XClient's loop.
        """
        if self._balancer is not None:
            return self._balancer.stats(asyncio.get_running_loop().time())
        return {address: ServerStats(client.pending, None, None, 0, 0)
                for address, client in sorted(self._clients.items())}

    async def _managed(self, service_method: str, args: Sequence[Any], kwargs: dict[str, Any],
                       timeout: float | None, metadata: Mapping[str, str | bytes] | None, full: bool,
                       idempotent: bool) -> Any:
        """A call that is measured (LEAST_LOADED), retried or hedged."""
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = _deadline(timeout, loop.time(), service_method)
        service = service_method.rpartition(".")[0] or None
        policy = self._policy
        if policy is None or not idempotent:
            if policy is not None:
                policy.budget.record_call(loop.time())  # the budget is a share of every call
            return await self._attempt(service, service_method, args, kwargs, metadata, full, deadline, set(), False)

        def attempt(until: Deadline | None, used: set[str], strict: bool) -> Any:
            return self._attempt(service, service_method, args, kwargs, metadata, full, until, used, strict)

        return await attempts.run(policy, attempt, deadline, service_method)

    async def _attempt(self, service: str | None, service_method: str, args: Sequence[Any],
                       kwargs: dict[str, Any], metadata: Mapping[str, str | bytes] | None, full: bool,
                       deadline: Deadline | None, used: set[str], strict: bool) -> Any:
        """One attempt within ``deadline``, measured: ``_call``'s failover loop, picking
        a server not in ``used`` when there is one (never one in it when ``strict``)."""
        loop = asyncio.get_running_loop()
        at = None if deadline is None else deadline.at
        balancer = self._balancer
        latencies = None if self._policy is None else self._policy.latencies
        tried: set[str] = set()
        last_error: BaseException | None = None
        try:
            while True:
                self._check_open()  # closed meanwhile: no new dial
                client: Client | None = None
                try:
                    async with asyncio.timeout_at(at):
                        address = await self._pick(service, service_method, tried, last_error, used, strict)
                except TimeoutError as exc:
                    if isinstance(exc, CallTimeout) or deadline is None:
                        raise
                    raise deadline.expired_error(service_method, "finding a server") from None
                tried.add(address)
                used.add(address)
                ticket = None if balancer is None else balancer.begin(address, loop.time())
                outcome = Outcome.CANCELLED
                sent = loop.time()
                try:
                    async with asyncio.timeout_at(at):
                        client = await self._pool.get(address)
                    sent = loop.time()
                    if ticket is not None:
                        ticket.sent = sent
                    result = await self._pool.call_on(address, client, deadline, service_method, args, kwargs, metadata, full)
                    outcome = Outcome.REPLY
                    return result
                except _FAILOVER_ERRORS as exc:
                    outcome = Outcome.FAILED
                    if not self._failed_over(address, client, exc, service_method):
                        raise
                    last_error = exc
                except CallTimeout:
                    outcome = Outcome.TIMEOUT
                    raise
                except RemoteError:
                    outcome = Outcome.REPLY
                    raise
                except TimeoutError:
                    outcome = Outcome.FAILED
                    if deadline is None:
                        raise
                    raise deadline.expired_error(service_method, f"dialing {address}") from None
                finally:
                    now = loop.time()
                    if ticket is not None:
                        assert balancer is not None
                        balancer.end(ticket, outcome, now)
                    if latencies is not None and (outcome is Outcome.REPLY or outcome is Outcome.TIMEOUT):
                        latencies.record(now - sent)
                await self._prune()
        finally:
            # A failover's error was caught in this frame, so its traceback holds the
            # frame: kept in a name of it, it would make every failover a reference cycle.
            last_error = None

    def _failed_over(self, address: str, client: Client | None, exc: BaseException, service_method: str) -> bool:
        """After a failover error on ``address``: skip or forget it as needed; True
        when the call moves on to another server."""
        if isinstance(exc, HandshakeError):
            self._pool.skip(address, exc)
        if not isinstance(exc, Unavailable):
            # Unavailable: the server is stopping but drains calls others have on
            # this connection; stop choosing it (it is deregistering) but keep it.
            self._pool.forget(address, client)
        if not self.failover:
            return False
        log.info("%s failed on %s (%s); failing over", service_method, address, exc)
        return True

    async def _call(self, service_method: str, args: Sequence[Any], kwargs: dict[str, Any],
                    timeout: float | None, metadata: Mapping[str, str | bytes] | None, full: bool) -> Any:
        self._check_open()
        loop = asyncio.get_running_loop()
        deadline = _deadline(timeout, loop.time(), service_method)  # one for discovery, dials and calls
        at = None if deadline is None else deadline.at
        service = service_method.rpartition(".")[0] or None
        tried: set[str] = set()
        last_error: BaseException | None = None
        try:
            while True:
                client: Client | None = None
                try:
                    async with asyncio.timeout_at(at):
                        address = await self._pick(service, service_method, tried, last_error)  # raises when all failed
                except TimeoutError as exc:
                    if isinstance(exc, CallTimeout) or deadline is None:
                        raise
                    raise deadline.expired_error(service_method, "finding a server") from None
                tried.add(address)
                try:
                    async with asyncio.timeout_at(at):
                        client = await self._pool.get(address)
                    return await self._pool.call_on(address, client, deadline, service_method, args, kwargs, metadata, full)
                except _FAILOVER_ERRORS as exc:
                    if not self._failed_over(address, client, exc, service_method):
                        raise
                    last_error = exc
                except TimeoutError as exc:
                    if isinstance(exc, CallTimeout) or deadline is None:
                        raise
                    raise deadline.expired_error(service_method, f"dialing {address}") from None
                await self._prune()
        finally:
            # A failover's error was caught in this frame, so its traceback holds the
            # frame: kept in a name of it, it would make every failover a reference cycle.
            last_error = None

    async def _pick(self, service: str | None, service_method: str, tried: set[str],
                    last_error: BaseException | None, used: set[str] | frozenset[str] = frozenset(),
                    strict: bool = False) -> str:
        """The server for a call's next try: by the select mode, never one in ``tried``
        (this attempt's failovers), one not in ``used`` (the call's other attempts)
        when there is one; with ``strict`` (a hedge) raise ``attempts.NoSpare`` then.

        This is the one place a server is chosen: whatever sends something to one
        server (a call, an attempt) comes here. Raises ``last_error`` when every
        server was tried, NoServerAvailable when there is none.
        """
        skipped = self._skipped
        clock = asyncio.get_running_loop().time
        if self._balancer is not None:
            return await self._pick_least_loaded(service, service_method, tried, last_error, used, strict)
        if not tried and not used:
            if not skipped:
                address = await self.discovery.get(self.mode, service)
                await self._prune()
                return address
            # Some servers are skipped: pick among the others here, with the select
            # mode and a round-robin counter of our own, so that ROUND_ROBIN still
            # takes them in turn (asking the discovery again would favour the server
            # after a skipped one). An empty list raises the discovery's own error.
            servers = await self.discovery.get_all(service)
            await self._prune()
            if not servers:
                return await self.discovery.get(self.mode, service)
            fit = skipped.fit(servers, clock())
            if fit:
                address, self._index = pick(fit, self.mode, self._index, self._rng)
                return address
        servers = await self.discovery.get_all(service)
        untried = [a for a in skipped.fit(servers, clock()) if a not in tried]
        if not untried:
            if last_error is not None:
                raise last_error
            raise NoServerAvailable(f"no server{_offering(service)} to call {service_method}: "
                                    f"{skipped.why(servers, clock())}")
        if used:
            preferred = [a for a in untried if a not in used]
            if preferred:
                untried = preferred
            elif strict:
                raise attempts.NoSpare(service_method)
        return untried[self._rng.randrange(len(untried))]

    async def _pick_least_loaded(self, service: str | None, service_method: str, tried: set[str],
                                 last_error: BaseException | None, used: set[str] | frozenset[str],
                                 strict: bool) -> str:
        assert self._balancer is not None
        servers = await self.discovery.get_all(service)
        await self._prune()
        if not servers:
            return await self.discovery.get(self.mode, service)  # the discovery's own error
        now = asyncio.get_running_loop().time()
        fit = self._skipped.fit(servers, now) if self._skipped else servers
        if tried:
            fit = [a for a in fit if a not in tried]
        if not fit:
            if last_error is not None:
                raise last_error
            raise NoServerAvailable(f"no server{_offering(service)} to call {service_method}: "
                                    f"{self._skipped.why(servers, now)}")
        address = self._balancer.pick(fit, now, self._rng, used, strict)
        if address is None:
            raise attempts.NoSpare(service_method)
        return address

    async def broadcast(self, service_method: str, /, *args: Any, timeout: float | None = None,
                        metadata: Mapping[str, str | bytes] | None = None, **kwargs: Any) -> Any:
        """Call every server offering the service at once; return one successful reply.

        The first error cancels the other calls (the cancellation reaches their
        servers) and is raised. ``timeout`` bounds the whole broadcast. Servers
        whose handshake fails are skipped (see the module docstring). Raises
        NoServerAvailable when there is no server left to call (GeeRPC silently
        succeeds), and TypeError or ValueError for a bad ``timeout``, as ``call``.
        """
        self._check_open()
        service = service_method.rpartition(".")[0] or None
        loop = asyncio.get_running_loop()
        deadline = _deadline(timeout, loop.time(), f"broadcast of {service_method}")
        at = None if deadline is None else deadline.at
        try:
            async with asyncio.timeout_at(at):
                servers = await self.discovery.get_all(service)
                await self._prune()
        except TimeoutError as exc:
            if isinstance(exc, CallTimeout) or deadline is None:
                raise
            raise deadline.expired_error(f"broadcast of {service_method}", "finding the servers") from None
        if not servers:
            raise NoServerAvailable(f"no server{_offering(service)} to broadcast {service_method} to")
        listed = servers
        if self._skipped:
            servers = self._skipped.fit(listed, loop.time())
            if not servers:
                raise NoServerAvailable(f"no server{_offering(service)} to broadcast {service_method} to: "
                                        f"{self._skipped.why(listed, loop.time())}")
        return await call_all(self._pool, servers, deadline, service_method, args, kwargs, metadata,
                              lambda: NoServerAvailable(f"no server{_offering(service)} to broadcast "
                                                        f"{service_method} to: {self._skipped.why(listed, loop.time())}"))

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionClosed("XClient is closed")

    # ------------------------------------------------------------- life cycle

    async def close(self) -> None:
        """Close every connection (and the discovery, unless told not to). Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self._pool.close()
        if self._close_discovery:
            await self.discovery.close()

    async def __aenter__(self) -> XClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()


def _deadline(timeout: float | None, now: float, what: str) -> Deadline | None:
    """The deadline of a call or broadcast: its timeout's, or inside a handler the
    handler's when that is sooner (``context.outgoing_deadline``)."""
    deadline = Deadline.after(timeout, now)
    if CURRENT.get(None) is not None:
        deadline = outgoing_deadline(deadline, now, what)
    return deadline


def _offering(service: str | None) -> str:
    return f" offering {service!r}" if service else ""


def _as_discovery(discovery: Discovery | str | list[str]) -> Discovery:
    if isinstance(discovery, str):
        return discovery_for(discovery)
    if isinstance(discovery, list):
        return MultiServerDiscovery(discovery)
    return discovery
