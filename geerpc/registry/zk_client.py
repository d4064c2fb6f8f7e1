"""ZooKeeper for geerpc: the ``zk://`` URL, and a kazoo session bridged to asyncio.

Layer: registry, the ZooKeeper backend's client. ``geerpc.registry.zookeeper``
(registration) and ``geerpc.xclient.zookeeper_discovery`` (discovery) both use it;
neither imports kazoo itself. kazoo (the ``geerpc[zookeeper]`` extra) is imported only
when a ``ZkSession`` is made, never by parsing a URL.

Strategy: kazoo is threaded. It runs its connection (reconnects, pings, session
expiry) on its own threads and calls back on another. Nothing here blocks the event
loop: requests go out through kazoo's ``*_async`` methods, whose results, state
changes and watch events are handed to the loop with ``call_soon_threadsafe``. Every
request has a deadline (``CALL_TIMEOUT``). kazoo's own failures are translated here,
at one boundary, into ``ZkUnavailable`` (a ``RegistryError``), ``NoNode`` and
``NodeExists``. Reconnecting is kazoo's: it tries each host in turn, with back-off
from 0.1 s up to ``RECONNECT_MAX`` seconds and jitter, forever, so a lost ZooKeeper
is never hammered; after an expired session it opens a new one by itself.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple
from urllib.parse import parse_qsl, quote, unquote

from ..address import parse_address
from ..errors import RegistryError

__all__ = ["CALL_TIMEOUT", "DEFAULT_PATH", "DEFAULT_PORT", "DEFAULT_SESSION_TIMEOUT", "REGISTER_TIMEOUT",
           "NoNode", "NodeExists", "Stat", "ZkSession", "ZkURL", "ZkUnavailable", "parse_zk_url"]

logger = logging.getLogger("geerpc.registry.zookeeper")

DEFAULT_PORT: Final = 2181
DEFAULT_PATH: Final = "/geerpc"
DEFAULT_SESSION_TIMEOUT: Final = 10.0
REGISTER_TIMEOUT: Final = 5.0  # register() gives up after this long without ZooKeeper
CALL_TIMEOUT: Final = 2.0  # each request to ZooKeeper
STOP_TIMEOUT: Final = 2.0  # deleting the node, and closing the session, at stop
RECONNECT_MAX: Final = 1.0  # kazoo's reconnect back-off is capped at this many seconds
_MAX_SESSION_TIMEOUT: Final = 3600.0
_WANT: Final = "want zk://host:port[,host:port...]/path[?session_timeout=N]"
# What a node name keeps as it is; everything else (the "/" of unix@ addresses, "%") is %-escaped.
_NAME_SAFE: Final = "@:.[]-_"


@dataclass(frozen=True)
class ZkURL:
    """A parsed ``zk://`` URL: the ensemble's hosts, the path and the session timeout."""

    hosts: tuple[tuple[str, int], ...]
    path: str = DEFAULT_PATH
    session_timeout: float = DEFAULT_SESSION_TIMEOUT

    def connect_string(self) -> str:
        """``host:port,host:port`` as kazoo (and ZooKeeper's own clients) take it."""
        return ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)

    def describe(self) -> str:
        """The hosts, for messages."""
        return self.connect_string()

    def node(self, address: str) -> str:
        """The node of the server at ``address``: ``<path>/<address, %-escaped>``."""
        return f"{self.path}/{node_name(address)}"


def node_name(address: str) -> str:
    """``address`` as one node name (no ``/``): ``unix@/run/x.sock`` is ``unix@%2Frun%2Fx.sock``."""
    return quote(address, safe=_NAME_SAFE)


