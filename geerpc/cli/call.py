"""``geerpc call``: one call from the shell, through a Client or an XClient.

The command layer over the public client API. ``--timeout`` bounds the whole command
(registry lookup, dial and call) with one deadline; the call carries what is left of
it to the server, so the server stops work nobody waits for.

``--broadcast`` calls every server offering the service, each on its own connection,
and waits for all of them (within the deadline) rather than stopping at the first
error as ``XClient.broadcast`` does: the point is to see what each server said. It
prints one JSON line per server, in address order, then a count on stderr.

``ClientSecurity`` (``security.py``) carries the TLS context for ``tls@`` servers and an
``https://`` registry, the bearer token for the servers and the registry's read token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import Any

from ..address import parse_address
from ..client import dial
from ..errors import (
    ConnectTimeout,
    GeeRPCError,
    InvalidArguments,
    MethodNotFound,
    NoServerAvailable,
    PermissionDenied,
    RemoteError,
    ServiceNotFound,
    Unauthenticated,
    Unavailable,
)
from ..xclient import Discovery, XClient
from ..xclient.urls import WANT, is_registry_url
from . import EXIT_ERROR, EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CommandError
from .security import ClientSecurity, discovery
from .values import dumps, to_json

__all__ = ["broadcast_line", "describe_failure", "run"]

# Errors geerpc itself reports for a call it did not run: their messages stand alone.
_OWN_REMOTE_ERRORS = (ServiceNotFound, MethodNotFound, InvalidArguments, Unavailable, Unauthenticated,
                      PermissionDenied)
# The type the server gives a result it ran but could not encode (code INTERNAL).
_UNSENDABLE = "SerializationError"


def run(target: str, service_method: str, args: list[Any], kwargs: dict[str, Any], *,
        timeout: float, broadcast: bool, security: ClientSecurity | None = None, stream: bool = False) -> int:
    """Call ``service_method`` on ``target``, print the result as JSON; return the exit status.

    With ``stream`` the method is a generator: each item is printed as a JSON line
    as it arrives. Raises CommandError carrying the message and status for any
    failure (for a broadcast: a failure to find the servers; each server's own
    failure is a line; for a stream: after the items that came before it).
    """
    security = security or ClientSecurity()
    # ERROR: discovery's warnings about an unreachable registry would repeat our message.
    logging.basicConfig(level=logging.ERROR, format="geerpc: %(message)s")
    is_registry = is_registry_url(target)
    if not is_registry:
        try:
            parse_address(target)
        except ValueError as exc:
            raise CommandError(f"bad TARGET: {exc}; or give a registry URL ({WANT})",
                               EXIT_USAGE) from None
    if broadcast:
        if stream:
            raise CommandError("--stream and --broadcast do not go together: a stream comes from one server",
                               EXIT_USAGE)
        return _run_broadcast(target, is_registry, service_method, args, kwargs, timeout, security)
    if stream:
        try:
            asyncio.run(_stream(target, is_registry, service_method, args, kwargs, timeout, security))
        except Exception as exc:  # noqa: BLE001 - describe_failure re-raises what it does not know
            message, status = describe_failure(exc, service_method, timeout)
            raise CommandError(_hint(message, security), status) from None
        return EXIT_OK
    try:
        result = asyncio.run(_call(target, is_registry, service_method, args, kwargs, timeout, security))
    except Exception as exc:  # noqa: BLE001 - describe_failure re-raises what it does not know
        message, status = describe_failure(exc, service_method, timeout)
        raise CommandError(_hint(message, security), status) from None
    try:
        text = dumps(result)
    except RecursionError:  # msgpack nests deeper than Python's recursion limit allows here
        raise CommandError(_too_deep(service_method)) from None
    print(text, flush=True)
    return EXIT_OK


def describe_failure(exc: Exception, service_method: str, timeout: float) -> tuple[str, int]:
    """The one-line message and exit status for a call that failed with ``exc``.

    The method is named once; "raised" is said only when the method itself raised.
    Re-raises an exception that is no failure of the call (a bug, to be reported as such).
    """
    if isinstance(exc, RemoteError):
        if isinstance(exc, _OWN_REMOTE_ERRORS) or exc.type == _UNSENDABLE:
            # geerpc's own errors: the method did not raise (or returned what cannot be sent).
            # The server's advice is for the Python API; the command line's is an option.
            text = str(exc).replace("dial(..., token=...) sends one", "--token (or GEERPC_TOKEN) sends one")
            return (text if service_method in text else f"{service_method}: {text}"), EXIT_ERROR
        return f"{service_method} raised {exc.type}: {exc}", EXIT_ERROR
    if isinstance(exc, ConnectTimeout):
        return str(exc), EXIT_TIMEOUT
    if isinstance(exc, TimeoutError):  # CallTimeout, or our own deadline passing while looking up servers
        return f"{service_method} timed out after {timeout:g} s", EXIT_TIMEOUT
    if isinstance(exc, GeeRPCError):  # cannot connect, no server available, a closed connection
        return str(exc), EXIT_ERROR
    if isinstance(exc, TypeError | ValueError):  # arguments msgpack cannot carry, a request over the frame limit
        return str(exc), EXIT_ERROR
    raise exc


def _hint(message: str, security: ClientSecurity) -> str:
    """``message``, with the option that fixes it when it is one of ours."""
    if "certificate verify failed" in message and security.ssl is None:
        return message + " (--tls-ca FILE trusts the CA that signed it)"
    if "client certificate" in message:  # the Python API's advice, in options
        return (message.replace(": give ssl= a context with load_cert_chain()", ": give --tls-cert FILE and --tls-key FILE")
                .replace("(load one with load_cert_chain())", "(give --tls-cert FILE and --tls-key FILE)"))
    if "CERTIFICATE_REQUIRED" in message:  # the peer's TLS alert, as the ssl module words it
        return message + " (it wants a client certificate: --tls-cert FILE --tls-key FILE)"
    if message.startswith("registry ") and message.endswith(("Connection reset by peer", "Server disconnected")):
        # Closed after connecting: the same hints as geerpc list gives.
        if message.startswith("registry http://"):
            return message + " (an https:// registry?)"
        return message + " (does it want a client certificate? --tls-cert FILE --tls-key FILE)"
    if "wants a read token and we sent none" in message:
        return message + " (--registry-token, or GEERPC_REGISTRY_READ_TOKEN)"
    if message.startswith("refusing to send a token in clear"):
        where = message.partition(": ")[0].removeprefix("refusing to send a token in clear to ")
        return (f"refusing to send --token in clear to {where}: anyone on the path could read and replay "
                f"it; serve TLS (tls@) or call from the server's own host")
    return message


def _too_deep(service_method: str) -> str:
    return f"{service_method} returned a value nested too deeply to print as JSON"


async def _call(target: str, is_registry: bool, service_method: str, args: list[Any], kwargs: dict[str, Any],
                timeout: float, security: ClientSecurity) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with asyncio.timeout_at(deadline):
        if not is_registry:
            return await _call_address(target, service_method, args, kwargs, deadline, security)
        servers = _discovery(target, timeout, security)
        xclient = XClient(servers, connect_timeout=timeout, ssl=security.ssl, token=security.token)
        try:
            # Read the list once up front: an unreachable registry is then reported
            # as such, rather than as "no server available".
            await servers.refresh()
            return await xclient.call(service_method, *args, timeout=_left(deadline), **kwargs)
        finally:
            await xclient.close()


async def _call_address(address: str, service_method: str, args: list[Any], kwargs: dict[str, Any],
                        deadline: float, security: ClientSecurity) -> Any:
    """One call on its own connection to ``address``, all of it before ``deadline`` (loop time)."""
    client = await dial(address, connect_timeout=_left(deadline), token=security.token,
                        ssl=security.ssl if address.startswith("tls@") else None)
    try:
        return await client.call(service_method, *args, timeout=_left(deadline), **kwargs)
    finally:
        await client.close()


async def _stream(target: str, is_registry: bool, service_method: str, args: list[Any], kwargs: dict[str, Any],
                  timeout: float, security: ClientSecurity) -> None:
    """Print each item of the stream as a JSON line as it arrives, all of it within ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with asyncio.timeout_at(deadline):
        if not is_registry:
            client = await dial(target, connect_timeout=_left(deadline), token=security.token,
                                ssl=security.ssl if target.startswith("tls@") else None)
            try:
                async with client.stream(service_method, *args, timeout=_left(deadline), **kwargs) as stream:
                    async for item in stream:
                        _print_item(item, service_method)
            finally:
                await client.close()
            return
        servers = _discovery(target, timeout, security)
        xclient = XClient(servers, connect_timeout=timeout, ssl=security.ssl, token=security.token)
        try:
            await servers.refresh()  # an unreachable registry is reported as such
            items = xclient.stream(service_method, *args, timeout=_left(deadline), **kwargs)
            try:
                async for item in items:
                    _print_item(item, service_method)
            finally:
                await items.aclose()
        finally:
            await xclient.close()


