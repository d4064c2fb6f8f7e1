"""``geerpc list REGISTRY_URL``: a registry's live servers as an aligned table.

The command layer over the registry's HTTP API (docs/registry.md): one GET asking
for JSON, read with the standard library. A registry that only speaks GeeRPC's
headers still answers ``X-Geerpc-Servers``, so the table falls back to that with the
services and ages unknown. An ``etcd://`` URL is listed through ``EtcdDiscovery``
(etcd keeps no heartbeat times, so ages are unknown there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any, Final, NamedTuple

from ..errors import GeeRPCError
from . import EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CommandError

__all__ = ["Row", "format_table", "rows_from_header", "rows_from_json", "run"]

_MAX_BODY: Final = 16 * 1024 * 1024
_SERVERS_HEADER: Final = "X-Geerpc-Servers"  # GeeRPC's contract, spelled as in registry.server
ANY: Final = "(any)"  # declared no services: it is sent calls for every service
UNKNOWN: Final = "(unknown)"
NONE: Final = "(none)"


class Row(NamedTuple):
    """One server as shown: address, services text, seconds since its last heartbeat."""

    address: str
    services: str
    age: float | None


def run(url: str, *, timeout: float) -> int:
    """Print the table of the registry at ``url``; return the exit status."""
    logging.basicConfig(level=logging.WARNING, format="geerpc: %(message)s")
    rows = _fetch_etcd(url, timeout) if url.startswith("etcd://") else _fetch_http(url, timeout)
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


def _fetch_http(url: str, timeout: float) -> list[Row]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            header = response.headers.get(_SERVERS_HEADER)
            body = response.read(_MAX_BODY + 1)
            json_reply = "json" in response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        body_lines = exc.read(200).decode("utf-8", "replace").strip().splitlines()
        detail = f": {body_lines[0]}" if body_lines else ""
        raise CommandError(f"registry {url} answered {exc.code} {exc.reason}{detail}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise CommandError(f"registry {url} did not answer within {timeout:g} s", EXIT_TIMEOUT) from None
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) and exc.reason.strerror else exc.reason
        raise CommandError(f"cannot reach registry {url}: {reason}") from None
    except TimeoutError:
        raise CommandError(f"registry {url} did not answer within {timeout:g} s", EXIT_TIMEOUT) from None
    except (OSError, ValueError) as exc:  # a reset connection, a malformed URL
        raise CommandError(f"cannot read registry {url}: {exc}") from None
    if json_reply and len(body) <= _MAX_BODY:
        try:
            rows = rows_from_json(json.loads(body))
        except ValueError:
            rows = None
        if rows is not None:
            return rows
    if header is None:
        raise CommandError(f"{url} is not a geerpc registry (no {_SERVERS_HEADER} header)")
    return rows_from_header(header)


def _fetch_etcd(url: str, timeout: float) -> list[Row]:
    try:
        from ..xclient.etcd_discovery import EtcdDiscovery
    except ImportError:
        raise CommandError("etcd:// needs the etcd extra: pip install 'geerpc[etcd]'") from None

    async def fetch() -> dict[str, frozenset[str] | None]:
        discovery = EtcdDiscovery(url)
        try:
            async with asyncio.timeout(timeout):
                await discovery.refresh()
            return discovery.services()
        finally:
            await discovery.close()

    try:
        servers = asyncio.run(fetch())
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    except ImportError:
        raise CommandError("etcd:// needs the etcd extra: pip install 'geerpc[etcd]'") from None
    except TimeoutError:
        raise CommandError(f"etcd at {url} did not answer within {timeout:g} s", EXIT_TIMEOUT) from None
    except GeeRPCError as exc:
        raise CommandError(str(exc)) from None
    return sorted(Row(address, ANY if offered is None else (",".join(sorted(offered)) or NONE), None)
                  for address, offered in servers.items())
