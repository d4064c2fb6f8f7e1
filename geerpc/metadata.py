"""Call metadata, sans I/O: the rules a call's key/value pairs follow, on both sides.

Metadata is a map from str keys to str or bytes values that travels beside a call's
arguments (a request's seventh element) and beside its reply (a response's fifth),
once both peers agreed to it in the Option (docs/protocol.md). The rules, as gRPC
suggests for its headers:

- keys are lowercase ASCII letters, digits, ``-``, ``_`` and ``.``;
- at most ``MAX_ENTRIES`` entries and ``MAX_SIZE`` bytes in all (each key's bytes
  plus its value's, UTF-8 for a str);
- keys starting with ``geerpc-`` are geerpc's own: a caller may not set them.

``outgoing`` checks what a caller or a handler is about to send (ValueError before
anything is sent); ``incoming_problem`` says what is wrong with a decoded map that
arrived, so the receiver can answer InvalidArguments instead of closing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

__all__ = ["MAX_ENTRIES", "MAX_SIZE", "RESERVED_PREFIX", "EMPTY", "Metadata", "outgoing", "incoming_problem"]

MAX_ENTRIES: Final = 64
MAX_SIZE: Final = 8 * 1024  # bytes of keys and values together
RESERVED_PREFIX: Final = "geerpc-"

Metadata = Mapping[str, "str | bytes"]
#: No metadata: one shared read-only mapping.
EMPTY: Final[Mapping[str, str | bytes]] = MappingProxyType({})

_KEY: Final = re.compile(r"[a-z0-9._-]+")


# Keys seen to be valid and not reserved, so the next call with them costs a set
# lookup, not a regular expression: calls repeat the same few keys. Bounded.
_GOOD_KEYS: set[str] = set()
_MAX_GOOD_KEYS: Final = 4096


def _key_problem(key: Any, reserved_ok: bool) -> str | None:
    if type(key) is not str:
        return f"keys must be str, not {type(key).__name__}"
    if not _KEY.fullmatch(key):
        shown = key if len(key) <= 40 else key[:40] + "..."
        return f"key {shown!r} is not lowercase ASCII letters, digits, '-', '_' and '.'" if key else "a key is empty"
    if key.startswith(RESERVED_PREFIX):
        if reserved_ok:
            return None
        return f"key {key!r} is reserved: keys starting with {RESERVED_PREFIX!r} are geerpc's own"
    if len(_GOOD_KEYS) < _MAX_GOOD_KEYS:
        _GOOD_KEYS.add(key)
    return None


def _problem(metadata: Mapping[Any, Any], *, reserved_ok: bool) -> str | None:
    """What breaks the rules in ``metadata``, in words; None when nothing does."""
    if len(metadata) > MAX_ENTRIES:
        return f"{len(metadata)} entries, over the limit of {MAX_ENTRIES}"
    total = 0
    good = _GOOD_KEYS
    for key, value in metadata.items():
        if key not in good:
            problem = _key_problem(key, reserved_ok)
            if problem is not None:
                return problem
        kind = type(value)
        if kind is str:
            if value.isascii():
                total += len(key) + len(value)
            else:
                try:
                    total += len(key) + len(value.encode("utf-8"))
                except UnicodeEncodeError:
                    return f"the value of {key!r} is not valid UTF-8 text (a lone surrogate)"
        elif kind is bytes:
            total += len(key) + len(value)
        else:
            return f"the value of {key!r} must be str or bytes, not {kind.__name__}"
    if total > MAX_SIZE:
        return f"{total} bytes of keys and values, over the limit of {MAX_SIZE}"
    return None


def outgoing(metadata: Mapping[str, str | bytes], what: str = "metadata") -> dict[str, str | bytes]:
    """Metadata about to be sent, checked, as a plain dict (itself when it is one).

    Raises ValueError, naming ``what``, when it breaks a rule or is not a mapping.
    """
    if not isinstance(metadata, Mapping):
        raise ValueError(f"{what} must be a mapping of str to str or bytes, not {type(metadata).__name__}")
    problem = _problem(metadata, reserved_ok=False)
    if problem is not None:
        raise ValueError(f"{what}: {problem}")
    return metadata if type(metadata) is dict else dict(metadata)


def incoming_problem(metadata: Any) -> str | None:
    """What is wrong with a decoded metadata value from the wire; None when it is fine.

    A peer may send reserved keys (they are geerpc's, and a newer peer may use them).
    """
    if type(metadata) is not dict:
        return f"metadata must be a map, not {type(metadata).__name__}"
    return _problem(metadata, reserved_ok=True)
