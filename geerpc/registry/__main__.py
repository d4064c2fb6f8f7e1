"""``python -m geerpc.registry``: run a registry in the foreground until SIGTERM or SIGINT.

Prints the registry's URL on stdout once it is listening, so scripts and tests can
read the port it got; exits 0 after a clean stop, 1 when it cannot run (a port in
use), 2 for a bad option (argparse's status), never with a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys

from .contract import DEFAULT_PATH, DEFAULT_TIMEOUT, MIN_PERIOD, RELIST_PERIOD
from .server import Registry
from .table import MAX_SERVERS

PROG = "python -m geerpc.registry"
_DESCRIPTION = (
    "Run a geerpc registry in the foreground until SIGTERM or SIGINT. "
    "Prints its URL on stdout once it is listening."
)


# Option types: a bad value ends in argparse's usage error (status 2) naming the option,
# instead of a ValueError from deep inside the registry or the socket layer.


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"want a port from 0 to 65535, not {text!r}")
    return int(text)


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"want a finite number of seconds >= 0 (0: for ever), not {text!r}")
    return value


def _heartbeat_period(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= MIN_PERIOD):
        raise argparse.ArgumentTypeError(f"want a finite number of seconds >= {MIN_PERIOD}, not {text!r}")
    return value


def _max_servers(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"want a whole number >= 1, not {text!r}")
    return int(text)


def _path(text: str) -> str:
    if not text.startswith("/"):
        raise argparse.ArgumentTypeError(f"want a URL path starting with '/', not {text!r}")
    return text


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in logging.getLevelNamesMapping():
        raise argparse.ArgumentTypeError(f"want DEBUG, INFO, WARNING, ERROR or CRITICAL, not {text!r}")
    return level


def _parse_args(argv: list[str] | None, prog: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=_port, default=9999, help="port to listen on, 0 for any (default 9999)")
    parser.add_argument("--timeout", type=_timeout, default=DEFAULT_TIMEOUT,
                        help="seconds a server stays listed without a heartbeat, 0 for ever (default 300)")
    parser.add_argument("--heartbeat-period", type=_heartbeat_period, default=RELIST_PERIOD,
                        help="seconds between heartbeats asked of servers: how soon they are listed again "
                             f"after a restart (default {RELIST_PERIOD:g}; at most what the timeout allows)")
    parser.add_argument("--path", type=_path, default=DEFAULT_PATH, help=f"URL path (default {DEFAULT_PATH})")
    parser.add_argument("--max-servers", type=_max_servers, default=MAX_SERVERS,
                        help=f"most servers listed at once (default {MAX_SERVERS})")
    parser.add_argument("--log-level", type=_log_level, default="WARNING", help="logging level (default WARNING)")
    return parser.parse_args(argv)


def _raise_file_limit() -> None:
    # Servers beating every few seconds keep their connections open (keep-alive), so a
    # registry of N servers holds about N sockets: lift the soft limit on open files
    # (often 1,024) to the hard one, as Go programs do at start.
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):  # e.g. macOS refuses RLIM_INFINITY: keep the soft limit
            pass


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _raise_file_limit()
    registry = Registry(args.timeout, path=args.path, max_servers=args.max_servers,
                        heartbeat_period=args.heartbeat_period)
    url = await registry.start(args.host, args.port)
    try:
        print(url, flush=True)
        await stop.wait()
    finally:
        await registry.stop()


def main(argv: list[str] | None = None, *, prog: str = PROG, prefix: str | None = None) -> int:
    """Run the registry with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    ``prog`` names the program in usage and error messages (``geerpc registry`` when
    run from the ``geerpc`` command). A bad option exits with status 2 (argparse's
    ``SystemExit``); a registry that cannot run (the port is taken, the host does
    not resolve) prints one line, starting with ``prefix`` (default ``prog``), and returns 1.
    """
    args = _parse_args(argv, prog)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except (OSError, OverflowError, ValueError) as exc:  # e.g. the port is taken
        print(f"{prefix or prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before our handler was installed: a stop like any other
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
