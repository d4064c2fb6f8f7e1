"""The registry's list as replies carry it: the ``X-Geerpc-Servers`` value and the JSON body.

Layer: between the liveness table (``table.py``) and the HTTP endpoint (``server.py``).
Pure: it reads the table at the ``now`` it is given and keeps caches keyed by the
table's index; it imports nothing from asyncio or aiohttp.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Final

from .table import LivenessTable

__all__ = ["FILTERED_CACHE", "ListRenderer"]

_JSON_REUSE: Final = 0.1  # seconds a rendered JSON list may be served again
# Filtered X-Geerpc-Servers values kept per index. ``service=`` is chosen by the
# client, so the cache must be bounded: otherwise each distinct name costs a copy
# of the list until the next change.
FILTERED_CACHE: Final = 16


class ListRenderer:
    """Renders ``table``'s live servers, reusing work while the list has not changed.

    Rendering 10,000 addresses per GET adds up, and the list only changes with the
    index. The unfiltered header value (GeeRPC's clients know no filter) is always
    kept; filtered ones go to a small LRU.
    """

    def __init__(self, table: LivenessTable) -> None:
        self.table = table
        self._all_servers: str | None = None
        self._header_cache: OrderedDict[str, str] = OrderedDict()
        self._header_cache_index = -1
        self._fragments: dict[str, tuple[frozenset[str] | None, str]] = {}
        self._json_cache: dict[tuple[int, str | None], tuple[float, bytes]] = {}

    @property
    def cached_filters(self) -> int:
        """How many filtered ``X-Geerpc-Servers`` values are kept now (at most ``FILTERED_CACHE``)."""
        return len(self._header_cache)

    def servers_header(self, now: float, service: str | None) -> str:
        """The ``X-Geerpc-Servers`` value: live addresses offering ``service``, sorted."""
        if self._header_cache_index != self.table.index:
            self._all_servers = None
            self._header_cache.clear()
            self._header_cache_index = self.table.index
        if service is None:
            if self._all_servers is None:
                self._all_servers = ",".join(self.table.alive(now))
            return self._all_servers
        cache = self._header_cache
        joined = cache.get(service)
        if joined is not None:
            cache.move_to_end(service)
            return joined
        joined = cache[service] = ",".join(self.table.alive(now, service))
        if len(cache) > FILTERED_CACHE:
            cache.popitem(last=False)
        return joined

    def json(self, now: float, service: str | None, head: dict[str, object]) -> bytes:
        """The JSON body: ``head``'s fields (the index first), then ``"servers"``."""
        # Strategy: a change wakes every watcher at once, and with 10,000 servers listed
        # a render costs milliseconds. So (1) replies for the same index and service
        # within _JSON_REUSE seconds share one body (ages then lag by at most that), and
        # (2) each server's address and services are encoded once and kept until they
        # change, so a render only formats the ages.
        key = (self.table.index, service)
        reused = self._json_cache.get(key)
        if reused is not None and now - reused[0] < _JSON_REUSE:
            return reused[1]
        body = self._render_json(now, service, head)
        self._json_cache = {key: (now, body)}  # one entry: the herd asks for one list
        return body

    def _render_json(self, now: float, service: str | None, head: dict[str, object]) -> bytes:
        fragments = self._fragments
        if len(fragments) > 2 * len(self.table) + 1024:
            fragments.clear()  # forget servers long gone
        parts = []
        for address, services, last_seen in self.table.entries(now, service):
            cached = fragments.get(address)
            if cached is None or cached[0] is not services:
                listed = None if services is None else sorted(services)
                text = f'{{"address": {json.dumps(address)}, "services": {json.dumps(listed)}, "age": '
                cached = fragments[address] = (services, text)
            parts.append(f"{cached[1]}{max(0.0, now - last_seen):.3f}}}")
        fields = "".join(f"{json.dumps(name)}: {json.dumps(value)}, " for name, value in head.items())
        return ("{" + fields + '"servers": [' + ", ".join(parts) + "]}").encode()
