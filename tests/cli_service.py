"""Services for the command-line tests, served with ``geerpc serve cli_service:...`` from tests/."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgpack


class Calc:
    """Served as a class: ``geerpc serve`` instantiates it with no arguments."""

    def add(self, a: Any, b: Any) -> Any:
        return a + b

    def div(self, a: float, b: float) -> float:
        return a / b

    async def sleep(self, seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    def echo(self, value: Any) -> Any:
        return value

    def typeof(self, *values: Any) -> list[str]:
        """The Python types the server received: shows how each ARG was parsed."""
        return [type(value).__name__ for value in values]

    def greet(self, name: str, *, greeting: str = "hello") -> str:
        return f"{greeting}, {name}"

    def unsendable(self) -> object:
        return object()

    def blob(self, n: int) -> bytes:
        return bytes(range(n))

    def odd(self) -> dict[Any, Any]:
        """Values JSON cannot carry as they are."""
        return {"raw": b"\x00\xff", "keys": {b"k": 1}, "nan": float("nan"), "tag": {"$bytes": "x"},
                "when": msgpack.Timestamp(1700000000, 5)}

    def nest(self, depth: int) -> list[Any]:
        """A list in a list ... ``depth`` deep: within msgpack's limits, past JSON's."""
        value: list[Any] = []
        for _ in range(depth):
            value = [value]
        return value

    async def count(self, n: int, fail: bool = False) -> Any:
        """A stream (``geerpc call --stream``): 0 .. n-1, then ValueError if ``fail``."""
        for i in range(n):
            yield {"i": i, "raw": bytes([i])}
        if fail:
            raise ValueError(f"stopped after {n}")

    def mark(self, path: str) -> int:
        """Append this server's pid to ``path``: shows which servers a broadcast reached."""
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        return os.getpid()


class Failing:
    """Served under the name "Calc" beside a real Calc: a broadcast where one server raises."""

    def add(self, a: Any, b: Any) -> Any:
        raise ValueError("not on this server")


#: Served as an instance, under another name with ``--name``.
calc = Calc()


class NeedsArgs:
    def __init__(self, size: int) -> None:
        self.size = size

    def ping(self) -> str:
        return "pong"


class Exploding:
    def __init__(self) -> None:
        raise RuntimeError("no database")

    def ping(self) -> str:
        return "pong"


class Exits:
    """A constructor that ends the program, as a script's might."""

    def __init__(self) -> None:
        raise SystemExit(0)

    def ping(self) -> str:
        return "pong"


class Unprintable:
    def __init__(self) -> None:
        raise _Unprintable()

    def ping(self) -> str:
        return "pong"


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no str")
