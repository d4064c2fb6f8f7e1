"""``python -m geerpc.registry``: run a registry in the foreground until SIGTERM or SIGINT.

Prints the registry's URL on stdout once it is listening, so scripts and tests can
read the port it got; exits 0 after a clean stop.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from .server import DEFAULT_PATH, DEFAULT_TIMEOUT, Registry
from .table import MAX_SERVERS


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m geerpc.registry", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=9999, help="port to listen on, 0 for any (default 9999)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds a server stays listed without a heartbeat, 0 for ever (default 300)")
    parser.add_argument("--path", default=DEFAULT_PATH, help=f"URL path (default {DEFAULT_PATH})")
    parser.add_argument("--max-servers", type=int, default=MAX_SERVERS,
                        help=f"most servers listed at once (default {MAX_SERVERS})")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    registry = Registry(args.timeout, path=args.path, max_servers=args.max_servers)
    url = await registry.start(args.host, args.port)
    try:
        print(url, flush=True)
        await stop.wait()
    finally:
        await registry.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the registry; return the process exit status."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(_serve(args))
    except OSError as exc:  # e.g. the port is taken
        print(f"geerpc.registry: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
