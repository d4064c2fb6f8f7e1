"""Map keys every geerpc peer accepts, checked on the sending side: str or bytes.

Every peer decodes with msgpack's ``strict_map_key`` (docs/protocol.md section 2),
so a map with, say, an int key encodes fine and fails only at the receiver: a
server's result would count as a success on the server and fail at the client.
``arguments_problem`` and ``result_problem`` find such a key in a value msgpack has
already encoded (so it holds no cycle and nothing msgpack cannot carry), and say
where it is. Imports nothing from the rest of geerpc.

Strategy: the check must cost next to nothing for ordinary calls, so it is done in as
few Python steps as possible:

1. Scalars at the top (the arguments, the result) are passed over by their type. A
   dict, list or tuple there that holds only scalars (and str keys) is recognised in
   two C calls: ``"".join`` of its keys and ``hash()`` of its values (below).
2. Anything else is checked one level at a time, each level in a few C calls:
   ``"".join`` of every key of the level's maps raises TypeError unless each is a str
   (then, and only then, the keys are looked at one by one: bytes keys are fine); and
   one ``hash()`` of a tuple of every value one level down succeeds only when nothing
   below is a dict or a list (tuples hash their items; dicts and lists are
   unhashable), which ends the walk. Otherwise the containers among those values make
   the next level. A list of records costs one failed hash per level, not per record.
3. Only once a bad key is known is the value walked again, depth first, for the path.

A dict or list subclass that defines ``__hash__`` would pass step 2 unlooked-at; the
receiver still refuses a bad key in it, as it would without this check.

A scan of the encoded bytes for map markers was measured and is no gate: it costs as
much as the encoding itself for 64 KiB of bytes, and ints from 128 up, floats and
non-ASCII text hold marker bytes often, so it would rarely let the walk be skipped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain
from typing import Any, Final

__all__ = ["arguments_problem", "result_problem"]

#: Types msgpack encodes that cannot hold a map: passed over without a look.
_SCALARS: Final = frozenset({str, bytes, int, float, bool, type(None)})
_CONTAINERS: Final = (dict, list, tuple)
_SEQUENCES: Final = (list, tuple)
_KEYS: Final = (str, bytes, memoryview)  # msgpack sends a memoryview as bin, read back as bytes
_SHOWN_KEY: Final = 40  # characters of a key's repr shown in a path


def arguments_problem(args: Sequence[Any], kwargs: dict[Any, Any]) -> str | None:
    """What is wrong with the map keys in a call's arguments, or None.

    "map keys must be str or bytes (got int) in argument 1 at ['counts']", where the
    argument is counted from 1 and the path is Python's subscript syntax.
    """
    for value in args:  # the common case, scalars only: one step per argument
        if type(value) not in _SCALARS:
            if not _flat(args):
                return _arguments_walk(args, kwargs)
            break
    if kwargs:
        try:
            "".join(kwargs)  # call(**kwargs) makes str keys; call_until(kwargs={1: 2}) may not
        except TypeError:
            return _arguments_walk(args, kwargs)
        if not _flat(kwargs.values()):
            return _arguments_walk(args, kwargs)
    return None


def result_problem(result: Any) -> str | None:
    """What is wrong with the map keys in a handler's result, or None."""
    if type(result) in _SCALARS or _flat((result,)) or _fits([result]):
        return None
    return _message(_locate(result, []), "in the result")


def _flat(values: Iterable[Any]) -> bool:
    """True when these values are scalars, or containers of scalars whose keys are str:
    decided in a few C calls per value, without a walk. False means "walk to be sure"."""
    for value in values:
        kind = type(value)
        if kind in _SCALARS:
            continue
        try:
            if kind is dict:
                "".join(value)
                hash(tuple(value.values()))
            elif kind is list:
                hash(tuple(value))
            elif kind is tuple:
                hash(value)
            else:
                return False
        except Exception:  # noqa: BLE001 - a bytes key, a container below, a writable memoryview
            return False
    return True


def _arguments_walk(args: Sequence[Any], kwargs: dict[Any, Any]) -> str | None:
    if kwargs and not _keys_fit([kwargs]):
        return _message(_locate(kwargs, []), "in the keyword arguments")
    if _fits([value for value in chain(args, kwargs.values()) if type(value) not in _SCALARS]):
        return None
    for index, value in enumerate(args):
        found = _locate(value, [])
        if found is not None:
            return _message(found, f"in argument {index + 1}")
    for name, value in kwargs.items():
        found = _locate(value, [])
        if found is not None:
            return _message(found, f"in keyword argument {name!r}")
    return _message(None, "")


def _fits(level: list[Any]) -> bool:
    """Whether every map in these values, at any depth, has only str or bytes keys."""
    while level:
        maps = [value for value in level if type(value) is dict]
        below: list[Any] = []
        if len(maps) < len(level):  # lists, tuples, or subclasses of dict
            for value in level:
                if type(value) is not dict:
                    if isinstance(value, dict):
                        maps.append(value)
                    elif isinstance(value, _SEQUENCES):
                        below += value
        if maps:
            if not _keys_fit(maps):
                return False
            below += maps[0].values() if len(maps) == 1 else chain.from_iterable(map(dict.values, maps))
        try:
            hash(tuple(below))
        except Exception:  # noqa: BLE001 - unhashable (a dict or list below), or a writable memoryview
            level = [value for value in below if type(value) not in _SCALARS]
        else:
            return True  # no dict or list anywhere below: no map either
    return True


def _keys_fit(maps: list[dict[Any, Any]]) -> bool:
    try:  # every key a str, the common case, in one C call
        "".join(maps[0] if len(maps) == 1 else chain.from_iterable(maps))
    except TypeError:
        return all(isinstance(key, _KEYS) for value in maps for key in value)
    return True


def _locate(value: Any, path: list[str]) -> tuple[str, list[str]] | None:
    """The first bad key's type name and the path to its map, depth first."""
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, _KEYS):
                return ("None" if key is None else type(key).__name__), path
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, _SEQUENCES):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        if isinstance(item, _CONTAINERS):
            shown = repr(key) if isinstance(value, dict) else str(key)
            if len(shown) > _SHOWN_KEY:
                shown = shown[:_SHOWN_KEY] + "..."
            found = _locate(item, [*path, f"[{shown}]"])
            if found is not None:
                return found
    return None


def _message(found: tuple[str, list[str]] | None, where: str) -> str:
    assert found is not None, "_fits found a bad key that _locate did not"
    type_name, path = found
    at = f" at {''.join(path)}" if path else ""
    return f"map keys must be str or bytes (got {type_name}) {where}{at}"