def parse_zk_url(url: str) -> ZkURL:
    """Parse ``zk://h1:2181,h2:2181/path?session_timeout=N``.

    The port defaults to 2181, the path to ``/geerpc`` and the session timeout to 10 s
    (ZooKeeper clamps it to its own ``minSessionTimeout``..``maxSessionTimeout``, by
    default 2 to 20 ticks of 2 s). IPv6 hosts go in brackets (``[::1]:2181``). Raises
    ``ValueError`` naming what is wrong.
    """
    if not isinstance(url, str):
        raise ValueError(f"ZooKeeper URL must be a str, not {type(url).__name__}")  # noqa: TRY004 - a bad URL is a ValueError, whatever its type
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "zk":
        raise ValueError(f"ZooKeeper URL {url!r}: {_WANT}")
    if "#" in rest:
        raise ValueError(f"ZooKeeper URL {url!r}: a fragment (#...) means nothing here")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if "@" in netloc:
        raise ValueError(f"ZooKeeper URL {url!r}: user names and passwords are not supported")
    if not netloc:
        raise ValueError(f"ZooKeeper URL {url!r}: no hosts ({_WANT})")
    hosts = tuple(_parse_host(url, item) for item in netloc.split(","))
    return ZkURL(hosts, _parse_path(url, path), _parse_query(url, query))


def _parse_host(url: str, item: str) -> tuple[str, int]:
    if not item:
        raise ValueError(f"ZooKeeper URL {url!r}: empty host in the host list")
    has_port = "]:" in item if item.startswith("[") else ":" in item
    host, port_text = item.rsplit(":", 1) if has_port else (item, str(DEFAULT_PORT))
    if ":" in host and not host.startswith("["):
        raise ValueError(f"ZooKeeper URL {url!r}: write IPv6 hosts in brackets, as in [::1]:2181")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
        raise ValueError(f"ZooKeeper URL {url!r}: bad port {port_text!r} in {item!r} (want 1 to 65535)")
    try:
        address = parse_address(f"{host}:{port_text}")
    except ValueError:
        raise ValueError(f"ZooKeeper URL {url!r}: bad host {host!r}") from None
    return address.host, address.port


def _parse_path(url: str, path: str) -> str:
    segments = [unquote(s) for s in path.split("/") if s]
    for segment in segments:
        if segment in (".", "..") or not segment.isprintable() or " " in segment:
            raise ValueError(f"ZooKeeper URL {url!r}: bad path segment {segment!r}")
    if segments[:1] == ["zookeeper"]:
        raise ValueError(f"ZooKeeper URL {url!r}: /zookeeper is ZooKeeper's own")
    return "/" + "/".join(segments) if segments else DEFAULT_PATH


def _parse_query(url: str, query: str) -> float:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"ZooKeeper URL {url!r}: malformed query {query!r}") from None
    names = [name for name, _ in pairs]
    if len(set(names)) < len(names):
        raise ValueError(f"ZooKeeper URL {url!r}: a parameter is given twice")
    timeout = DEFAULT_SESSION_TIMEOUT
    for name, value in pairs:
        if name != "session_timeout":
            raise ValueError(f"ZooKeeper URL {url!r}: unknown parameter {name!r} (known: session_timeout)")
        try:
            timeout = float(value) if value.isascii() else math.nan
        except ValueError:
            timeout = math.nan
        if not (math.isfinite(timeout) and 0 < timeout <= _MAX_SESSION_TIMEOUT):
            raise ValueError(f"ZooKeeper URL {url!r}: session_timeout must be a number of seconds "
                             f"above 0 and at most {_MAX_SESSION_TIMEOUT:g}, not {value!r}")
    return timeout


# --------------------------------------------------------------------------- errors


class ZkUnavailable(RegistryError):
    """ZooKeeper did not answer in time, or the connection or session was lost."""


class NoNode(Exception):
    """The node does not exist."""


class NodeExists(Exception):
    """The node already exists."""


class Stat(NamedTuple):
    """What geerpc reads of a node's stat."""

    owner: int  # the session owning an ephemeral node, 0 for a persistent one
    version: int
    mzxid: int  # the transaction that last wrote it


#: A watch callback, called on the event loop with the event's kind and path. Kinds:
#: ``CREATED``, ``DELETED``, ``CHANGED``, ``CHILD``, or ``NONE`` for session events.
Watcher = Callable[[str, str], None]


# --------------------------------------------------------------------------- the session


