"""Reading a registry request: its headers and query parameters, checked.

Every problem raises ``BadRequest``, which the registry answers with a 400 naming it.
"""

from __future__ import annotations

import math
from typing import Final

from aiohttp import web

from ..address import check_announced, is_local_host, parse_address

from .contract import H_SERVER, Q_INDEX, Q_SERVICE, Q_WAIT, parse_services

__all__ = ["BadRequest", "one_header", "server_header", "one_param", "query_service", "query_index", "query_wait"]

MAX_INDEX_DIGITS: Final = 16  # indexes are below 2**53


class BadRequest(Exception):
    """Raised while reading a request; becomes a 400 with this message as the body."""


def one_header(request: web.Request, name: str) -> str | None:
    values = request.headers.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"{name} given {len(values)} times; send it once")
    return values[0] if values else None


def server_header(request: web.Request, *, announcing: bool = False) -> str:
    """The canonical address in ``X-Geerpc-Server``; with ``announcing`` (a POST), it
    must also be one clients may be sent to (``address.check_announced``)."""
    raw = one_header(request, H_SERVER)
    if raw is None or not raw.strip():
        raise BadRequest(f"missing {H_SERVER} header (want e.g. {H_SERVER}: tcp@10.0.0.5:9000)")
    try:
        address = parse_address(raw.strip())
        if announcing:
            check_announced(address, from_local_peer=is_local_host(request.remote))
    except ValueError as exc:
        raise BadRequest(f"{H_SERVER}: {exc}") from None
    return str(address)


def one_param(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise BadRequest(f"query parameter {name!r} given {len(values)} times")
    return values[0] if values else None


def query_service(request: web.Request) -> str | None:
    raw = one_param(request, Q_SERVICE)
    if raw is None:
        return None
    try:
        names = parse_services(raw, max_services=1)
    except ValueError as exc:
        raise BadRequest(f"service: {exc}") from None
    if not names:
        raise BadRequest("service: empty name")
    return next(iter(names))


def query_index(request: web.Request) -> int | None:
    raw = one_param(request, Q_INDEX)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > MAX_INDEX_DIGITS:
        raise BadRequest(f"index must be a non-negative integer of at most {MAX_INDEX_DIGITS} digits")
    return int(raw)


def query_wait(request: web.Request, max_wait: float) -> float | None:
    raw = one_param(request, Q_WAIT)
    if raw is None:
        return None
    text = raw.removesuffix("s")  # Consul writes waits as "30s"
    try:
        wait = float(text) if len(text) <= 32 else math.nan
    except ValueError:
        wait = math.nan
    if not (math.isfinite(wait) and wait >= 0):
        raise BadRequest("wait must be a number of seconds >= 0")
    # A longer wait than we allow is not the client's fault (it cannot know our
    # max_wait): answer sooner, as Consul does, instead of refusing the watch.
    return min(wait, max_wait)
