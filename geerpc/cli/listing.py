"""``geerpc list REGISTRY_URL``: a registry's live servers as an aligned table.

The command layer over the registry's HTTP API (docs/registry.md): one GET asking
for JSON, read with aiohttp under one deadline for the whole exchange (connecting,
headers and body), with headers and body capped at 16 MiB each. A registry that only
speaks GeeRPC's headers still answers ``X-Geerpc-Servers``, so the table falls back
to that with the services and ages unknown. An ``etcd://`` URL is listed through ``EtcdDiscovery``
(etcd keeps no heartbeat times, so ages are unknown there).

``ClientSecurity`` (``security.py``): an ``https://`` registry is verified with its
``ssl`` (else the system's CAs), and its ``registry_token`` is sent as
``Authorization: Bearer`` to a registry that guards reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import sys
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

import aiohttp

from ..errors import GeeRPCError
from ..httpconn import connector as make_connector
from ..registry.contract import H_SERVERS
from . import EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CommandError
from .security import ClientSecurity, discovery

__all__ = ["Row", "format_table", "rows_from_header", "rows_from_json", "run"]

# Caps on what the registry may send. The header cap matters: GeeRPC's registry sends
# every address in one X-Geerpc-Servers header (about 20 bytes each), far past the
# 8 KiB aiohttp (or the 64 KiB http.client) accepts by default.
_MAX_BODY: Final = 16 * 1024 * 1024
_MAX_HEADER: Final = 16 * 1024 * 1024
ANY: Final = "(any)"  # declared no services: it is sent calls for every service
UNKNOWN: Final = "(unknown)"
NONE: Final = "(none)"


class Row(NamedTuple):
    """One server as shown: address, services text, seconds since its last heartbeat."""

    address: str
    services: str
    age: float | None


def run(url: str, *, timeout: float, security: ClientSecurity | None = None) -> int:
    """Print the table of the registry at ``url``; return the exit status."""
    logging.basicConfig(level=logging.WARNING, format="geerpc: %(message)s")
    fetch = _fetch_http if url.startswith(("http://", "https://")) else _fetch_discovery
    rows = asyncio.run(fetch(url, timeout, security or ClientSecurity()))
    print(format_table(rows), flush=True)
    if not rows:
        print("geerpc: no live servers", file=sys.stderr)
    return EXIT_OK


def format_table(rows: Sequence[Row]) -> str:
    """The aligned table, header first; ages right-aligned with one decimal, ``-`` when unknown."""
    lines = [("ADDRESS", "SERVICES", "AGE")]
    lines += [(r.address, r.services, "-" if r.age is None else f"{r.age:.1f}s") for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {s:<{widths[1]}}  {age:>{widths[2]}}" for a, s, age in lines)


def rows_from_json(document: Any) -> list[Row] | None:
    """Rows from the registry's JSON reply, or None when it is not that document."""
    if not isinstance(document, dict) or not isinstance(document.get("servers"), list):
        return None
    rows = []
    for item in document["servers"]:
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            continue  # not ours to judge: show what can be shown
        services = item.get("services")
        if services is None:
            text = ANY
        elif isinstance(services, list):
            text = ",".join(str(s) for s in services) or NONE
        else:
            text = UNKNOWN
        age = item.get("age")
        rows.append(Row(item["address"], text, float(age) if isinstance(age, int | float) else None))
    return sorted(rows)


def rows_from_header(value: str) -> list[Row]:
    """Rows from an ``X-Geerpc-Servers`` header: addresses only."""
    return [Row(address, UNKNOWN, None) for address in sorted(filter(None, value.split(",")))]