class ZkSession:
    """One ZooKeeper session through kazoo, usable from the event loop.

    ``connected`` says whether a connection is up now, ``session_id`` which session it
    carries (it changes when an expired session was replaced). Callbacks added with
    ``on_change`` run on the loop after each change of state. Make it inside a running
    loop; ``close()`` ends the session (its ephemeral nodes go at once).

    A connection lost for longer than the session timeout is given up, and a new
    kazoo client (a new session) takes over, as Apache Curator does: past that time
    the session has expired on any ZooKeeper that was up, and one that lost its data
    (a new ensemble at the same addresses) refuses every client that saw newer
    transactions than its own, so kazoo alone would never get back in.
    """

    def __init__(self, url: ZkURL) -> None:
        self.url = url
        self._loop = asyncio.get_running_loop()
        self._client: Any = self._new_client()
        self.connected = False
        self.renewals = 0  # times a new client took over after a long outage
        self._callbacks: list[Callable[[], None]] = []
        self._changed = asyncio.Event()  # replaced at every change; waiters hold the old one
        self._watchdog: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()  # old clients being stopped
        self._started = False
        self._closed = False

    def _new_client(self) -> Any:
        try:  # the zookeeper extra: imported only here
            from kazoo.client import KazooClient
            from kazoo.retry import KazooRetry
        except ImportError as exc:
            raise ImportError("zk:// registry URLs need kazoo: pip install 'geerpc[zookeeper]'") from exc

        client = KazooClient(
            hosts=self.url.connect_string(), timeout=self.url.session_timeout,
            connection_retry=KazooRetry(max_tries=-1, delay=0.1, backoff=2, max_delay=RECONNECT_MAX,
                                        max_jitter=0.2),
            logger=_kazoo_logger(),
        )
        # On kazoo's connection thread; states of a client since replaced are ignored.
        client.add_listener(lambda state: self._soon(self._state_changed, client, str(state)))
        return client

    @property
    def session_id(self) -> int:
        """The current session (0 before the first)."""
        client_id = self._client.client_id
        return int(client_id[0]) if client_id else 0

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the loop) after every change of the connection's state."""
        self._callbacks.append(callback)

    def start(self) -> None:
        """Start connecting in the background (kazoo reconnects from then on). Idempotent."""
        if not self._started and not self._closed:
            self._started = True
            self._client.start_async()
            self._watchdog = self._loop.create_task(self._watch_outages(),
                                                    name=f"geerpc ZooKeeper session {self.url.describe()}")

    async def wait_connected(self, timeout: float) -> bool:
        """Start, and wait up to ``timeout`` seconds for a connection; True once connected."""
        self.start()
        try:
            async with asyncio.timeout(timeout):
                while not self.connected:
                    await self._changed.wait()
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        """End the session and free kazoo's threads and sockets; bounded, idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._started:
            return
        if self._watchdog is not None:
            self._watchdog.cancel()
            await asyncio.gather(self._watchdog, return_exceptions=True)
        self._retire(self._client)
        await asyncio.gather(*self._retired, return_exceptions=True)

    def _retire(self, client: Any) -> None:
        def stop() -> None:
            client.stop()
            client.close()

        async def retire() -> None:
            try:
                async with asyncio.timeout(STOP_TIMEOUT + 10):  # kazoo waits up to 10 s for its threads
                    await asyncio.to_thread(stop)
            except Exception as exc:  # noqa: BLE001 - closing must not fail the caller's stop
                logger.warning("closing a ZooKeeper session at %s: %s", self.url.describe(), exc or type(exc))

        task = self._loop.create_task(retire())
        self._retired.add(task)
        task.add_done_callback(self._retired.discard)

    async def _watch_outages(self) -> None:
        """Replace the client once its connection has been lost for a session timeout."""
        while True:
            while self.connected:
                await self._changed.wait()
            try:
                async with asyncio.timeout(self.url.session_timeout):
                    while not self.connected:
                        await self._changed.wait()
                continue
            except TimeoutError:
                pass
            logger.warning("no connection to ZooKeeper at %s for %g s (its session timeout): "
                           "starting over with a new session", self.url.describe(), self.url.session_timeout)
            old, self._client = self._client, self._new_client()
            self.renewals += 1
            self._client.start_async()
            self._retire(old)

    # -- kazoo's threads to the loop --------------------------------------------------

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    def _state_changed(self, client: Any, state: str) -> None:
        if client is not self._client:
            return  # a client we gave up on, being stopped
        self.connected = state == "CONNECTED"
        logger.debug("ZooKeeper session at %s: %s", self.url.describe(), state)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        for callback in list(self._callbacks):
            callback()

    def watcher(self, callback: Watcher) -> Callable[[Any], None]:
        """A kazoo watch function that runs ``callback(kind, path)`` on the loop.

        Make it once per callback and reuse it: kazoo keeps one copy of each watch
        function per node, so a reused one never fires twice for one event.
        """
        def watch(event: Any) -> None:  # on kazoo's callback thread
            self._soon(callback, str(event.type), str(event.path))

        return watch

    # -- requests ----------------------------------------------------------------------

    async def _call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._closed:
            raise ZkUnavailable(f"the ZooKeeper session at {self.url.describe()} is closed")
        self.start()
        future: asyncio.Future[Any] = self._loop.create_future()

        def settle(result: Any) -> None:  # on the loop
            if future.done():
                return
            if result.successful():
                future.set_result(result.value)
            else:
                future.set_exception(result.exception)

        getattr(self._client, method)(*args, **kwargs).rawlink(lambda result: self._soon(settle, result))
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                return await future
        except TimeoutError:
            raise ZkUnavailable(f"ZooKeeper at {self.url.describe()}: {what} timed out "
                                f"after {CALL_TIMEOUT:g} s") from None
        except Exception as exc:
            raise _translate(exc, what, self.url) from exc

    async def create_ephemeral(self, path: str, value: bytes) -> None:
        """Create ``path`` (and its missing parents, persistent) as an ephemeral node."""
        await self._call(f"create {path}", "create_async", path, value, ephemeral=True, makepath=True)

    async def get_children(self, path: str, watch: Callable[[Any], None] | None = None) -> list[str]:
        children = await self._call(f"list {path}", "get_children_async", path, watch=watch)
        return [str(name) for name in children]

    async def get(self, path: str, watch: Callable[[Any], None] | None = None) -> tuple[bytes, Stat]:
        value, stat = await self._call(f"read {path}", "get_async", path, watch=watch)
        return bytes(value or b""), _stat(stat)

    async def exists(self, path: str, watch: Callable[[Any], None] | None = None) -> Stat | None:
        stat = await self._call(f"look up {path}", "exists_async", path, watch=watch)
        return None if stat is None else _stat(stat)

    async def delete(self, path: str, version: int = -1) -> None:
        await self._call(f"delete {path}", "delete_async", path, version)


def _kazoo_logger() -> logging.Logger:
    # kazoo warns at every failed reconnect, several times a second while ZooKeeper is
    # down; geerpc reports an outage itself (once, then once a minute). kazoo's own
    # lines stay available: set this logger's level to DEBUG to see every attempt.
    kazoo = logging.getLogger("geerpc.registry.zookeeper.kazoo")
    if kazoo.level == logging.NOTSET:
        kazoo.setLevel(logging.ERROR)
    return kazoo


def _stat(stat: Any) -> Stat:
    return Stat(int(stat.ephemeralOwner), int(stat.version), int(stat.mzxid))


def _translate(exc: Exception, what: str, url: ZkURL) -> Exception:
    from kazoo import exceptions as kz

    if isinstance(exc, kz.NoNodeError):
        return NoNode(what)
    if isinstance(exc, kz.NodeExistsError):
        return NodeExists(what)
    if isinstance(exc, kz.BadVersionError):
        return NoNode(f"{what}: changed meanwhile")
    name = type(exc).__name__
    return ZkUnavailable(f"ZooKeeper at {url.describe()}: {what} failed ({name}{f': {exc}' if str(exc) else ''})")
