"""Talking to etcd: ``etcd://`` URLs, and a gateway client with failover across endpoints.

Layer: registry, the etcd backend's connection half; ``etcd.py`` (a server's leased
key) and ``geerpc.xclient.etcd_discovery`` (watching the keys) build on it, and
``etcd_gateway`` speaks etcd's JSON gateway underneath. Trying the next endpoint when
one fails is done here, and every call carries a deadline.

TLS (``etcds://``, ``?ssl=1`` or an ``ssl.SSLContext``, client certificates included)
and etcd's own auth (a user name and password, from the URL, the arguments or
``GEERPC_ETCD_PASSWORD``) are set up here too. This module imports errors and address
parsing from geerpc and nothing from the server, client or xclient; aiohttp is
imported only when something talks to etcd.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar
from urllib.parse import parse_qsl, unquote

from ..address import parse_address
from ..errors import RegistryError
from .etcd_gateway import EtcdAuthFailed, EtcdEndpoint, EtcdError, is_tls_refusal

if TYPE_CHECKING:
    import aiohttp

__all__ = ["CALL_TIMEOUT", "DEFAULT_PORT", "DEFAULT_PREFIX", "DEFAULT_TTL", "PASSWORD_ENV", "REGISTER_TIMEOUT",
           "STOP_TIMEOUT", "EtcdClients", "EtcdEndpoint", "EtcdRefused", "EtcdURL", "cancel_and_wait",
           "credentials", "parse_etcd_url"]

logger = logging.getLogger("geerpc.registry.etcd")

DEFAULT_PORT: Final = 2379
DEFAULT_PREFIX: Final = "/geerpc"
DEFAULT_TTL: Final = 10  # seconds
REGISTER_TIMEOUT: Final = 5.0  # etcd is meant to be always up: failing to reach it is a config error
CALL_TIMEOUT: Final = 2.0  # deadline of one call on one endpoint
STOP_TIMEOUT: Final = 2.0  # revoking the lease on stop; past it the key expires with the lease
PASSWORD_ENV: Final = "GEERPC_ETCD_PASSWORD"  # the password, when a user name is given without one

T = TypeVar("T")


class EtcdRefused(RegistryError):
    """Every endpoint refused us for a reason retrying does not mend: a wrong password, or
    TLS that fails (a certificate that does not verify, a client certificate missing)."""


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True, slots=True)
class EtcdURL:
    """A parsed ``etcd[s]://[user[:password]@]host:port[,host:port...]/prefix?ttl=N&ssl=1``."""

    endpoints: tuple[tuple[str, int], ...]
    prefix: str  # "/geerpc": a leading slash, no trailing one
    ttl: int  # seconds
    tls: bool = False  # etcds://, or ?ssl=1
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def key_prefix(self) -> bytes:
        """Every server's key starts with this."""
        return f"{self.prefix}/".encode()

    def key(self, address: str) -> bytes:
        """The key a server at ``address`` registers under."""
        return f"{self.prefix}/{address}".encode()

    def describe(self) -> str:
        """``h1:2379,h2:2379``, for messages (never with the password)."""
        return ",".join(_endpoint_text(host, port) for host, port in self.endpoints)


