"""Decoding a peer's msgpack within limits, and what the result costs in memory.

msgpack is compact where Python is not: an empty array is one byte on the wire and a
56-byte list in memory, so a 16 MiB frame of nested empty arrays would decode into
more than a gigabyte, and building it would hold the event loop for seconds. Every
message a peer sends is therefore decoded here, against ``max_elements``: the most
elements one message may hold, counting every array element, every map entry (a key and
its value), and every container itself.

A small payload cannot hold more elements than twice its length, so payloads up to
``SMALL`` bytes are decoded in one C call and charged their worst case. Larger ones
are decoded with hooks that count containers as they are built and stop
the decode as soon as the count passes the limit: the memory and time spent on a
hostile payload are bounded by the limit, not by the payload.

Sans-IO: bytes in, values out, no sockets and no event loop.
"""

from __future__ import annotations

import gc
from typing import Any, Final

import msgpack

__all__ = ["DEFAULT_MAX_ELEMENTS", "SMALL", "SMALL_COST", "VALUE_COST", "TooManyElements",
           "UNPACK_OPTIONS", "unpack"]

DEFAULT_MAX_ELEMENTS: Final = 262_144
SMALL: Final = 512  # bytes: decoded without counting, charged the worst case
# Bytes of memory charged per element: an empty list costs 56 plus its slot in the
# parent, a map entry a key object (50 and up for a str), a value and its slot.
VALUE_COST: Final = 96
SMALL_COST: Final = 2 * VALUE_COST  # per byte of a small payload: its worst case
_GC_PAUSE_ABOVE: Final = 64 * 1024  # bytes: no cyclic GC passes while decoding payloads this large


class TooManyElements(ValueError):
    """A message held more elements than the limit allows."""


def _reject_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not accepted")


#: How every peer's msgpack is read: str as str, map keys str or bytes, no extensions.
UNPACK_OPTIONS: Final[dict[str, Any]] = {"raw": False, "strict_map_key": True, "ext_hook": _reject_ext}
_unpackb = msgpack.unpackb


class _Counter:
    """The list and map hooks of one decode: counts elements, stops past the limit."""

    __slots__ = ("elements", "limit")

    def __init__(self, limit: int) -> None:
        self.elements = 0
        self.limit = limit

    def container(self, value: Any) -> Any:
        self.elements += 1 + len(value)  # the container and its elements (a map's: its entries)
        if self.elements > self.limit:
            raise TooManyElements(f"more than {self.limit:,} elements in one message (max_elements)")
        return value


def unpack(payload: bytes | memoryview, max_elements: int = DEFAULT_MAX_ELEMENTS) -> tuple[Any, int]:
    """Decode one message; return it and the memory it is charged, in bytes.

    The charge is the payload's length plus ``VALUE_COST`` per element: counted
    exactly for payloads over ``SMALL`` bytes, the worst case (two elements per byte)
    for smaller ones. Raises TooManyElements past ``max_elements``, and ValueError (msgpack's own
    errors included) or TypeError for bytes that are not one valid msgpack value.
    """
    size = len(payload)
    if size <= SMALL and 2 * size <= max_elements:
        return _unpackb(payload, **UNPACK_OPTIONS), size + SMALL_COST * size
    counter = _Counter(max_elements)
    # Building many containers triggers collections that walk every object on the
    # heap, again and again: decoding a large payload is much faster without them.
    pause = size > _GC_PAUSE_ABOVE and gc.isenabled()
    if pause:
        gc.disable()
    try:
        # unpackb decodes from the payload in place (an Unpacker would copy it first)
        value = _unpackb(payload, **UNPACK_OPTIONS, list_hook=counter.container,
                         object_hook=counter.container,
                         max_array_len=max_elements, max_map_len=max_elements,
                         max_str_len=size, max_bin_len=size, max_ext_len=size)
    except ValueError as exc:
        if "exceeds max_" in str(exc):  # an array or map header over the limit, before its body
            raise TooManyElements(
                f"a container of more than {max_elements:,} elements (max_elements)") from None
        raise
    finally:
        if pause:
            gc.enable()
    # Containers are counted by the hooks; a message with none (a bare value) is one element.
    return value, size + VALUE_COST * max(counter.elements, 1)

