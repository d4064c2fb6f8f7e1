"""The command line's value layer: msgpack values to JSON text and back. Pure, no I/O.

msgpack carries more than JSON can say: bytes (distinct from str), maps whose keys
are not strings, and floats that JSON has no literal for. Those are written as
one-key JSON objects, "tags":

    bytes                       {"$bytes": "<standard base64>"}
    a map with a non-str key    {"$map": [[key, value], ...]}
    NaN, Infinity, -Infinity    {"$float": "NaN"}  ("Infinity", "-Infinity")
    a msgpack timestamp         {"$timestamp": [seconds, nanoseconds]}  (since the epoch, UTC)

A str-keyed dict that would itself read as a tag (its only key is one of the tags)
is written as a "$map" too, so every output decodes one way only.
Arguments given on the command line are decoded with the same rules, so a result can
be pasted back as an argument.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Final

import msgpack

__all__ = ["TAGS", "dumps", "from_json", "parse_arg", "to_json"]

TAGS: Final = frozenset({"$bytes", "$map", "$float", "$timestamp"})
_FLOATS: Final = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def to_json(value: Any) -> Any:
    """A JSON-able copy of a msgpack value, with tags for what JSON cannot say."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, msgpack.Timestamp):  # the one extension type the protocol lets through
        return {"$timestamp": [value.seconds, value.nanoseconds]}
    if isinstance(value, dict):
        if all(type(key) is str for key in value) and not (len(value) == 1 and next(iter(value)) in TAGS):
            return {key: to_json(item) for key, item in value.items()}
        return {"$map": [[to_json(key), to_json(item)] for key, item in value.items()]}
    return value  # None, bool, int, finite float, str


def from_json(value: Any) -> Any:
    """The msgpack value a JSON value stands for: tags decoded. Raises ValueError on a bad tag."""
    if isinstance(value, list):
        return [from_json(item) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        tag, body = next(iter(value.items()))
        if tag == "$bytes":
            if not isinstance(body, str):
                raise ValueError('"$bytes" wants a base64 string')
            try:
                return base64.b64decode(body, validate=True)
            except binascii.Error as exc:
                raise ValueError(f'"$bytes" is not valid base64: {exc}') from None
        if tag == "$map":
            if not isinstance(body, list) or not all(isinstance(p, list) and len(p) == 2 for p in body):
                raise ValueError('"$map" wants a list of [key, value] pairs')
            pairs = [(from_json(k), from_json(v)) for k, v in body]
            try:
                return dict(pairs)
            except TypeError:  # a list or map as a key: msgpack allows it, Python does not
                raise ValueError('"$map" keys must be strings, numbers, booleans, null or bytes') from None
        if tag == "$float":
            if body not in _FLOATS:
                raise ValueError('"$float" wants "NaN", "Infinity" or "-Infinity"')
            return _FLOATS[body]
        if tag == "$timestamp":
            if not (isinstance(body, list) and len(body) == 2 and all(type(n) is int for n in body)
                    and 0 <= body[1] < 10**9):
                raise ValueError('"$timestamp" wants [seconds, nanoseconds]')
            try:
                return msgpack.Timestamp(body[0], body[1])
            except (ValueError, TypeError) as exc:
                raise ValueError(f'"$timestamp": {exc}') from None
    return {key: from_json(item) for key, item in value.items()}


def dumps(value: Any) -> str:
    """One line of strict JSON (no NaN literals) for a msgpack value."""
    return json.dumps(to_json(value), ensure_ascii=False, allow_nan=False)


def parse_arg(text: str) -> Any:
    """A command-line argument: JSON when it parses as JSON, else the string itself.

    ``1`` is the int 1, ``abc`` the string "abc", ``'"1"'`` the string "1". A JSON
    value with a malformed tag, or nested deeper than Python can parse, raises
    ValueError rather than silently becoming a str.
    """
    try:
        # NaN and Infinity are not JSON: "NaN" stays a string; tag it to send the float.
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return text
    except RecursionError:
        # Valid JSON, just deeper than Python's parser goes: an error, not a string,
        # as "[[[...]]]" clearly meant a list.
        raise ValueError("JSON nested too deeply") from None
    try:
        return from_json(value)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
