"""RegistryDiscovery: the server list of an XClient, kept from a geerpc or GeeRPC registry.

Layer: xclient, the I/O half of the registry's discovery: the aiohttp requests, the
watch task and the logging. What to do when (freshness, backoff, refused watches, the
hold after a registry restart) is decided by ``registry_policy.DiscoveryPolicy``, and
replies are read by ``registry_reply.ReplyReader``; selection is inherited from
``ServerList``. It never holds a lock across a request: concurrent readers that find
the list stale share one in-flight fetch task. aiohttp is imported at the first request.

How the list stays current:

* Reads (``get``/``get_all``) refresh the list when it is older than
  ``update_interval``, as GeeRPC does, unless a failure put us in backoff: then
  they serve the last good list at once.
* A watch (a long-poll GET with the index of the list we hold) is started on the
  first read; a geerpc registry answers it as soon as the list changes. While it is
  healthy the list counts as fresh. Against a registry without watches (GeeRPC's),
  the watch task simply polls every ``update_interval``.
* A registry that refuses the watch (4xx, 429 at its watcher cap) is up: we poll
  instead and try the watch again later. A watch that keeps failing backs off and is
  logged once, then at DEBUG, even while plain GETs succeed.
* While the registry is unreachable (or lists nothing usable), the last good list is
  served; failures are retried with backoff and logged once, then at DEBUG.
* An empty answer replaces the list at once, unless the registry evidently restarted:
  then it is held for a while (``DiscoveryPolicy`` has the rule). docs/registry.md
  (*Discovery*) has the details.
"""

from __future__ import annotations

import asyncio
import logging
import math
import ssl as _ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Self
from urllib.parse import urlsplit

from ..errors import RegistryError
from ..registry.auth import check_token
from ..registry.contract import DEFAULT_PATH, DEFAULT_TIMEOUT, DEFAULT_WAIT, Q_INDEX, Q_WAIT
from .discovery import ServerList
from .registry_policy import DiscoveryPolicy, Outcome
from .registry_reply import Answer, ReplyReader, parse_retry_after

if TYPE_CHECKING:
    import aiohttp

__all__ = ["DEFAULT_MAX_RESPONSE", "RegistryDiscovery"]

log = logging.getLogger(__name__)

DEFAULT_MAX_RESPONSE: Final = 16 * 1024 * 1024


