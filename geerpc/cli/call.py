"""``geerpc call``: one call from the shell, through a Client or an XClient.

The command layer over the public client API. ``--timeout`` bounds the whole command
(registry lookup, dial and call) with one deadline; the call carries what is left of
it to the server, so the server stops work nobody waits for.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..address import parse_address
from ..client import dial
from ..errors import (
    ConnectError,
    ConnectTimeout,
    GeeRPCError,
    InvalidArguments,
    MethodNotFound,
    RemoteError,
    ServiceNotFound,
    Unavailable,
)
from ..xclient import Discovery, XClient
from . import EXIT_OK, EXIT_TIMEOUT, EXIT_USAGE, CommandError
from .values import dumps

__all__ = ["run"]

_REGISTRY_SCHEMES = ("http://", "https://", "etcd://")
# Errors geerpc itself reports for a call it did not run: their messages stand alone.
_OWN_REMOTE_ERRORS = (ServiceNotFound, MethodNotFound, InvalidArguments, Unavailable)


def run(target: str, service_method: str, args: list[Any], kwargs: dict[str, Any], *,
        timeout: float, broadcast: bool) -> int:
    """Call ``service_method`` on ``target``, print the result as JSON; return the exit status.

    Raises CommandError carrying the message and status for any failure.
    """
    # ERROR: discovery's warnings about an unreachable registry would repeat our message.
    logging.basicConfig(level=logging.ERROR, format="geerpc: %(message)s")
    is_registry = target.startswith(_REGISTRY_SCHEMES)
    if not is_registry:
        try:
            parse_address(target)
        except ValueError as exc:
            raise CommandError(f"bad TARGET: {exc}; or give a registry URL (http://... or etcd://...)",
                               EXIT_USAGE) from None
    try:
        result = asyncio.run(_call(target, is_registry, service_method, args, kwargs, timeout, broadcast))
    except RemoteError as exc:
        if isinstance(exc, _OWN_REMOTE_ERRORS) or exc.type == "SerializationError":
            # geerpc's own errors: the method did not raise. Name the method once.
            text = str(exc)
            raise CommandError(text if service_method in text else f"{service_method}: {text}") from None
        raise CommandError(f"{service_method} raised {exc.type}: {exc}") from None
    except ConnectError as exc:
        raise CommandError(str(exc)) from None
    except ConnectTimeout as exc:
        raise CommandError(str(exc), EXIT_TIMEOUT) from None
    except TimeoutError:  # CallTimeout, or our own deadline passing while looking up servers
        raise CommandError(f"{service_method} timed out after {timeout:g} s", EXIT_TIMEOUT) from None
    except GeeRPCError as exc:
        raise CommandError(str(exc)) from None
    except (TypeError, ValueError) as exc:  # arguments msgpack cannot carry, a request over the frame limit
        raise CommandError(str(exc)) from None
    try:
        text = dumps(result)
    except RecursionError:  # msgpack nests deeper than Python's recursion limit allows here
        raise CommandError(f"{service_method} returned a value nested too deeply to print as JSON") from None
    print(text, flush=True)
    return EXIT_OK


async def _call(target: str, is_registry: bool, service_method: str, args: list[Any], kwargs: dict[str, Any],
                timeout: float, broadcast: bool) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout

    def left() -> float:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError
        return remaining

    async with asyncio.timeout_at(deadline):
        if not is_registry:
            # --broadcast to a single address is that one call.
            client = await dial(target, connect_timeout=timeout)
            try:
                return await client.call(service_method, *args, timeout=left(), **kwargs)
            finally:
                await client.close()
        discovery = _discovery(target, timeout)
        xclient = XClient(discovery, connect_timeout=timeout)
        try:
            # Read the list once up front: an unreachable registry is then reported
            # as such, rather than as "no server available".
            await discovery.refresh()
            method = xclient.broadcast if broadcast else xclient.call
            return await method(service_method, *args, timeout=left(), **kwargs)
        finally:
            await xclient.close()


def _discovery(url: str, timeout: float) -> Discovery:
    if url.startswith("etcd://"):
        try:
            from ..xclient.etcd_discovery import EtcdDiscovery

            return EtcdDiscovery(url, first_list_timeout=timeout)
        except ImportError:
            raise CommandError("etcd:// needs the etcd extra: pip install 'geerpc[etcd]'") from None
        except ValueError as exc:
            raise CommandError(str(exc), EXIT_USAGE) from None
    from ..xclient.registry_discovery import RegistryDiscovery

    # One call, then exit: no watch, and a request timeout within the command's.
    return RegistryDiscovery(url, watch=False, timeout=min(timeout, 5.0))
