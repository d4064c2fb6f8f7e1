"""Reading a registry's GET reply: headers and body in, an ``Answer`` out.

Layer: xclient, the sans-IO half of ``RegistryDiscovery``. It reads both forms a
registry may send: geerpc's JSON body (addresses, services, the registry's timeout and
uptime) and GeeRPC's ``X-Geerpc-Servers`` header. No I/O, no clock (the caller says
when the reply arrived), no aiohttp: headers are any mapping.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from ..address import check_announced, is_local_host, parse_address
from ..errors import RegistryError
from ..registry.contract import H_INDEX, H_SERVERS

__all__ = ["Answer", "ReplyReader", "parse_retry_after"]

log = logging.getLogger("geerpc.xclient.registry_discovery")

_MAX_LOGGED_BAD: Final = 1000

Servers = dict[str, frozenset[str] | None]  # address -> services (None: every service)


@dataclass(frozen=True, slots=True)
class Answer:
    """One good reply: the usable servers, and what the registry said about itself."""

    servers: Servers
    index: int | None  # X-Geerpc-Index; None from a registry without watches
    received: float  # monotonic time the reply's head arrived
    timeout: float | None = None  # the registry's timeout (JSON only)
    uptime: float | None = None  # seconds the registry has been up (JSON only)


class ReplyReader:
    """Turns replies of the registry at ``registry`` (a URL, for messages) into ``Answer``s.

    Unusable entries are dropped and logged once each (a bounded number of them), not
    at every refresh. ``read()`` raises ``RegistryError`` for a reply that is not a
    list of servers, and for one that lists servers of which none is usable (a broken
    or hostile registry, not an empty list): the caller then keeps the list it has.
    """

    def __init__(self, registry: str) -> None:
        self.registry = registry
        # unix@ entries name this host's sockets: taken only from a registry on this host
        self._local = is_local_host(urlsplit(registry).hostname)
        self._logged_bad: set[str] = set()

    def read(self, content_type: str, headers: Mapping[str, str], body: bytes, received: float) -> Answer:
        """Read a 200 reply with this content type, headers and body, which arrived at ``received``."""
        index = _parse_int(headers.get(H_INDEX))
        servers: Servers = {}
        if content_type == "application/json":
            try:
                data = json.loads(body)
            except ValueError as exc:
                raise RegistryError(f"malformed JSON reply: {exc}") from None
            if not isinstance(data, dict) or not isinstance(data.get("servers"), list):
                raise RegistryError("JSON reply without a 'servers' list")
            for item in data["servers"]:
                self._add_json_entry(servers, item)
            _check_usable(len(data["servers"]), servers)
            return Answer(servers, index, received, _number(data.get("timeout")), _number(data.get("uptime")))
        header = headers.get(H_SERVERS)
        if header is None:
            raise RegistryError(f"reply has no {H_SERVERS} header")
        listed = [address.strip() for address in header.split(",") if address.strip()]
        for address in listed:
            self._add_entry(servers, address, None)
        _check_usable(len(listed), servers)
        return Answer(servers, index, received)

    def _add_json_entry(self, servers: Servers, item: Any) -> None:
        if not isinstance(item, dict) or not isinstance(item.get("address"), str):
            self._log_bad(repr(item)[:80], "not an object with an address")
            return
        offered = item.get("services")
        if offered is not None and not (isinstance(offered, list) and all(isinstance(s, str) for s in offered)):
            self._log_bad(item["address"], "services is not a list of names")
            return
        self._add_entry(servers, item["address"], None if offered is None else frozenset(offered))

    def _add_entry(self, servers: Servers, address: str, offered: frozenset[str] | None) -> None:
        try:
            check_announced(parse_address(address), from_local_peer=self._local)
        except ValueError as exc:
            self._log_bad(address, str(exc))
            return
        servers[address] = offered

    def _log_bad(self, address: str, reason: str) -> None:
        # One log line per bad entry, not one per refresh; bounded so garbage cannot grow it.
        if address not in self._logged_bad and len(self._logged_bad) < _MAX_LOGGED_BAD:
            self._logged_bad.add(address)
            log.warning("registry %s lists an unusable server %.80r, ignored: %s", self.registry, address, reason)


def parse_retry_after(value: str | None) -> float:
    """A ``Retry-After`` header in seconds; 0 when absent or not delta-seconds.

    Only the delta-seconds form: an HTTP date or garbage counts as "not said".
    """
    if value is None or not value.isascii() or not value.strip().isdigit() or len(value.strip()) > 9:
        return 0.0
    return float(value.strip())


def _check_usable(listed: int, servers: Servers) -> None:
    # Entries but not one usable: a broken or hostile registry, not an empty list.
    # Failing keeps the list we have (and logs it) instead of emptying it silently.
    if listed and not servers:
        raise RegistryError(f"none of the {listed} listed server(s) is a usable address")


def _parse_int(value: str | None) -> int | None:
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 20:
        return None
    return int(value)


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
