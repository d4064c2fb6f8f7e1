"""``geerpc serve module:attr``: serve an object's methods without a server script.

The command layer over ``Server``: find the object, register it, start, print the
address, and stop gracefully on SIGTERM or SIGINT. ``Security`` holds what the TLS and
token options asked for, already loaded (``security.py``).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import signal
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from ..errors import GeeRPCError
from ..server import Server
from . import EXIT_OK, EXIT_USAGE, CommandError

__all__ = ["Security", "load_object", "run"]


@dataclass(frozen=True)
class Security:
    """``tls``: serve TLS with it; ``registry_tls``: verify the registry with it;
    ``registry_token``: sent with heartbeats; ``tokens``: token -> identity, every
    call must carry one of them."""

    tls: SSLContext | None = None
    registry_tls: SSLContext | None = None
    registry_token: str | None = None
    tokens: dict[str, str] | None = None

_STOP_GRACE = 5.0  # seconds calls in flight get to finish on SIGTERM
# What a module or constructor may raise that is no Exception: caught while loading
# (and only then), so the command still says what happened and exits with status 1.
_EXITS = (SystemExit, KeyboardInterrupt)
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep


def run(spec: str, *, host: str, port: int, registry: str | None, name: str | None, log_level: str,
        security: Security | None = None) -> int:
    """Serve the object ``spec`` names until SIGTERM or SIGINT; return the exit status."""
    security = security or Security()
    try:
        logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    except ValueError:
        raise CommandError(f"unknown --log-level {log_level!r}", EXIT_USAGE) from None
    obj = load_object(spec)
    auth = None
    if security.tokens is not None:
        from ..auth import BearerTokens

        auth = BearerTokens(security.tokens)
        if security.tls is None and not _is_local(host):
            print("geerpc: warning: tokens cross the network in clear over tcp@, where anyone on the path "
                  "can read them; serve TLS with --tls-cert and --tls-key", file=sys.stderr, flush=True)
    server = Server(auth=auth)
    try:
        server.register(obj, name)
    except ValueError as exc:
        raise CommandError(f"cannot serve {spec}: {exc}") from None
    asyncio.run(_serve(server, host, port, registry, security))
    return EXIT_OK


def _is_local(host: str) -> bool:
    from ..address import is_local_host

    return host.startswith("unix@") or is_local_host(host.partition("@")[2].rpartition(":")[0] or host)


def load_object(spec: str) -> Any:
    """Import ``module:attr`` (``attr`` may be dotted) and return the object to serve.

    A class is instantiated with no arguments. The current directory is searched
    first, as ``python -m`` does. Raises CommandError saying what went wrong.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CommandError(f"OBJECT must be module:attr (e.g. myapp:Arith), not {spec!r}", EXIT_USAGE)
    # The console script puts its own directory first on sys.path, not the current one.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise CommandError(f"cannot import {module_name!r}: no module named {exc.name!r} "
                               f"(run geerpc from the directory that holds it)") from None
        raise CommandError(f"cannot import {module_name!r}: {_describe(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - the user's module failed: say where, no traceback
        raise CommandError(f"cannot import {module_name!r}: {_describe(exc)}") from None
    except _EXITS as exc:
        # A script-like module (sys.exit() at the bottom, argparse at import time)
        # must not exit with its own status: 0 would read as success, 3 as a timeout.
        raise CommandError(f"importing {module_name!r} raised {_describe_exit(exc)}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CommandError(f"{module_name!r} has no attribute {attr!r}") from None
    if not inspect.isclass(obj):
        return obj
    try:
        inspect.signature(obj).bind()
    except TypeError as exc:
        raise CommandError(f"cannot create {spec} with no arguments ({exc}); "
                           f"point at an instance instead (module:instance)") from None
    except ValueError:
        pass  # no signature to inspect (some built-in classes): just try
    try:
        return obj()
    except Exception as exc:  # noqa: BLE001
        raise CommandError(f"{spec}() raised {_describe(exc)}") from None
    except _EXITS as exc:
        raise CommandError(f"{spec}() raised {_describe_exit(exc)}") from None


def _describe(exc: BaseException) -> str:
    """``Type: message (file, line N)``, the line being where it was raised."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a user's __str__ that raises; traceback says the same
        message = "<exception str() failed>"
    text = f"{type(exc).__name__}: {message}"
    if isinstance(exc, SyntaxError) and exc.filename:
        return text  # its message already names the file and line
    return text + _where(exc)


def _describe_exit(exc: BaseException) -> str:
    """``SystemExit(7) (file, line N)``: the status is the news, not the message."""
    return repr(exc) + _where(exc)


def _where(exc: BaseException) -> str:
    """`` (file, line N)`` for the last frame of ``exc`` outside the standard library.

    So sys.exit() from argparse, called by the user's module, points at the module.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [frame for frame in frames if not frame.filename.startswith((_STDLIB, "<frozen "))] or frames
    return f" ({os.path.basename(ours[-1].filename)}, line {ours[-1].lineno})" if ours else ""


async def _serve(server: Server, host: str, port: int, registry: str | None, security: Security) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        address = await server.start(host, port, registry=registry, ssl=security.tls,
                                     registry_token=security.registry_token, registry_ssl=security.registry_tls)
    except OSError as exc:
        where = host if host.startswith("unix@") else f"{host}:{port}"
        raise CommandError(f"cannot listen on {where}: {exc.strerror or exc}") from None
    except GeeRPCError as exc:  # an etcd registry that cannot be reached
        raise CommandError(str(exc)) from None
    except ValueError as exc:  # a malformed host or registry URL
        raise CommandError(str(exc), EXIT_USAGE) from None
    try:
        print(address, flush=True)
        await stop.wait()
    finally:
        await server.stop(grace=_STOP_GRACE)