class _Refused(RegistryError):
    """The registry answered with a 4xx status (``Retry-After`` seconds, 0 if none)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RegistryDiscovery(ServerList):
    """Servers listed by the registry at ``registry`` (its full ``http://`` or ``https://`` URL).

    Raises ValueError for anything else, such as a server address (``tcp@...``).

    ``update_interval``: the longest a served list may be stale while the registry
    answers. ``timeout``: each HTTP request's own limit (a watch adds its ``wait``).
    ``watch``: long-poll for changes (falls back to polling when unsupported).
    ``max_response_bytes``: cap on a reply's body and on its list header.
    ``restart_grace``: see the module docstring. ``ssl``: the context an ``https://``
    registry's certificate is verified with (None: the system's trusted certificates).
    ``token``: the registry's read token (``Registry(read_token=...)``), sent as
    ``Authorization: Bearer``; a 401 is a ``RegistryError`` saying the token was
    missing or refused. ``clock`` (a monotonic clock in
    seconds) and ``sleep`` are what freshness is judged by and the watch task waits
    with; tests pass a fake pair. Close with ``await d.close()``.
    """

    def __init__(
        self,
        registry: str,
        update_interval: float = 10.0,
        *,
        timeout: float = 5.0,
        watch: bool = True,
        wait: float = DEFAULT_WAIT,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE,
        restart_grace: float = DEFAULT_TIMEOUT,
        seed: int | None = None,
        ssl: _ssl.SSLContext | None = None,
        token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        # A server address (tcp@...) here would fail only later, at every read.
        if not _is_http_url(registry):
            raise ValueError(f"not a registry URL: {registry!r} (want an http:// or https:// registry URL, "
                             f"such as http://127.0.0.1:9999{DEFAULT_PATH})")
        super().__init__((), seed=seed)
        if ssl is not None and not isinstance(ssl, _ssl.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext or None, not {type(ssl).__name__}")
        self._ssl = ssl
        self._token = check_token("token", token)
        if not (_seconds(update_interval) and update_interval > 0):
            raise ValueError(f"update_interval must be a positive, finite number of seconds, not {update_interval!r}")
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
        self._policy = DiscoveryPolicy(update_interval, restart_grace)
        self._reader = ReplyReader(registry)
        self._clock = clock
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._inflight: asyncio.Task[Outcome] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._closed = False

    # -- public API ------------------------------------------------------------------

    @property
    def last_error(self) -> str | None:
        """Why the last request failed; None once the registry answers again."""
        return self._policy.last_error

    @property
    def watching(self) -> bool:
        """True while a watch the registry accepted keeps the list current."""
        task = self._watch_task
        return self._policy.watch_live and task is not None and not task.done()

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
        task = self._watch_task
        if self._policy.fresh(self._clock(), watching=task is not None and not task.done()):
            return  # fresh, or backing off after a failure: serve what we have
        await self._shared_fetch()  # a failure is logged and leaves the last good list

    async def _shared_fetch(self) -> Outcome:
        task = self._inflight
        if task is None or task.done():
            task = self._inflight = asyncio.create_task(self._fetch_and_apply(None), name="geerpc-registry-get")
        try:
            # shield: a caller that gives up must not cancel the fetch others share.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and not (current is not None and current.cancelling()):
                return Outcome(False, error="closed")  # close() cancelled the shared fetch, not us
            raise

    async def _watch_loop(self) -> None:
        index: int | None = None
        while True:
            outcome = await (self._shared_fetch() if index is None else self._fetch_and_apply(index))
            step = self._policy.next_step(self._clock(), outcome)
            index = step.index
            await self._sleep(step.delay)

    # -- one request -----------------------------------------------------------------

    async def _fetch_and_apply(self, index: int | None) -> Outcome:
        """GET the list (a watch when ``index`` is given) and apply it. Never raises."""
        watch = index is not None
        try:
            answer = await self._fetch(index)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a hostile registry can make anything fail; keep the list
            if watch and isinstance(exc, _Refused):  # the registry is up and said no to the watch alone
                return self._refused(exc)
            return self._failed(exc, watch=watch)
        applied = self._policy.answered(self._clock(), answer, watch=watch, have_servers=bool(self._servers))
        if applied.recovered is not None:
            log.info("registry %s answers again after %d failure(s) in %.1f s",
                     self.registry, applied.recovered.failures, applied.recovered.seconds)
        if applied.watch_recovered is not None:
            log.info("registry %s accepts watches again after %d refusal(s)",
                     self.registry, applied.watch_recovered.failures)
        if applied.apply:
            self.update(answer.servers)
        else:
            log.debug("registry %s answered an empty list soon after a restart; keeping %d server(s)",
                      self.registry, len(self._servers))
        return Outcome(True, answer.index)

    async def _fetch(self, index: int | None) -> Answer:
        if self._session is None:
            import aiohttp  # at the first request: importing geerpc.xclient stays cheap

            # The list may arrive in one header (GeeRPC's registry): allow it to be large.
            from ..httpconn import connector as make_connector

            connector = make_connector(self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(max_field_size=self.max_response_bytes, connector=connector)
        params = {} if index is None else {Q_INDEX: str(index), Q_WAIT: repr(float(self.wait))}
        limit = self.timeout + (0 if index is None else self.wait)
        headers = {"Accept": "application/json"}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        async with asyncio.timeout(limit):
            async with self._session.get(self.registry, params=params, headers=headers) as response:
                received = self._clock()
                if response.status == 401:  # not a refused watch: no request will work
                    raise RegistryError("HTTP 401: the registry refused our token" if self._token is not None
                                        else "HTTP 401: the registry wants a read token and we sent none")
                if response.status != 200:
                    reason = (await response.content.read(200)).decode("utf-8", "replace").strip()
                    message = f"HTTP {response.status} {reason}".strip()
                    if 400 <= response.status < 500:
                        raise _Refused(message, parse_retry_after(response.headers.get("Retry-After")))
                    raise RegistryError(message)
                body = await self._read_capped(response)
                return self._reader.read(response.content_type, response.headers, body, received)

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

    # -- failures ----------------------------------------------------------------------

    def _failed(self, exc: BaseException, *, watch: bool) -> Outcome:
        error = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        warn = self._policy.failed(self._clock(), error, watch=watch)
        log.log(logging.WARNING if warn else logging.DEBUG,
                "registry %s failed (%d in a row), serving the last %d server(s): %s",
                self.registry, self._policy.failures, len(self._servers), error)
        return Outcome(False, error=error)

    def _refused(self, exc: _Refused) -> Outcome:
        refusal = self._policy.refused(self._clock(), exc.retry_after)
        log.log(logging.WARNING if refusal.warn else logging.DEBUG,
                "registry %s refused the watch (%d in a row: %s); polling every %g s, watching again in %g s",
                self.registry, self._policy.watch_failures, exc, self.update_interval, refusal.pause)
        return Outcome(False, error=str(exc), refused=True)

    def _describe(self) -> str:
        text = f"{len(self._servers)} server(s) from registry {self.registry}"
        return f"{text}; last error: {self.last_error}" if self.last_error else text


def _is_http_url(url: object) -> bool:
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # such as an unclosed [IPv6 bracket
        return False
    return parts is not None and parts.scheme in ("http", "https") and bool(parts.netloc)


def _seconds(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and value >= 0)
