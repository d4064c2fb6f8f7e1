"""``python -m geerpc.registry``: run a registry in the foreground until SIGTERM or SIGINT.

Prints the registry's URL on stdout once it is listening, so scripts and tests can
read the port it got; exits 0 after a clean stop, 1 when it cannot run (a port in
use), 2 for a bad option (argparse's status) or a certificate file that cannot be
used, never with a traceback.

``--tls-cert``/``--tls-key`` serve HTTPS, ``--tls-ca`` asks every client for a
certificate from that CA (mutual TLS), ``--registry-token`` (or
``GEERPC_REGISTRY_TOKEN``) guards changes and ``--read-token`` (or
``GEERPC_REGISTRY_READ_TOKEN``) reads. The loaders (``load_server_context``,
``load_chain``, ``load_ca``) and ``token_option`` are shared with ``geerpc serve``,
``call`` and ``list``, so all say the same of the same mistakes.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import math
import os
import signal
import ssl
import sys

from .auth import check_token
from .contract import DEFAULT_PATH, DEFAULT_TIMEOUT, MIN_PERIOD, RELIST_PERIOD
from .server import Registry
from .table import MAX_SERVERS

PROG = "python -m geerpc.registry"
_DESCRIPTION = (
    "Run a geerpc registry in the foreground until SIGTERM or SIGINT. "
    "Prints its URL on stdout once it is listening."
)
_EPILOG = """\
Without a token the registry is open, as GeeRPC's is: GeeRPC's Go servers cannot send
a token, so they can use only an open registry. Tokens from the environment stay out
of ps; a flag beats the environment. See docs/registry.md.

example:
  GEERPC_REGISTRY_TOKEN=s3cret geerpc registry --port 9999 \\
      --tls-cert registry.pem --tls-key registry.key
"""
TOKEN_ENV = "GEERPC_REGISTRY_TOKEN"
READ_TOKEN_ENV = "GEERPC_REGISTRY_READ_TOKEN"


class OptionError(Exception):
    """A file or token given on the command line that cannot be used: one line, status 2.

    The message names the option and the file, never a token."""


def _readable(option: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise OptionError(f"cannot read {option} {path}: {exc.strerror or exc}") from None


def load_server_context(cert: str, key: str, client_ca: str | None = None, *,
                        ca_option: str = "--tls-ca") -> ssl.SSLContext:
    """A server context with the certificate ``cert`` and its ``key`` (PEM files); with
    ``client_ca`` (a PEM file of CA certificates), clients must present a certificate
    from it (mutual TLS). Raises OptionError saying which file is wrong and why."""
    if client_ca is not None:
        _readable(ca_option, client_ca)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    load_chain(context, cert, key)
    if client_ca is not None:
        load_ca(context, ca_option, client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def load_chain(context: ssl.SSLContext, cert: str, key: str) -> None:
    """Load the certificate ``cert`` and its ``key`` (PEM files) into ``context``."""
    _readable("--tls-cert", cert)
    _readable("--tls-key", key)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, ValueError) as exc:
        raise OptionError(f"--tls-cert {cert} with --tls-key {key}: not a PEM certificate and its "
                          f"private key{_why(exc)}") from None


def load_ca(context: ssl.SSLContext, option: str, path: str) -> None:
    """Trust the CA certificates in the PEM file ``path`` (given as ``option``)."""
    _readable(option, path)
    try:
        context.load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError) as exc:
        raise OptionError(f"{option} {path}: no PEM CA certificate in it{_why(exc)}") from None


def _why(exc: Exception) -> str:
    # OpenSSL's reason when it says something ("KEY_VALUES_MISMATCH"); "PEM lib" does not.
    reason = getattr(exc, "reason", None)
    return f" ({reason})" if isinstance(reason, str) and reason != "PEM lib" else ""


def token_option(value: str | None, option: str, env: str | None) -> str | None:
    """The token ``option`` gave, else the environment variable ``env`` (empty counts as
    unset), else None. Raises OptionError, naming where it came from, for a token that
    cannot travel in an HTTP header; the message never holds the token."""
    source = option
    if value is None and env is not None and os.environ.get(env):
        value, source = os.environ[env], env
    try:
        return check_token(source, value)
    except ValueError as exc:
        raise OptionError(str(exc)) from None


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address to listen on) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
    parser = argparse.ArgumentParser(prog=prog, description=_DESCRIPTION, epilog=_EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    tls = parser.add_argument_group("TLS and tokens")
    tls.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this PEM certificate (needs --tls-key)")
    tls.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    tls.add_argument("--tls-ca", "--tls-client-ca", metavar="FILE", dest="tls_ca",
                     help="mutual TLS: require client certificates from this PEM CA (needs --tls-cert)")
    tls.add_argument("--registry-token", metavar="TOKEN",
                     help=f"the token POST and DELETE need (default: ${TOKEN_ENV}; none: open)")
    tls.add_argument("--read-token", metavar="TOKEN",
                     help=f"the token every GET needs, the write token reads too (default: ${READ_TOKEN_ENV})")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together: give both, or neither")
    if args.tls_ca is not None and args.tls_cert is None:
        parser.error("--tls-ca asks clients for certificates over HTTPS: it needs --tls-cert and --tls-key")
    if args.read_token is not None and args.registry_token is None and not os.environ.get(TOKEN_ENV):
        parser.error(f"--read-token needs a write token too (--registry-token or ${TOKEN_ENV}): "
                     f"without one, anyone could change the list")
    return args


def _security(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, str | None, str | None]:
    """The TLS context and the two tokens the options (and environment) ask for."""
    context = None if args.tls_cert is None else load_server_context(args.tls_cert, args.tls_key, args.tls_ca)
    token = token_option(args.registry_token, "--registry-token", TOKEN_ENV)
    read_token = token_option(args.read_token, "--read-token", READ_TOKEN_ENV)
    if read_token is not None and token is None:
        raise OptionError(f"${READ_TOKEN_ENV} needs a write token too (--registry-token or ${TOKEN_ENV})")
    return context, token, read_token


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


async def _serve(args: argparse.Namespace, context: ssl.SSLContext | None, token: str | None,
                 read_token: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    _raise_file_limit()
    registry = Registry(args.timeout, path=args.path, max_servers=args.max_servers,
                        heartbeat_period=args.heartbeat_period, token=token, read_token=read_token)
    url = await registry.start(args.host, args.port, ssl=context)
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
    not resolve) prints one line, starting with ``prefix`` (default ``prog``), and returns 1;
    a certificate file that cannot be used, or a bad token, such a line and 2.
    """
    args = _parse_args(argv, prog)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        context, token, read_token = _security(args)
    except OptionError as exc:
        print(f"{prefix or prog}: {exc}", file=sys.stderr)
        return 2
    if token is not None and context is None and not is_loopback(args.host):
        print(f"{prefix or prog}: warning: the registry's tokens cross the network in clear over http://, "
              f"where anyone on the path can read them; serve HTTPS with --tls-cert and --tls-key",
              file=sys.stderr)
    try:
        asyncio.run(_serve(args, context, token, read_token))
    except (OSError, OverflowError, ValueError) as exc:  # e.g. the port is taken
        print(f"{prefix or prog}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before our handler was installed: a stop like any other
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
