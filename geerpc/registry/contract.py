"""The registry's HTTP contract: what the registry and its clients must agree on.

Layer: shared by both sides. The registry (``server.py``) writes these headers and
defaults; heartbeats (``heartbeat.py``), discoveries
(``geerpc.xclient.registry_discovery``) and ``geerpc list`` read them. GeeRPC's own
contract is the first two headers and the path; the rest is geerpc's, described in
``docs/registry.md``. This module imports nothing from aiohttp or asyncio, so a
client can know the contract without loading the registry's server.
"""

from __future__ import annotations

import math
import re
from typing import Final

__all__ = [
    "DEFAULT_PATH",
    "DEFAULT_PERIOD",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT",
    "H_INDEX",
    "H_INSTANCE",
    "H_PERIOD",
    "H_SERVER",
    "H_SERVERS",
    "H_SERVICES",
    "H_TIMEOUT",
    "MAX_SERVICES",
    "MAX_SERVICE_NAME",
    "MIN_PERIOD",
    "Q_INDEX",
    "Q_SERVICE",
    "Q_WAIT",
    "RELIST_PERIOD",
    "check_service_name",
    "format_seconds",
    "heartbeat_period",
    "parse_instance",
    "parse_seconds",
    "parse_services",
    "period_for",
]

#: Where GeeRPC's registry listens.
DEFAULT_PATH: Final = "/_geerpc_/registry"
#: GeeRPC's default: a server not heard from for 5 minutes is dropped.
DEFAULT_TIMEOUT: Final = 300.0
#: GeeRPC's default heartbeat period: the default timeout less one minute.
DEFAULT_PERIOD: Final = 240.0
#: The shortest heartbeat period, whatever the registry's timeout or a ``period``
#: argument: the period comes from a reply, and a registry that says "0.0001" (hostile
#: or misconfigured) must not turn a heartbeat into a POST loop.
MIN_PERIOD: Final = 0.1
#: The heartbeat period geerpc's registry asks for by default (``X-Geerpc-Period``),
#: and the longest a heartbeat waits before retrying a failed beat: after a registry
#: restart or outage, every live server is listed again within this long.
RELIST_PERIOD: Final = 5.0
#: How long a watch that names an index but no ``wait`` is held (at most the
#: registry's ``max_wait``).
DEFAULT_WAIT: Final = 30.0

# -- headers ----------------------------------------------------------------------------

#: POST (heartbeat) and DELETE (deregister): the server's address, ``tcp@host:port``.
H_SERVER: Final = "X-Geerpc-Server"
#: GET reply: the live servers, sorted, comma-joined.
H_SERVERS: Final = "X-Geerpc-Servers"
#: POST: the services the server offers, comma-joined (absent: every service).
H_SERVICES: Final = "X-Geerpc-Services"
#: Every reply: the registry's timeout in seconds (see ``format_seconds``; 0: never).
H_TIMEOUT: Final = "X-Geerpc-Timeout"
#: Every reply: the list's index, which changes whenever the list does.
H_INDEX: Final = "X-Geerpc-Index"
#: Every reply: the heartbeat period this registry asks servers to use, in seconds.
H_PERIOD: Final = "X-Geerpc-Period"
#: Every reply: an opaque id of this run of the registry, new each time it starts.
H_INSTANCE: Final = "X-Geerpc-Instance"

# -- GET query parameters ---------------------------------------------------------------

Q_SERVICE: Final = "service"  # only the servers offering this service
Q_INDEX: Final = "index"  # a watch: answer once the index differs from this one ...
Q_WAIT: Final = "wait"  # ... or after this many seconds

# -- service names ------------------------------------------------------------------------

MAX_SERVICES: Final = 64
# 64 names of 100 characters plus commas still fit in aiohttp's 8190-byte header field.
MAX_SERVICE_NAME: Final = 100
_SERVICE_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")


def period_for(timeout: float | None) -> float:
    """The heartbeat period for a registry that drops servers after ``timeout`` seconds.

    The timeout less a minute when it is 180 s or more (GeeRPC's 300 -> 240), else a
    third of it (30 -> 10), so a server survives a missed beat; 240 s when the
    registry says nothing (``None``, GeeRPC's registry) or never expires (0). Never
    less than ``MIN_PERIOD``: a registry whose timeout is below 0.3 s cannot keep
    anybody listed anyway. This is the period for a registry that does not say
    which one it wants (GeeRPC's); geerpc's registry says so in ``X-Geerpc-Period``
    (see ``heartbeat_period``).
    """
    if timeout is None or not math.isfinite(timeout) or timeout <= 0:
        return DEFAULT_PERIOD
    if timeout >= 180:
        return timeout - 60
    return max(MIN_PERIOD, timeout / 3)


def heartbeat_period(asked: float | None, timeout: float | None) -> float:
    """The heartbeat period for a reply carrying ``X-Geerpc-Period: asked`` and ``X-Geerpc-Timeout: timeout``.

    The period the registry asks for, within ``MIN_PERIOD`` and ``period_for(timeout)``
    (a registry asking for a period too long for its own timeout would drop its
    servers between beats); ``period_for(timeout)`` when it asks for none (GeeRPC's
    registry, or geerpc's before it sent the header) or for something that is not a
    number above 0.
    """
    longest = period_for(timeout)
    if asked is None or not math.isfinite(asked) or asked <= 0:
        return longest
    return min(longest, max(MIN_PERIOD, asked))


def parse_instance(value: str | None) -> str | None:
    """An ``X-Geerpc-Instance`` value: None when absent, empty or longer than 64 characters."""
    if value is None or not value.strip() or len(value) > 64:
        return None
    return value.strip()


def format_seconds(seconds: float) -> str:
    """``300.0`` -> ``"300"``, ``0.5`` -> ``"0.5"``: what X-Geerpc-Timeout carries."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(float(seconds))


def parse_seconds(value: str | None) -> float | None:
    """An X-Geerpc-Timeout value as seconds; None when absent or not a finite number >= 0."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def parse_services(header: str | None, *, max_services: int = MAX_SERVICES) -> frozenset[str] | None:
    """Parse an ``X-Geerpc-Services`` value: comma-separated service names.

    ``None`` (no header) means unknown, which counts as every service; an empty or
    blank value means none. Raises ``ValueError`` naming the problem for too many
    names, a name that is too long, or one with characters outside ``[A-Za-z0-9_.-]``.
    """
    if header is None:
        return None
    names = [name.strip() for name in header.split(",")]
    if names == [""]:
        return frozenset()
    if len(names) > max_services:
        raise ValueError(f"too many services: {len(names)} (at most {max_services})")
    for name in names:
        check_service_name(name)
    return frozenset(names)


def check_service_name(name: str) -> None:
    """Raise ``ValueError`` naming the problem unless ``name`` is a valid service name.

    At most ``MAX_SERVICE_NAME`` characters from ``[A-Za-z0-9_.-]``, not starting
    with ``.`` or ``-``: the rule the registry applies to ``X-Geerpc-Services``.
    """
    if not isinstance(name, str):  # callers catch ValueError for every bad name
        raise ValueError(f"service name must be a str, not {type(name).__name__}")  # noqa: TRY004
    if not name:
        raise ValueError("empty service name in the list")
    if len(name) > MAX_SERVICE_NAME:
        raise ValueError(f"service name {name[:32]!r}... longer than {MAX_SERVICE_NAME} characters")
    if not _SERVICE_NAME.match(name):
        raise ValueError(f"service name {name[:32]!r}: use letters, digits, '_', '.' and '-'")