def _print_item(item: Any, service_method: str) -> None:
    try:
        text = dumps(item)
    except RecursionError:
        raise CommandError(_too_deep(service_method).replace("returned a value", "streamed an item")) from None
    print(text, flush=True)


def _left(deadline: float) -> float:
    remaining = deadline - asyncio.get_running_loop().time()
    if remaining <= 0:
        raise TimeoutError
    return remaining


# --------------------------------------------------------------------------- broadcast


def _run_broadcast(target: str, is_registry: bool, service_method: str, args: list[Any],
                   kwargs: dict[str, Any], timeout: float, security: ClientSecurity) -> int:
    """Print one line per server and the count; exit 0 when every server returned a result.

    Otherwise 3 when every failure was a timeout, else 1.
    """
    try:
        outcomes = asyncio.run(_broadcast(target, is_registry, service_method, args, kwargs, timeout, security))
    except Exception as exc:  # noqa: BLE001 - finding the servers failed: one message, as for a call
        message, status = describe_failure(exc, service_method, timeout)
        raise CommandError(message, status) from None
    statuses = []
    for address, outcome in outcomes:
        line, status = broadcast_line(address, outcome, service_method, timeout)
        print(line, flush=True)
        statuses.append(status)
    failed = [status for status in statuses if status != EXIT_OK]
    servers = "server" if len(statuses) == 1 else "servers"
    print(f"geerpc: {len(statuses) - len(failed)} of {len(statuses)} {servers} returned a result",
          file=sys.stderr, flush=True)
    if not failed:
        return EXIT_OK
    return EXIT_TIMEOUT if all(status == EXIT_TIMEOUT for status in failed) else EXIT_ERROR


