"""Heartbeats: how a server proves to a registry that it is alive, and how it leaves.

This layer is an HTTP client of the registry (``server.py`` here, GeeRPC's own, or
anything speaking its two headers); what both sides agree on is in ``contract.py``.
It imports nothing from the RPC layers or from the registry's server, and aiohttp
only once a heartbeat starts.

Unlike GeeRPC, whose heartbeat goroutine gives up after one failed POST, a
``Heartbeat`` retries with exponential backoff and jitter until it is stopped, and
deregisters on stop so a stopped server does not stay listed for minutes. It beats
at the period the registry asks for, and retries a failed beat at least every
``RELIST_PERIOD``, so a restarted registry lists it again within seconds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import random
import ssl as _ssl
import time
import warnings
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol, Self
from urllib.parse import urlsplit

from ..address import parse_address
from ..backoff import Backoff, FailureLog
from .auth import check_token
from .contract import (
    DEFAULT_PERIOD,
    H_INSTANCE,
    H_PERIOD,
    H_SERVER,
    H_SERVICES,
    H_TIMEOUT,
    MAX_SERVICES,
    MIN_PERIOD,
    RELIST_PERIOD,
    check_service_name,
    heartbeat_period,
    parse_instance,
    parse_seconds,
    period_for,
)

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "DEFAULT_PERIOD",
    "MIN_PERIOD",
    "Announcement",
    "Heartbeat",
    "announce",
    "announce_heartbeat",
    "heartbeat",
    "period_for",
]

log = logging.getLogger("geerpc.registry")

_FIRST_BACKOFF: Final = 0.5  # also the floor of the backoff cap: a retry waits 0.25 s or more
_STOP_TIMEOUT: Final = 2.0
_PERIOD_JITTER: Final = 0.1


class Announcement(Protocol):
    """What ``announce()`` returns: a registration that ends with ``stop()``."""

    async def stop(self) -> None: ...


class Heartbeat:
    """A background task that POSTs ``address`` to the registry at ``url`` every period.

    ``period=None`` follows the registry: each POST reply's ``X-Geerpc-Period``
    and ``X-Geerpc-Timeout`` set the next period (see ``heartbeat_period``; 5 s
    with geerpc's registry by default, 240 s with GeeRPC's). An explicit ``period`` below
    ``MIN_PERIOD`` is raised to it (ten beats a second is already more than any
    registry timeout needs). ``services`` are sent as ``X-Geerpc-Services`` (None:
    not sent, the server counts as offering every service); each name must pass the
    registry's rule (``check_service_name``). ``timeout`` bounds each POST (finite,
    above 0). Create it with ``heartbeat()``, or call ``start()`` yourself;
    ``stop()`` ends it and deregisters. Usable as ``async with``. ``clock`` (a
    monotonic clock in seconds) and ``sleep`` are what the background task reads
    and waits with; tests pass a fake pair.

    ``token`` is sent as ``Authorization: Bearer <token>`` with every POST and
    DELETE (a registry made with ``Registry(token=...)`` wants it); a 401 is logged as
    the registry refusing our token and retried like any failure. ``ssl`` is the
    context an ``https://`` registry's certificate is verified with (None: the
    system's trusted certificates, ``ssl.create_default_context()``).

    A failed beat is retried with exponential backoff from 0.5 s, capped at the
    period or ``RELIST_PERIOD`` (5 s), whichever is shorter (but at least 0.5 s),
    with equal jitter: half fixed, so it never spins (0.25 s at the least), half
    random, so a fleet of servers does not hit a restarted registry in lockstep. A
    successful beat is followed by the next one a period later, or up to a tenth
    earlier (never below ``MIN_PERIOD``), for the same reason.
    ``instance`` is the registry run the last beat reached (``X-Geerpc-Instance``);
    ``restarts`` counts the times it changed between beats.

    A heartbeat whose loop ends without ``stop()`` (a program that forgot
    ``server.stop()``) closes its HTTP session itself and warns once with a
    ``ResourceWarning`` (shown with ``-W default`` or ``-X dev``): the server was
    not deregistered and stays listed until the registry's timeout.

    Raises ``ValueError`` for a bad URL, address, period, timeout or service name,
    so a mistake fails here rather than as a heartbeat retried forever.
    """

    def __init__(
        self,
        url: str,
        address: str,
        period: float | None = None,
        *,
        services: list[str] | tuple[str, ...] | frozenset[str] | None = None,
        timeout: float = 5.0,
        token: str | None = None,
        ssl: _ssl.SSLContext | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"registry URL must be http:// or https://, not {url!r}")
        check_token("token", token)
        if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(ssl).__name__}")
        if ssl is not None and urlsplit(url).scheme != "https":
            raise ValueError(f"ssl= is for an https:// registry, not {url!r}")
        parse_address(address)  # fail here, not in the background task
        if period is not None and not _positive_seconds(period):
            raise ValueError(f"period must be a positive number of seconds, not {period!r}")
        if not _positive_seconds(timeout):
            raise ValueError(f"timeout must be a positive, finite number of seconds, not {timeout!r}")
        if isinstance(services, str):
            raise ValueError("services must be a list of names, not one string")
        if services is not None:
            for name in services:
                check_service_name(name)
            if len(set(services)) > MAX_SERVICES:
                raise ValueError(f"too many services: {len(set(services))} (at most {MAX_SERVICES})")
        self.url = url
        self.address = address
        self.services = None if services is None else sorted(set(services))
        self.timeout = float(timeout)
        self._token = token
        self._ssl = ssl
        self._fixed_period = None if period is None else max(MIN_PERIOD, float(period))
        self.period = DEFAULT_PERIOD if self._fixed_period is None else self._fixed_period
        self.beats = 0  # successful POSTs so far
        self._clock = clock
        self._sleep = sleep
        self._backoff = Backoff(_FIRST_BACKOFF, _retry_cap(self.period))
        self.instance: str | None = None
        self.restarts = 0
        self._trouble = FailureLog()
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._forget: weakref.finalize[[aiohttp.ClientSession], Heartbeat] | None = None
        self._first = asyncio.Event()
        self._first_ok = False
        self._attempted = False
        self._stopped = False

    @property
    def failures(self) -> int:
        """Consecutive failed POSTs; 0 after a success."""
        return self._trouble.failures

    def start(self) -> None:
        """Start the background task (needs a running loop). Idempotent."""
        if self._stopped:
            raise RuntimeError("heartbeat already stopped")
        if self._task is None:
            asyncio.get_running_loop()  # RuntimeError if there is none
            self._task = asyncio.create_task(self._run(), name=f"geerpc-heartbeat {self.address}")

    async def wait_first(self) -> bool:
        """Wait until the first POST finished; True if it succeeded (False if stopped first)."""
        await self._first.wait()
        return self._first_ok

    async def stop(self) -> None:
        """Stop beating, deregister with DELETE (bounded, errors logged), close. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        task, self._task = self._task, None
        self._first.set()  # wait_first() must not hang on a heartbeat stopped before its first POST
        try:
            if task is not None:
                task.cancel()
                # gather returns the task's own CancelledError but lets the caller's through
                await asyncio.gather(task, return_exceptions=True)
            if self._attempted:
                await self._deregister()
        finally:  # also when the caller is cancelled meanwhile: never leak the session
            await self._close_session()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- internals -------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            import aiohttp  # at first use: importing geerpc.registry stays cheap

            # ssl: verify with the caller's context, or the system's (aiohttp's default: True).
            from ..httpconn import connector as make_connector

            connector = make_connector(self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(connector=connector)
            # Should this heartbeat be collected with its session open (its loop closed
            # under a pending task), close the session first, quietly.
            self._forget = weakref.finalize(self, _close_now, self._session)
        return self._session

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            if self._forget is not None:
                self._forget.detach()
            await session.close()

    def _next_beat(self) -> float:
        # Up to a tenth early, never late: servers started together (a deployment, a
        # reboot) drift apart instead of hitting the registry in one burst each period.
        return max(MIN_PERIOD, self.period * (1 - _PERIOD_JITTER * random.random()))

    def _headers(self) -> dict[str, str]:
        headers = self._delete_headers()
        if self.services is not None:
            headers[H_SERVICES] = ",".join(self.services)
        return headers

    def _delete_headers(self) -> dict[str, str]:
        headers = {H_SERVER: self.address}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _run(self) -> None:
        try:
            while True:
                ok = await self._beat()
                if not self._first.is_set():
                    self._first_ok = ok
                    self._first.set()
                await self._sleep(self._next_beat() if ok else self._backoff.delay(self.failures))
        except BaseException as exc:
            if not self._stopped:  # not stop(): the loop is ending under us, or the task was destroyed
                self._stopped = True
                self._first.set()
                if isinstance(exc, GeneratorExit):  # destroyed: no awaiting here
                    if self._forget is not None:
                        self._forget()
                    self._session = None
                else:  # cancelled: a cancellation's cleanup may await
                    await self._close_session()
                if self._attempted:
                    warnings.warn(
                        f"geerpc heartbeat of {self.address} to {self.url} ended without stop(): "
                        f"{self.address} was not deregistered and stays listed until the registry's "
                        "timeout; await server.stop() (or Heartbeat.stop()) before the event loop ends",
                        ResourceWarning, stacklevel=1,
                    )
            raise

    async def _beat(self) -> bool:
        import aiohttp

        self._attempted = True
        session = self._get_session()
        try:
            async with asyncio.timeout(self.timeout):
                async with session.post(self.url, headers=self._headers()) as response:
                    if response.status == 401:
                        raise _HTTPStatus(_refused_token(self._token))
                    if response.status != 200:
                        reason = (await response.content.read(200)).decode("utf-8", "replace").strip()
                        raise _HTTPStatus(f"HTTP {response.status} {reason}".strip())
                    registry_timeout = parse_seconds(response.headers.get(H_TIMEOUT))
                    asked = parse_seconds(response.headers.get(H_PERIOD))
                    instance = parse_instance(response.headers.get(H_INSTANCE))
        except (aiohttp.ClientError, OSError, TimeoutError, _HTTPStatus) as exc:
            level = logging.WARNING if self._trouble.failed(self._clock()) else logging.DEBUG
            log.log(level, "heartbeat of %s to %s failed (%d in a row): %s",
                    self.address, self.url, self.failures, _describe(exc))
            return False
        recovery = self._trouble.recovered(self._clock())
        if recovery is not None:
            log.info("heartbeat of %s to %s works again after %d failure(s) in %.1f s",
                     self.address, self.url, recovery.failures, recovery.seconds)
        self.beats += 1
        if instance is not None:
            if self.instance is not None and instance != self.instance:
                self.restarts += 1
                # This POST registered us with the new run already: nothing more to do.
                log.info("registry at %s restarted; %s is registered with it again", self.url, self.address)
            self.instance = instance
        if self._fixed_period is None:
            self.period = heartbeat_period(asked, registry_timeout)
            self._backoff.maximum = _retry_cap(self.period)
        return True

    async def _deregister(self) -> None:
        import aiohttp

        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                async with self._get_session().delete(self.url, headers=self._delete_headers()) as response:
                    # 404: already gone (expired, or a restarted registry); 405: GeeRPC's
                    # registry cannot deregister, the entry will expire.
                    if response.status == 401:
                        log.warning("deregistering %s from %s: %s; it will expire instead",
                                    self.address, self.url, _refused_token(self._token))
                    elif response.status not in (200, 404):
                        log.info("deregistering %s from %s: HTTP %d; it will expire instead",
                                 self.address, self.url, response.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("could not deregister %s from %s (%s); it will expire instead",
                     self.address, self.url, _describe(exc))


def _close_now(session: aiohttp.ClientSession) -> None:
    # Close without awaiting, so that aiohttp, collecting the session later, does not
    # print "Unclosed client session" and "Unclosed connector".
    connector = session.connector
    session.detach()  # the session counts as closed from here on
    if connector is None:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an awaitable dropped unawaited warns in aiohttp's words
        closing = connector.close()
        # The connector closes its sockets (or, its loop being closed, only marks itself
        # closed) in close()'s first step: a plain call in older aiohttp, the first step
        # of a coroutine in newer ones. Take that step here; what is left would only wait.
        if inspect.iscoroutine(closing):
            try:
                closing.send(None)
            except StopIteration:
                pass
            else:
                closing.close()
        del closing


def _retry_cap(period: float) -> float:
    # Never past RELIST_PERIOD, even for GeeRPC's 240 s period: after an outage the
    # registry must hear from every server within seconds of coming back.
    return max(_FIRST_BACKOFF, min(period, RELIST_PERIOD))


def _positive_seconds(value: object) -> bool:
    # bool is an int, and None, NaN or infinity as a timeout would let a POST hang forever.
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


class _HTTPStatus(Exception):
    """The registry answered, but not with 200."""


def _refused_token(token: str | None) -> str:
    if token is None:
        return "HTTP 401: the registry wants a token and we sent none (pass token=, or --registry-token)"
    return "HTTP 401: the registry refused our token (is it the registry's token?)"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


def heartbeat(
    url: str,
    address: str,
    period: float | None = None,
    *,
    services: list[str] | tuple[str, ...] | frozenset[str] | None = None,
    timeout: float = 5.0,
    token: str | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> Heartbeat:
    """Start heartbeating ``address`` to the registry at ``url``; needs a running loop.

    The first POST is sent at once; ``await hb.wait_first()`` to know how it went,
    ``await hb.stop()`` to stop and deregister. Raises ``ValueError`` for a bad URL,
    address, period, timeout, token or service name, ``RuntimeError`` without a running
    event loop. ``token`` and ``ssl``: see ``Heartbeat``.
    """
    beat = Heartbeat(url, address, period, services=services, timeout=timeout, token=token, ssl=ssl)
    beat.start()
    return beat


async def announce_heartbeat(
    url: str,
    address: str,
    services: list[str] | tuple[str, ...] | None,
    *,
    token: str | None = None,
    ssl: _ssl.SSLContext | None = None,
) -> Heartbeat:
    """Register ``address`` with the ``http://`` or ``https://`` registry at ``url``
    until stopped: a ``Heartbeat`` that sends ``token`` and verifies the registry with
    ``ssl``. Returns after the first POST, successful or not (a server whose registry
    is down, or refuses its token, still serves; the heartbeat keeps retrying and logs why).
    """
    beat = heartbeat(url, address, services=services, token=token, ssl=ssl)
    if not await beat.wait_first():
        log.warning("registry %s did not accept %s yet; the heartbeat keeps retrying", url, address)
    return beat


async def announce(url: str, address: str, services: list[str] | tuple[str, ...] | None) -> Announcement:
    """Register ``address`` offering ``services`` with the registry at ``url`` until stopped.

    ``http://`` and ``https://`` URLs get a ``Heartbeat``; this returns after its
    first POST, successful or not (a server whose registry is down still serves,
    and the heartbeat keeps retrying). ``etcd://`` URLs use ``geerpc.registry.etcd``,
    ``zk://`` URLs ``geerpc.registry.zookeeper``; both raise ``RegistryError`` when
    their registry is unreachable. Other schemes: ``ValueError``.
    """
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        beat = heartbeat(url, address, services=services)
        if not await beat.wait_first():
            log.warning("registry %s did not accept %s yet; the heartbeat keeps retrying", url, address)
        return beat
    if scheme in ("etcd", "etcds"):
        from .etcd import register  # optional dependency: only imported when used

        return await register(url, address, services)
    if scheme == "zk":
        from .zookeeper import register as register_zk  # optional dependency: only imported when used

        return await register_zk(url, address, services)
    raise ValueError(f"registry URL {url!r}: want http://, https://, etcd:// or zk://")
