"""RegistryDiscovery: the server list of an XClient, kept from a geerpc or GeeRPC registry.

This layer is an HTTP client of the registry; selection is inherited from
``ServerList``. It never holds a lock across a request: concurrent readers that find
the list stale share one in-flight fetch task.

How the list stays current:

* Reads (``get``/``get_all``) refresh the list when it is older than
  ``update_interval``, as GeeRPC does, unless a failure put us in backoff: then
  they serve the last good list at once.
* A watch (a long-poll GET with the index of the list we hold) is started on the
  first read; a geerpc registry answers it as soon as the list changes. While it is
  healthy the list counts as fresh. Against a registry without watches (GeeRPC's),
  the watch task simply polls every ``update_interval``.
* A registry that refuses the watch (4xx, 429 at its watcher cap) is up: we poll
  instead and try the watch again later. Watch failures have their own counter, which
  a good plain GET does not reset, so a watch that keeps failing backs off and is
  logged once, then at DEBUG.
* While the registry is unreachable (or lists nothing usable), the last good list is
  served; failures are retried with backoff and logged once, then at DEBUG.
* An empty answer replaces the list at once, unless the registry evidently restarted
  (its start time, our clock less its uptime, moved; or the last request failed): a
  restarted registry starts empty. Then the empty answer is held while the registry
  has been up for less than its timeout, after which every live server has beaten
  again; without uptime and timeout (GeeRPC's), for ``restart_grace`` seconds.
  docs/registry.md (*Discovery*) has the details.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import Any, Final, Self

import aiohttp

from ..address import parse_address
from ..errors import RegistryError
from ..registry.server import DEFAULT_TIMEOUT, H_INDEX, H_SERVERS
from .discovery import ServerList

__all__ = ["RegistryDiscovery"]

log = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSE: Final = 16 * 1024 * 1024
_MIN_WATCH_GAP: Final = 0.1  # coalesces bursts of changes into fewer watch answers
_MAX_LOGGED_BAD: Final = 1000
# A registry's start time, as we infer it (now less its uptime), wobbles by the time a
# reply takes to arrive plus its render cache (0.1 s); a move larger than this is a
# restart. A restart within a second of the previous one may go unseen this way, but
# it also breaks the request in flight, which counts as well.
_RESTART_TOLERANCE: Final = 1.0
_MAX_WATCH_PAUSE: Final = 300.0  # the longest we poll before trying a refused watch again


@dataclass(slots=True)
class _Answer:
    servers: dict[str, frozenset[str] | None]
    index: int | None
    received: float  # monotonic time the reply's head arrived
    timeout: float | None = None
    uptime: float | None = None


@dataclass(slots=True)
class _Outcome:
    ok: bool
    index: int | None = None
    error: str = ""
    refused: bool = False  # the registry answered a watch with a 4xx: it is up, the watch is unwelcome
    retry_after: float = 0.0


class _Refused(RegistryError):
    """The registry answered with a 4xx status (``Retry-After`` seconds, 0 if none)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryDiscovery(ServerList):
    """Servers listed by the registry at ``registry`` (its full URL).

    ``update_interval``: the longest a served list may be stale while the registry
    answers. ``timeout``: each HTTP request's own limit (a watch adds its ``wait``).
    ``watch``: long-poll for changes (falls back to polling when unsupported).
    ``max_response_bytes``: cap on a reply's body and on its list header.
    ``restart_grace``: see the module docstring. Close with ``await d.close()``.
    """

    def __init__(
        self,
        registry: str,
        update_interval: float = 10.0,
        *,
        timeout: float = 5.0,
        watch: bool = True,
        wait: float = 30.0,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE,
        restart_grace: float = DEFAULT_TIMEOUT,
        seed: int | None = None,
    ) -> None:
        super().__init__((), seed=seed)
        if not update_interval > 0:
            raise ValueError(f"update_interval must be positive, not {update_interval!r}")
        # NaN, None or an infinity would leave a request pending for ever; 0 fails every one.
        if not _seconds(timeout) or timeout == 0:
            raise ValueError(f"timeout must be a positive, finite number of seconds, not {timeout!r}")
        if not _seconds(wait):
            raise ValueError(f"wait must be a finite number of seconds >= 0, not {wait!r}")
        if not _seconds(restart_grace):
            raise ValueError(f"restart_grace must be a finite number of seconds >= 0, not {restart_grace!r}")
        self.registry = registry
        self.update_interval = update_interval
        self.timeout = timeout
        self.watch = watch
        self.wait = wait
        self.max_response_bytes = max_response_bytes
        self.restart_grace = restart_grace
        self.last_error: str | None = None
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Task[_Outcome] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_live = False
        self._last_ok = -math.inf  # monotonic time of the last good answer
        self._failures = 0
        self._warned = False  # this run of failures was logged at WARNING: log the recovery
        self._next_attempt = -math.inf
        self._watch_failures = 0  # consecutive failed watches; plain GETs do not reset it
        self._watch_refused = False  # one of them was refused (4xx)
        self._watch_paused_until = -math.inf  # poll, do not watch, until then
        self._registry_start: float | None = None  # the registry's start time on our clock
        self._restart_seen = False  # a restart is evident and no answer was applied since
        self._hold_until: float | None = None
        self._logged_bad: set[str] = set()
        self._closed = False

    # -- public API ------------------------------------------------------------------

    async def refresh(self) -> None:
        """Fetch the list now. Raises ``RegistryError`` if that fails (the old list stays)."""
        if self._closed:
            raise RegistryError("RegistryDiscovery is closed")
        outcome = await self._shared_fetch()
        if not outcome.ok:
            raise RegistryError(f"registry {self.registry}: {outcome.error}")

    async def close(self) -> None:
        """Stop the watch and any fetch, close the HTTP session. Idempotent."""
        self._closed = True
        self._watch_live = False
        tasks = [t for t in (self._watch_task, self._inflight) if t is not None and not t.done()]
        self._watch_task = self._inflight = None
        try:
            for task in tasks:
                task.cancel()
            # gather returns the tasks' own CancelledErrors but lets the caller's through
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if self._session is not None:
                await self._session.close()
                self._session = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- freshness -------------------------------------------------------------------

    async def _ensure_fresh(self) -> None:
        if self._closed:
            return
        if self.watch and self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch_loop(), name="geerpc-registry-watch")
        now = time.monotonic()
        watching = self._watch_live and self._watch_task is not None and not self._watch_task.done()
        if watching or now - self._last_ok < self.update_interval or now < self._next_attempt:
            return  # fresh, or backing off after a failure: serve what we have
        await self._shared_fetch()  # a failure is logged and leaves the last good list

    async def _shared_fetch(self) -> _Outcome:
        task = self._inflight
        if task is None or task.done():
            task = self._inflight = asyncio.create_task(self._fetch_and_apply(None), name="geerpc-registry-get")
        try:
            # shield: a caller that gives up must not cancel the fetch others share.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                return _Outcome(False, error="closed")  # close() cancelled the shared fetch, not us
            raise

    async def _watch_loop(self) -> None:
        index: int | None = None
        while True:
            watched = index is not None
            outcome = await (self._fetch_and_apply(index) if watched else self._shared_fetch())
            if watched:
                self._count_watch(outcome)
            if outcome.ok and outcome.index is not None and time.monotonic() >= self._watch_paused_until:
                self._watch_live = True
                index = outcome.index
                await asyncio.sleep(_MIN_WATCH_GAP)
                continue
            self._watch_live = False
            index = None  # start over with a plain GET: the registry may have restarted
            if outcome.ok or outcome.refused:
                # The registry knows no indexes (GeeRPC's), or refuses watches for now: poll.
                await asyncio.sleep(self.update_interval)
            else:
                await asyncio.sleep(max(self._next_attempt - time.monotonic(), _MIN_WATCH_GAP))

    def _count_watch(self, outcome: _Outcome) -> None:
        if outcome.ok:
            if self._watch_refused:  # other failures end with _succeeded's "answers again"
                log.info("registry %s accepts watches again after %d failure(s)", self.registry, self._watch_failures)
            self._watch_failures = 0
            self._watch_refused = False
            return
        self._watch_failures += 1
        if not outcome.refused:
            return  # logged by _failed, backed off through _next_attempt
        # Poll for a while, longer while refusals go on, and no sooner than Retry-After.
        backoff = self.update_interval * 2 ** min(self._watch_failures - 1, 16)
        pause = max(min(backoff, max(_MAX_WATCH_PAUSE, self.update_interval)),
                    min(outcome.retry_after, _MAX_WATCH_PAUSE))
        self._watch_paused_until = time.monotonic() + pause
        self._watch_refused = True
        level = logging.WARNING if self._watch_failures == 1 else logging.DEBUG
        log.log(level, "registry %s refused the watch (%d in a row: %s); polling every %g s, watching again in %g s",
                self.registry, self._watch_failures, outcome.error, self.update_interval, pause)

    # -- one request -----------------------------------------------------------------

    async def _fetch_and_apply(self, index: int | None) -> _Outcome:
        """GET the list (a watch when ``index`` is given) and apply it. Never raises."""
        try:
            answer = await self._fetch(index)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a hostile registry can make anything fail; keep the list
            if index is None:
                return self._failed(exc)
            self._watch_live = False
            if isinstance(exc, _Refused):  # the registry is up and said no to the watch alone
                return _Outcome(False, error=str(exc), refused=True, retry_after=exc.retry_after)
            return self._failed(exc, watch=True)
        self._succeeded(answer)
        return _Outcome(True, answer.index)

    async def _fetch(self, index: int | None) -> _Answer:
        if self._session is None:
            # The list may arrive in one header (GeeRPC's registry): allow it to be large.
            self._session = aiohttp.ClientSession(max_field_size=self.max_response_bytes)
        params = {} if index is None else {"index": str(index), "wait": repr(float(self.wait))}
        limit = self.timeout + (0 if index is None else self.wait)
        headers = {"Accept": "application/json"}
        async with asyncio.timeout(limit):
            async with self._session.get(self.registry, params=params, headers=headers) as response:
                received = time.monotonic()
                if response.status != 200:
                    reason = (await response.content.read(200)).decode("utf-8", "replace").strip()
                    message = f"HTTP {response.status} {reason}".strip()
                    if 400 <= response.status < 500:
                        raise _Refused(message, _retry_after(response.headers.get("Retry-After")))
                    raise RegistryError(message)
                body = await self._read_capped(response)
                return self._parse(response, body, received)

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        if response.content_length is not None and response.content_length > self.max_response_bytes:
            raise RegistryError(f"reply of {response.content_length} bytes exceeds {self.max_response_bytes}")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.max_response_bytes:
                raise RegistryError(f"reply exceeds {self.max_response_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    def _parse(self, response: aiohttp.ClientResponse, body: bytes, received: float) -> _Answer:
        index = _parse_int(response.headers.get(H_INDEX))
        servers: dict[str, frozenset[str] | None] = {}
        if response.content_type == "application/json":
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise RegistryError(f"malformed JSON reply: {exc}") from None
            if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
                raise RegistryError("JSON reply without a 'servers' list")
            for item in data["servers"]:
                self._add_json_entry(servers, item)
            _check_usable(len(data["servers"]), servers)
            return _Answer(servers, index, received, _number(data.get("timeout")), _number(data.get("uptime")))
        header = response.headers.get(H_SERVERS)
        if header is None:
            raise RegistryError(f"reply has no {H_SERVERS} header")
        listed = [address.strip() for address in header.split(",") if address.strip()]
        for address in listed:
            self._add_entry(servers, address, None)
        _check_usable(len(listed), servers)
        return _Answer(servers, index, received)

    def _add_json_entry(self, servers: dict[str, frozenset[str] | None], item: Any) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            self._log_bad(repr(item)[:80], "not an object with an address")
            return
        offered = item.get("services")
        if offered is not None and not (isinstance(offered, list) and all(isinstance(s, str) for s in offered)):
            self._log_bad(item["address"], "services is not a list of names")
            return
        self._add_entry(servers, item["address"], None if offered is None else frozenset(offered))

    def _add_entry(self, servers: dict[str, frozenset[str] | None], address: str, offered: frozenset[str] | None) -> None:
        try:
            parse_address(address)
        except ValueError as exc:
            self._log_bad(address, str(exc))
            return
        servers[address] = offered

    def _log_bad(self, address: str, reason: str) -> None:
        # One log line per bad entry, not one per refresh; bounded so garbage cannot grow it.
        if address not in self._logged_bad and len(self._logged_bad) < _MAX_LOGGED_BAD:
            self._logged_bad.add(address)
            log.warning("registry %s lists an unusable server %.80r, ignored: %s", self.registry, address, reason)

    # -- outcomes --------------------------------------------------------------------

    def _succeeded(self, answer: _Answer) -> None:
        now = time.monotonic()
        if self._failures and self._warned:
            log.info("registry %s answers again after %d failure(s)", self.registry, self._failures)
        self._warned = False
        self._failures = 0
        self._next_attempt = -math.inf
        self._last_ok = now
        self.last_error = None
        if answer.uptime is not None:
            start = answer.received - answer.uptime
            if self._registry_start is not None and abs(start - self._registry_start) > _RESTART_TOLERANCE:
                self._restart_seen = True
            self._registry_start = start
        if not answer.servers and self._servers and self._hold(answer, now):
            return
        self._restart_seen = False
        self._hold_until = None
        self.update(answer.servers)

    def _hold(self, answer: _Answer, now: float) -> bool:
        """Whether to keep our non-empty list instead of this empty answer (a fresh registry).

        Only after an evident restart: otherwise an empty answer means the last server
        left (a DELETE, an expiry), and serving it on would send calls to a dead address.
        """
        if not self._restart_seen:
            return False
        if answer.uptime is not None and answer.timeout:
            hold = answer.uptime < answer.timeout
        else:
            if self._hold_until is None:
                self._hold_until = now + self.restart_grace
            hold = now < self._hold_until
        if hold:
            log.debug("registry %s answered an empty list soon after a restart; keeping %d server(s)",
                      self.registry, len(self._servers))
        return hold

    def _failed(self, exc: BaseException, *, watch: bool = False) -> _Outcome:
        self._failures += 1
        self._restart_seen = True  # the registry may have restarted meanwhile
        error = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        self.last_error = error
        # A watch that keeps failing while plain GETs succeed (a proxy that cuts long
        # polls) resets _failures each time: its own counter drives backoff and logging.
        failures = max(self._failures, self._watch_failures + 1) if watch else self._failures
        # Equal jitter, capped at update_interval: never spin, never wait much longer than a poll.
        backoff = min(self.update_interval, 0.5 * 2 ** min(failures - 1, 30))
        self._next_attempt = time.monotonic() + backoff / 2 + random.uniform(0, backoff / 2)
        level = logging.WARNING if failures == 1 else logging.DEBUG
        self._warned = self._warned or level == logging.WARNING
        log.log(level, "registry %s failed (%d in a row), serving the last %d server(s): %s",
                self.registry, self._failures, len(self._servers), error)
        return _Outcome(False, error=error)

    def _describe(self) -> str:
        text = f"{len(self._servers)} server(s) from registry {self.registry}"
        return f"{text}; last error: {self.last_error}" if self.last_error else text


def _check_usable(listed: int, servers: dict[str, frozenset[str] | None]) -> None:
    # Entries but not one usable: a broken or hostile registry, not an empty list.
    # Failing keeps the list we have (and logs it) instead of emptying it silently.
    if listed and not servers:
        raise RegistryError(f"none of the {listed} listed server(s) is a usable address")


def _retry_after(value: str | None) -> float:
    # Only the delta-seconds form; an HTTP date or garbage counts as "not said".
    if value is None or not value.isascii() or not value.strip().isdigit() or len(value.strip()) > 9:
        return 0.0
    return float(value.strip())


def _seconds(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)


def _parse_int(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
