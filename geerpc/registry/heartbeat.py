"""Heartbeats: how a server proves to a registry that it is alive, and how it leaves.

This layer is an HTTP client of the registry (``server.py`` here, GeeRPC's own, or
anything speaking its two headers). It imports nothing from the RPC layers.

Unlike GeeRPC, whose heartbeat goroutine gives up after one failed POST, a
``Heartbeat`` retries with exponential backoff and jitter until it is stopped, and
deregisters on stop so a stopped server does not stay listed for minutes.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Final, Protocol, Self
from urllib.parse import urlsplit

import aiohttp

from ..address import parse_address
from .server import H_SERVER, H_SERVICES, H_TIMEOUT
from .table import MAX_SERVICES, check_service_name

__all__ = [
    "DEFAULT_PERIOD",
    "MIN_PERIOD",
    "Announcement",
    "Heartbeat",
    "announce",
    "heartbeat",
    "period_for",
]

log = logging.getLogger("geerpc.registry")

#: GeeRPC's default: the default registry timeout (5 minutes) less one minute.
DEFAULT_PERIOD: Final = 240.0
#: The shortest period, whatever the registry's timeout or the ``period`` argument:
#: the period comes from a reply, and a registry that says "0.0001" (hostile or
#: misconfigured) must not turn a heartbeat into a POST loop.
MIN_PERIOD: Final = 0.1
_FIRST_BACKOFF: Final = 0.5  # also the floor of the backoff cap: a retry waits 0.25 s or more
_STOP_TIMEOUT: Final = 2.0


def period_for(timeout: float | None) -> float:
    """The heartbeat period for a registry that drops servers after ``timeout`` seconds.

    The timeout less a minute when it is 180 s or more (GeeRPC's 300 -> 240), else a
    third of it (30 -> 10), so a server survives a missed beat; 240 s when the
    registry says nothing (``None``, GeeRPC's registry) or never expires (0). Never
    less than ``MIN_PERIOD``: a registry whose timeout is below 0.3 s cannot keep
    anybody listed anyway. A failed beat is retried within seconds, not a period
    later, so 240 of 300 is safe.
    """
    if timeout is None or not math.isfinite(timeout) or timeout <= 0:
        return DEFAULT_PERIOD
    if timeout >= 180:
        return timeout - 60
    return max(MIN_PERIOD, timeout / 3)


def _retry_delay(failures: int, period: float, rng: random.Random | None = None) -> float:
    """How long to wait after ``failures`` failed beats in a row (``failures >= 1``).

    Exponential from 0.5 s, capped at the period, or at 0.5 s when the period is
    shorter, with equal jitter: half fixed, so we never spin (at least 0.25 s), half
    random, so a fleet of servers does not hit a restarted registry in lockstep.
    """
    cap = max(period, _FIRST_BACKOFF)
    backoff = min(cap, _FIRST_BACKOFF * 2.0 ** min(max(failures, 1) - 1, 30))
    return backoff / 2 + (rng or random).uniform(0, backoff / 2)


def _parse_timeout(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        timeout = float(value)
    except ValueError:
        return None
    return timeout if math.isfinite(timeout) and timeout >= 0 else None


class Announcement(Protocol):
    """What ``announce()`` returns: a registration that ends with ``stop()``."""

    async def stop(self) -> None: ...


class Heartbeat:
    """A background task that POSTs ``address`` to the registry at ``url`` every period.

    ``period=None`` follows the registry: each POST reply's ``X-Geerpc-Timeout``
    sets the next period (see ``period_for``). An explicit ``period`` below
    ``MIN_PERIOD`` is raised to it (ten beats a second is already more than any
    registry timeout needs). ``services`` are sent as ``X-Geerpc-Services`` (None:
    not sent, the server counts as offering every service); each name must pass the
    registry's rule (``check_service_name``). ``timeout`` bounds each POST (finite,
    above 0). Create it with ``heartbeat()``, or call ``start()`` yourself;
    ``stop()`` ends it and deregisters. Usable as ``async with``.

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
    ) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"registry URL must be http:// or https://, not {url!r}")
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
        self._fixed_period = None if period is None else max(MIN_PERIOD, float(period))
        self.period = DEFAULT_PERIOD if self._fixed_period is None else self._fixed_period
        self.failures = 0  # consecutive failed POSTs; 0 after a success
        self.beats = 0  # successful POSTs so far
        self._task: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._first = asyncio.Event()
        self._first_ok = False
        self._attempted = False
        self._stopped = False

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
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- internals -------------------------------------------------------------------

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _headers(self) -> dict[str, str]:
        headers = {H_SERVER: self.address}
        if self.services is not None:
            headers[H_SERVICES] = ",".join(self.services)
        return headers

    async def _run(self) -> None:
        while True:
            ok = await self._beat()
            if not self._first.is_set():
                self._first_ok = ok
                self._first.set()
            await asyncio.sleep(self.period if ok else _retry_delay(self.failures, self.period))

    async def _beat(self) -> bool:
        self._attempted = True
        try:
            async with asyncio.timeout(self.timeout):
                async with self._get_session().post(self.url, headers=self._headers()) as response:
                    if response.status != 200:
                        reason = (await response.content.read(200)).decode("utf-8", "replace").strip()
                        raise _HTTPStatus(f"HTTP {response.status} {reason}".strip())
                    registry_timeout = _parse_timeout(response.headers.get(H_TIMEOUT))
        except (aiohttp.ClientError, OSError, TimeoutError, _HTTPStatus) as exc:
            self.failures += 1
            level = logging.WARNING if self.failures == 1 else logging.DEBUG
            log.log(level, "heartbeat of %s to %s failed (%d in a row): %s",
                    self.address, self.url, self.failures, _describe(exc))
            return False
        if self.failures:
            log.info("heartbeat of %s to %s works again after %d failure(s)",
                     self.address, self.url, self.failures)
        self.failures = 0
        self.beats += 1
        if self._fixed_period is None:
            self.period = period_for(registry_timeout)
        return True

    async def _deregister(self) -> None:
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                async with self._get_session().delete(self.url, headers={H_SERVER: self.address}) as response:
                    # 404: already gone (expired, or a restarted registry); 405: GeeRPC's
                    # registry cannot deregister, the entry will expire.
                    if response.status not in (200, 404):
                        log.info("deregistering %s from %s: HTTP %d; it will expire instead",
                                 self.address, self.url, response.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("could not deregister %s from %s (%s); it will expire instead",
                     self.address, self.url, _describe(exc))


def _positive_seconds(value: object) -> bool:
    # bool is an int, and None, NaN or infinity as a timeout would let a POST hang forever.
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


class _HTTPStatus(Exception):
    """The registry answered, but not with 200."""


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
) -> Heartbeat:
    """Start heartbeating ``address`` to the registry at ``url``; needs a running loop.

    The first POST is sent at once; ``await hb.wait_first()`` to know how it went,
    ``await hb.stop()`` to stop and deregister. Raises ``ValueError`` for a bad URL,
    address, period, timeout or service name, ``RuntimeError`` without a running
    event loop.
    """
    beat = Heartbeat(url, address, period, services=services, timeout=timeout)
    beat.start()
    return beat


async def announce(url: str, address: str, services: list[str] | tuple[str, ...] | None) -> Announcement:
    """Register ``address`` offering ``services`` with the registry at ``url`` until stopped.

    ``http://`` and ``https://`` URLs get a ``Heartbeat``; this returns after its
    first POST, successful or not (a server whose registry is down still serves,
    and the heartbeat keeps retrying). ``etcd://`` URLs use ``geerpc.registry.etcd``,
    which raises ``RegistryError`` when etcd is unreachable. Other schemes:
    ``ValueError``.
    """
    scheme = urlsplit(url).scheme
    if scheme in ("http", "https"):
        beat = heartbeat(url, address, services=services)
        if not await beat.wait_first():
            log.warning("registry %s did not accept %s yet; the heartbeat keeps retrying", url, address)
        return beat
    if scheme == "etcd":
        from .etcd import register  # optional dependency: only imported when used

        return await register(url, address, services)
    raise ValueError(f"registry URL {url!r}: want http://, https:// or etcd://")
