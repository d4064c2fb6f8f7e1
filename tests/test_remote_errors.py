"""Errors a user can catch: a handler's built-in exception as that built-in, map keys
refused where they are sent, and handler tracebacks in the server's log."""

from __future__ import annotations

import copy
import logging
import pickle
import threading
from typing import Any

import pytest
from _raw import serving

import geerpc
from geerpc import protocol as p
from geerpc.errors import BUILTIN_ERRORS, remote_builtin
from geerpc.pending import remote_error
from geerpc.replies import HandlerTracebacks
from geerpc.sync import SyncClient


class ValueError_(Exception):  # noqa: N801 - renamed below: a handler's own class called "ValueError"
    pass


ValueError_.__name__ = "ValueError"


class Raiser:
    def __init__(self) -> None:
        self.calls = 0

    async def value(self) -> None:
        raise ValueError("bad value")

    async def key(self) -> None:
        raise KeyError("missing")

    def divide(self, a: int, b: int) -> float:  # on a worker thread
        return a / b

    async def own_value_error(self) -> None:
        raise ValueError_("not the built-in")

    async def timeout(self) -> None:
        raise TimeoutError("the database did not answer")

    async def int_keys(self) -> dict[int, str]:
        return {1: "one"}

    async def nested_int_keys(self) -> list[Any]:
        return [{"ok": {"counts": {7: 1}}}]

    def buggy(self, a: Any) -> Any:  # raises only in the traceback test: the log's limit is per method
        return a / 1

    async def echo(self, value: Any) -> Any:
        self.calls += 1
        return value


@pytest.fixture
async def raiser() -> Any:
    service = Raiser()
    async with serving(service) as server, await geerpc.dial(server.address) as client:
        yield server, client, service


async def test_a_remote_builtin_error_is_caught_as_that_builtin_and_as_a_remote_error(raiser):
    _, client, _ = raiser
    with pytest.raises(ValueError, match="^bad value$") as value:
        await client.call("Raiser.value")
    with pytest.raises(LookupError) as key:
        await client.call("Raiser.key")
    with pytest.raises(ArithmeticError) as zero:
        await client.call("Raiser.divide", 1, 0)
    for error, name, cls in [(value, "ValueError", ValueError), (key, "KeyError", KeyError),
                             (zero, "ZeroDivisionError", ZeroDivisionError)]:
        assert isinstance(error.value, geerpc.RemoteError) and isinstance(error.value, geerpc.GeeRPCError)
        assert isinstance(error.value, cls) and error.value.type == name
    assert str(key.value) == "'missing'"  # as str() said it on the server, not quoted again
    assert type(value.value) is type(remote_builtin("ValueError", "x"))  # one class per built-in


async def test_a_handlers_own_class_named_like_a_builtin_is_caught_as_the_builtin(raiser):
    _, client, _ = raiser
    with pytest.raises(ValueError, match="not the built-in") as info:  # the name is all the wire carries
        await client.call("Raiser.own_value_error")
    assert info.value.type == "ValueError"


async def test_a_remote_timeout_error_is_no_timeout_of_ours(raiser):
    _, client, _ = raiser
    with pytest.raises(geerpc.RemoteError) as info:
        await client.call("Raiser.timeout")
    assert type(info.value) is geerpc.RemoteError and not isinstance(info.value, TimeoutError)


@pytest.mark.parametrize("name", ["os.system", "SystemExit", "KeyboardInterrupt", "GeneratorExit",
                                  "CancelledError", "TimeoutError", "ConnectionResetError", "OSError",
                                  "FileNotFoundError", "StopIteration", "AttributeError", "MemoryError",
                                  "UserWarning", "Exception", "ExceptionGroup", "__import__", "", "NoSuch"])
def test_other_names_stay_plain_remote_errors(name):
    error = remote_error(p.ErrorCode.APPLICATION, name, "message")
    assert type(error) is geerpc.RemoteError and error.type == name and str(error) == "message"


def test_only_application_errors_take_a_builtin_class():
    assert type(remote_error(p.ErrorCode.INTERNAL, "ValueError", "m")) is geerpc.RemoteError
    assert type(remote_error(p.ErrorCode.INVALID_ARGUMENT, "InvalidArguments", "m")) is geerpc.InvalidArguments


def test_the_table_holds_exception_classes_only_and_every_one_combines():
    assert "ValueError" in BUILTIN_ERRORS and "KeyError" in BUILTIN_ERRORS and "ZeroDivisionError" in BUILTIN_ERRORS
    for name, base in BUILTIN_ERRORS.items():
        assert issubclass(base, Exception) and not issubclass(base, OSError | Warning | StopIteration)
        error = remote_builtin(name, "m")
        assert isinstance(error, base) and isinstance(error, geerpc.RemoteError) and str(error) == "m"
    assert isinstance(remote_builtin("UnicodeDecodeError", "m"), UnicodeError)  # its base stands in