def parse_etcd_url(url: str) -> EtcdURL:
    """Parse ``etcd://[user[:password]@]h1:2379,h2:2379/prefix?ttl=N&ssl=1``.

    The port defaults to 2379, the prefix to ``/geerpc`` and the lease TTL to 10 s.
    IPv6 hosts are written in brackets (``[::1]:2379``). ``etcds://`` or ``ssl=1`` means
    TLS; the user name and password are percent-decoded. Raises ``ValueError`` saying
    what is wrong with the URL (never quoting the password).
    """
    if not isinstance(url, str):
        raise ValueError(f"etcd URL must be a str, not {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    userinfo, at, _ = rest.partition("/")[0].rpartition("@")
    shown = url.replace(userinfo + at, "***@", 1) if at else url  # for messages: no password in logs
    if not sep or scheme.lower() not in ("etcd", "etcds"):
        raise ValueError(f"etcd URL {shown!r}: want etcd://host:port[,host:port...]/prefix[?ttl=N]")
    if "#" in rest:
        raise ValueError(f"etcd URL {shown!r}: a fragment (#...) means nothing here")
    if at:
        rest = rest[len(userinfo) + 1:]
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    if not netloc:
        raise ValueError(f"etcd URL {shown!r}: no endpoints (want etcd://host:port/prefix)")
    endpoints = tuple(_parse_endpoint(shown, item) for item in netloc.split(","))
    segments = [s for s in path.split("/") if s]
    if any(not s.isprintable() or " " in s for s in segments):
        raise ValueError(f"etcd URL {shown!r}: the prefix has spaces or control characters")
    prefix = "/" + "/".join(segments) if segments else DEFAULT_PREFIX
    ttl, tls = _parse_query(shown, query)
    if scheme.lower() == "etcds":
        if tls is False:
            raise ValueError(f"etcd URL {shown!r}: etcds:// with ssl=0 contradicts itself")
        tls = True
    username, password = _parse_userinfo(shown, userinfo) if at else (None, None)
    return EtcdURL(endpoints, prefix, ttl, bool(tls), username, password)


def _parse_userinfo(url: str, userinfo: str) -> tuple[str, str | None]:
    name, colon, password = userinfo.partition(":")
    username = unquote(name, errors="strict")
    if not username:
        raise ValueError(f"etcd URL {url!r}: a password without a user name")
    return username, unquote(password, errors="strict") if colon else None


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


def _parse_query(url: str, query: str) -> tuple[int, bool | None]:
    """The ``ttl`` and ``ssl`` parameters (``ssl`` None: not given)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ValueError(f"etcd URL {url!r}: malformed query {query!r}") from None
    names = [name for name, _ in pairs]
    if len(set(names)) < len(names):
        raise ValueError(f"etcd URL {url!r}: a parameter is given twice")
    ttl, tls = DEFAULT_TTL, None
    for name, value in pairs:
        if name == "ttl":
            if not (value.isascii() and value.isdigit()) or int(value) <= 0:
                raise ValueError(f"etcd URL {url!r}: ttl must be a positive whole number of seconds")
            ttl = int(value)
        elif name == "ssl":
            if value not in ("0", "1"):
                raise ValueError(f"etcd URL {url!r}: ssl must be 1 (TLS) or 0")
            tls = value == "1"
        else:
            raise ValueError(f"etcd URL {url!r}: unknown parameter {name!r} (known: ttl, ssl)")
    return ttl, tls


def _endpoint_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------- clients


class EtcdClients:
    """The gateways of every endpoint, on one aiohttp session, and failover between them.

    ``call()`` runs an operation on the endpoint that last worked, moving on to the
    others in turn, each under a deadline. ``ssl`` (an ``ssl.SSLContext``, with the
    client certificate loaded when etcd asks for one) or ``tls=True`` (the default
    context) makes every call HTTPS. ``username`` and ``password`` log in to etcd's auth.
    """

    def __init__(self, endpoints: Sequence[tuple[str, int]], *, call_timeout: float = CALL_TIMEOUT,
                 ssl: ssl_module.SSLContext | None = None, tls: bool = False,
                 username: str | None = None, password: str | None = None) -> None:
        import aiohttp

        # What counts as "this endpoint failed": no connection, an error etcd answered, our deadline.
        self.failures: tuple[type[BaseException], ...] = (aiohttp.ClientError, EtcdError, TimeoutError, OSError)
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
            raise TypeError(f"ssl must be an ssl.SSLContext, not {type(ssl).__name__}")
        self.endpoints = tuple(endpoints)
        self.call_timeout = call_timeout
        self._ssl = ssl if ssl is not None else (ssl_module.create_default_context() if tls else None)
        self._scheme = "http" if self._ssl is None else "https"
        self._username, self._password = username, password
        self._tokens: dict[str, str] = {}  # base URL -> auth token; etcd's simple tokens are per member
        self._session: aiohttp.ClientSession | None = None
        self._current = 0

    @classmethod
    def for_url(cls, url: EtcdURL, *, ssl: ssl_module.SSLContext | None = None, username: str | None = None,
                password: str | None = None) -> EtcdClients:
        """Clients for ``url``: arguments win over what the URL says (see ``credentials``)."""
        username, password = credentials(url, username, password)
        return cls(url.endpoints, ssl=ssl, tls=url.tls, username=username, password=password)

    @property
    def tls(self) -> bool:
        return self._ssl is not None

    @property
    def current_endpoint(self) -> str:
        """The endpoint the next call goes to first."""
        return _endpoint_text(*self.endpoints[self._current])

    def client(self) -> EtcdEndpoint:
        """The gateway of the current endpoint (the session is made on first use)."""
        host, port = self.endpoints[self._current]
        return EtcdEndpoint(self._open(), f"{self._scheme}://{_endpoint_text(host, port)}",
                            username=self._username, password=self._password, tokens=self._tokens)

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            import aiohttp

            from ..httpconn import connector as make_connector

            connector = make_connector(self._ssl if self._ssl is not None else False)
            # No total timeout: a watch is open for good. Each call is bounded by call().
            self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=None),
                                                  raise_for_status=False)
        return self._session

    async def call(self, op: Callable[[EtcdEndpoint], Awaitable[T]], *, timeout: float | None = None) -> T:
        """Run ``op(endpoint)`` on one endpoint after another until one succeeds.

        Each attempt gets ``timeout`` (default ``call_timeout``) seconds. Raises
        ``RegistryError`` naming every endpoint and how it failed when none did, and
        ``EtcdRefused`` when every one refused the password or the TLS handshake.
        """
        problems: list[str] = []
        last: BaseException | None = None
        refused = True
        caught: tuple[type[BaseException], ...] = (EtcdAuthFailed, *self.failures)
        for _ in self.endpoints:
            endpoint = self.current_endpoint
            try:
                async with asyncio.timeout(self.call_timeout if timeout is None else timeout):
                    return await op(self.client())
            except caught as exc:
                problems.append(f"{endpoint}: {_describe_error(exc)}")
                last = exc
                refused = refused and (isinstance(exc, EtcdAuthFailed) or is_tls_refusal(exc))
                self._current = (self._current + 1) % len(self.endpoints)
        cls = EtcdRefused if refused else RegistryError
        raise cls(f"no etcd endpoint answered ({'; '.join(problems)})") from last

    async def reset(self) -> None:
        """Close the connections; the next use opens new ones (and logs in again)."""
        await self.close()

    async def close(self) -> None:
        """Close every connection. Idempotent; a new call would open them again."""
        session, self._session = self._session, None
        self._tokens.clear()
        if session is not None:
            await session.close()


def credentials(url: EtcdURL, username: str | None, password: str | None) -> tuple[str | None, str | None]:
    """The user name and password to log in with: the arguments, else the URL's; a user
    name with no password anywhere takes ``GEERPC_ETCD_PASSWORD``. Raises ``ValueError``
    for a password without a user name, or a user name without any password."""
    if username is None:
        username = url.username
        if password is None:
            password = url.password
    if password is None and username is not None:
        password = os.environ.get(PASSWORD_ENV)
    if username is None and password is not None:
        raise ValueError("an etcd password needs a user name (username=, or user:password@ in the URL)")
    if username is not None and password is None:
        raise ValueError(f"etcd user {username!r} needs a password (password=, user:password@ in the URL, "
                         f"or {PASSWORD_ENV})")
    if username is not None and not username:
        raise ValueError("the etcd user name is empty")
    return username, password


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait for it to end; our own cancellation still propagates.

    Cancelled again until it ends, should anything below swallow one cancellation.
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
    cause = getattr(exc, "certificate_error", exc)  # aiohttp wraps the ssl module's error
    if isinstance(cause, ssl_module.SSLCertVerificationError):
        return f"TLS: certificate verify failed ({getattr(cause, 'verify_message', None) or cause.reason})"
    if isinstance(exc, EtcdError | EtcdAuthFailed):
        return str(exc)
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