async def _fetch_http(url: str, timeout: float, security: ClientSecurity) -> list[Row]:
    try:
        # One deadline for everything: a per-read timeout (urllib's) never fires
        # against a registry that drips its reply a byte at a time.
        async with asyncio.timeout(timeout):
            return await _get_rows(url, security)
    except TimeoutError:
        raise CommandError(f"registry {url} did not answer within {timeout:g} s", EXIT_TIMEOUT) from None
    except aiohttp.ClientConnectorCertificateError as exc:
        error = exc.certificate_error
        why = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
        raise CommandError(f"cannot reach registry {url}: certificate verify failed: {why} "
                           f"(--tls-ca FILE trusts the CA that signed it)") from None
    except aiohttp.ClientConnectorError as exc:
        error = exc.os_error
        if isinstance(error, ssl.SSLError):
            raise CommandError(f"cannot reach registry {url}: {_tls_failure(error)}") from None
        # asyncio words a refusal "Connect call failed (...)": say what the OS says. A
        # resolver error's errno is an EAI_ code that os.strerror does not know.
        if isinstance(error, socket.gaierror) or not error.errno:
            reason = error.strerror or str(error)
        else:
            reason = os.strerror(error.errno)
        raise CommandError(f"cannot reach registry {url}: {reason}") from None
    except aiohttp.InvalidURL:
        raise CommandError(f"not a valid registry URL: {url!r}", EXIT_USAGE) from None
    except aiohttp.ClientResponseError as exc:  # a reply aiohttp cannot parse (headers over the cap...)
        raise CommandError(f"cannot read registry {url}: {exc.message or exc}") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        # Closed or reset after connecting: an HTTPS port closes a plaintext request
        # unanswered; a registry that wants a client certificate closes the connection
        # once TLS is up (or resets it, depending on timing).
        hint = (" (an https:// registry?)" if url.startswith("http://")
                else " (does it want a client certificate? --tls-cert FILE --tls-key FILE)")
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        raise CommandError(f"cannot read registry {url}: {why}{hint}") from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:  # a reset connection, a malformed URL
        raise CommandError(f"cannot read registry {url}: {exc or type(exc).__name__}") from None


def _tls_failure(error: ssl.SSLError) -> str:
    reason = error.reason or str(error)
    if reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"):
        return f"it did not answer in TLS ({reason}): a plain http:// registry?"
    if "CERTIFICATE_REQUIRED" in reason or "HANDSHAKE_FAILURE" in reason:
        return f"TLS failed ({reason}): the registry wants a client certificate (--tls-cert and --tls-key)"
    return f"TLS failed: {reason}"


async def _get_rows(url: str, security: ClientSecurity | None = None) -> list[Row]:
    # aiohttp's own timeouts are off: the caller's deadline covers the whole exchange.
    security = security or ClientSecurity()
    headers = {"Accept": "application/json"}
    if security.registry_token is not None:
        headers["Authorization"] = f"Bearer {security.registry_token}"
    # ssl: verify with the given context, or the system's CAs (aiohttp's True).
    connector = make_connector(security.ssl if security.ssl is not None else True)
    session = aiohttp.ClientSession(max_line_size=_MAX_HEADER, max_field_size=_MAX_HEADER,
                                    timeout=aiohttp.ClientTimeout(total=None), connector=connector)
    async with session, session.get(url, headers=headers) as response:
        if response.status == 401:
            if security.registry_token is None:
                raise CommandError(f"registry {url} answered 401: it wants a read token "
                                   f"(--registry-token, or GEERPC_REGISTRY_READ_TOKEN)")
            raise CommandError(f"registry {url} answered 401: it refused our token")
        if response.status >= 400:
            first = (await response.content.read(200)).decode("utf-8", "replace").strip().splitlines()
            detail = f": {first[0]}" if first else ""
            raise CommandError(f"registry {url} answered {response.status} {response.reason}{detail}")
        header = response.headers.get(H_SERVERS)
        json_reply = "json" in response.headers.get("Content-Type", "")
        body = await _read_capped(response) if json_reply else None
    if body is not None:
        try:
            rows = rows_from_json(json.loads(body))
        except (ValueError, RecursionError):  # malformed, or nested past the parser's depth
            rows = None
        if rows is not None:
            return rows
    if header is None:
        raise CommandError(f"{url} is not a geerpc registry (no {H_SERVERS} header)")
    return rows_from_header(header)


async def _read_capped(response: aiohttp.ClientResponse) -> bytes | None:
    """The body, or None when it is larger than _MAX_BODY (the header then has to do)."""
    if response.content_length is not None and response.content_length > _MAX_BODY:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > _MAX_BODY:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _fetch_discovery(url: str, timeout: float, security: ClientSecurity) -> list[Row]:
    """A registry listed through its discovery (etcd and the like): ages unknown."""
    try:
        found = discovery(url, timeout, security)
        try:
            async with asyncio.timeout(timeout):
                await found.refresh()
            servers = found.services()
        finally:
            await found.close()
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except ImportError as exc:
        raise CommandError(f"{url.split(':', 1)[0]}:// needs an extra that is not installed: {exc}") from None
    except TimeoutError:
        raise CommandError(f"the registry at {url} did not answer within {timeout:g} s", EXIT_TIMEOUT) from None
    except GeeRPCError as exc:
        raise CommandError(str(exc)) from None
    return sorted(Row(address, ANY if offered is None else (",".join(sorted(offered)) or NONE), None)
                  for address, offered in servers.items())