@pytest.mark.parametrize("name", ["ValueError", "KeyError", "UnicodeDecodeError"])
def test_combined_errors_survive_pickle_and_copy(name):
    error = remote_builtin(name, "it broke")
    assert error is not None
    for again in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(again) is type(error) and again.type == name and str(again) == "it broke"


def test_a_remote_builtin_error_reaches_a_sync_clients_caller():
    import asyncio
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = geerpc.Server()
    server.register(Raiser())
    try:
        address = asyncio.run_coroutine_threadsafe(server.start("127.0.0.1", 0), loop).result(10)
        with SyncClient(address) as client:
            with pytest.raises(KeyError) as info:
                client.call("Raiser.key")
            assert isinstance(info.value, geerpc.RemoteError) and info.value.type == "KeyError"
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=1.0), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ---------------------------------------------------------------- map keys


async def test_call_with_int_keys_raises_at_once_and_sends_nothing(raiser):
    server, client, service = raiser
    with pytest.raises(geerpc.EncodeError) as info:
        await client.call("Raiser.echo", {"a": [{3: "x"}]})
    assert str(info.value) == ("arguments of 'Raiser.echo' cannot be encoded: "
                               "map keys must be str or bytes (got int) in argument 1 at ['a'][0]")
    assert isinstance(info.value, TypeError) and isinstance(info.value, geerpc.GeeRPCError)
    with pytest.raises(TypeError, match=r"\(got NoneType\)|\(got None\) in keyword argument 'value'"):
        await client.call("Raiser.echo", value={None: 1})
    assert service.calls == 0 and client.pending == 0
    assert await client.call("Raiser.echo", {b"k": 1, "s": [1, (2, {"x": None})]}) == {b"k": 1, "s": [1, [2, {"x": None}]]}


async def test_a_result_with_int_keys_is_an_internal_error_counted_and_logged(raiser, caplog):
    server, client, _ = raiser
    caplog.set_level(logging.WARNING, "geerpc.server")
    for method, where in [("int_keys", "in the result"), ("nested_int_keys", "in the result at [0]['ok']['counts']")]:
        with pytest.raises(geerpc.RemoteError) as info:
            await client.call(f"Raiser.{method}")
        message = f"result of Raiser.{method} cannot be encoded: map keys must be str or bytes (got int) {where}"
        assert info.value.type == "SerializationError" and str(info.value) == message
        stats = server.snapshot().method(f"Raiser.{method}")
        assert (stats.calls, stats.errors) == (1, 1)
        assert any(r.levelno == logging.WARNING and r.getMessage() == message for r in caplog.records)


# ---------------------------------------------------------------- handler tracebacks


def _raised(message: str) -> ValueError:
    try:
        raise ValueError(message)
    except ValueError as exc:
        return exc


def test_tracebacks_first_then_one_per_interval_per_method_with_the_count_held_back(caplog):
    logger = logging.getLogger("geerpc.handler.test")
    tracebacks = HandlerTracebacks(10.0, logger)
    caplog.set_level(logging.DEBUG, logger.name)
    for now in (100.0, 101.0, 105.0, 109.9):
        tracebacks.log("S.m", _raised("x"), now)
    tracebacks.log("S.other", _raised("y"), 101.0)  # its own limit
    tracebacks.log("S.m", _raised("z"), 110.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        "S.m raised ValueError; the caller got a RemoteError",
        "S.other raised ValueError; the caller got a RemoteError",
        "S.m raised ValueError; the caller got a RemoteError (and 3 more since the last traceback logged, "
        "not shown: at most one per 10 s)",
    ]
    assert all(r.exc_info is not None for r in caplog.records)
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 3  # the held-back ones, at DEBUG


async def test_a_handlers_traceback_is_logged_at_warning_and_never_sent(raiser, caplog):
    _, client, _ = raiser
    caplog.set_level(logging.WARNING, "geerpc.handler")
    with pytest.raises(TypeError) as info:
        await client.call("Raiser.buggy", "a")  # TypeError inside: a bug of the handler, not InvalidArguments
    assert "Traceback" not in str(info.value)
    [record] = [r for r in caplog.records if r.name == "geerpc.handler"]
    assert record.levelno == logging.WARNING and record.getMessage().startswith("Raiser.buggy raised TypeError")
    assert record.exc_info is not None and "line" in caplog.text