def broadcast_line(address: str, outcome: Any, service_method: str, timeout: float) -> tuple[str, int]:
    """The JSON line for one server's ``outcome`` (its result, or the exception its call
    failed with), and the exit status it stands for.

    ``{"server": ADDRESS, "result": VALUE}``, or ``{"server": ADDRESS, "error": MESSAGE,
    "type": TYPE}``: MESSAGE is what ``geerpc call`` says of that server alone, TYPE the
    remote exception's type (``ZeroDivisionError``, ``MethodNotFound``...) or geerpc's
    own error class (``ConnectError``, ``CallTimeout``...).
    """
    if not isinstance(outcome, Exception):
        try:
            return json.dumps({"server": address, "result": to_json(outcome)},
                              ensure_ascii=False, allow_nan=False), EXIT_OK
        except RecursionError:
            return _error_line(address, _too_deep(service_method), "RecursionError"), EXIT_ERROR
    message, status = describe_failure(outcome, service_method, timeout)
    if isinstance(outcome, RemoteError):
        kind = outcome.type
    elif isinstance(outcome, TimeoutError) and not isinstance(outcome, GeeRPCError):
        kind = "CallTimeout"  # the command's own deadline
    else:
        kind = type(outcome).__name__
    return _error_line(address, message, kind), status


def _error_line(address: str, message: str, kind: str) -> str:
    return json.dumps({"server": address, "error": message, "type": kind}, ensure_ascii=False)


async def _broadcast(target: str, is_registry: bool, service_method: str, args: list[Any],
                     kwargs: dict[str, Any], timeout: float, security: ClientSecurity) -> list[tuple[str, Any]]:
    """Each server's result or exception, in address order. Raises when the servers
    cannot be found (an unreachable registry, none offering the service)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    if is_registry:
        found = _discovery(target, timeout, security)
        try:
            async with asyncio.timeout_at(deadline):
                await found.refresh()
                servers = await found.get_all(service_method.rpartition(".")[0])
        finally:
            await found.close()
        if not servers:
            service = service_method.rpartition(".")[0]
            raise NoServerAvailable(f"no server offering {service!r} to broadcast {service_method} to")
    else:
        servers = [target]  # --broadcast to one address: that one server

    async def one(address: str) -> Any:
        # Every call ends by the deadline, so every server gets a line.
        try:
            async with asyncio.timeout_at(deadline):
                return await _call_address(address, service_method, args, kwargs, deadline, security)
        except Exception as exc:  # noqa: BLE001 - each failure is that server's line
            return exc

    results = await asyncio.gather(*(one(address) for address in servers))
    return list(zip(servers, results, strict=True))


def _discovery(url: str, timeout: float, security: ClientSecurity) -> Discovery:
    # One call, then exit: no watch, and no wait past the command's timeout.
    try:
        return discovery(url, timeout, security)
    except ImportError as exc:
        raise CommandError(f"{url.split(':', 1)[0]}:// needs an extra that is not installed: {exc}") from None
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
