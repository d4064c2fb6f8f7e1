"""The ``geerpc`` command line: argument parsing, dispatch, error reporting, exit codes.

The top layer of geerpc: it uses the public client, server, XClient and registry APIs
and nothing uses it. Each command lives in its own module, imported only when run so
that ``geerpc --help`` stays quick. Results go to stdout, messages to stderr as one
``geerpc: ...`` line, never a traceback. Exit codes: 0 success, 1 error, 2 usage,
3 timeout (130 after Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Final

from ..xclient.urls import WANT, is_registry_url

if TYPE_CHECKING:
    from .security import ClientSecurity

__all__ = ["EXIT_ERROR", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_USAGE", "CommandError", "main"]

EXIT_OK: Final = 0
EXIT_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_TIMEOUT: Final = 3
EXIT_INTERRUPTED: Final = 130  # the shell's convention for SIGINT
DEFAULT_TIMEOUT: Final = 10.0


class CommandError(Exception):
    """A failure to report as ``geerpc: <message>`` and exit with ``status``."""

    def __init__(self, message: str, status: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> int:
    """Run the ``geerpc`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    # Everything, parsing included, runs inside the handlers below: whatever goes wrong
    # becomes one "geerpc: ..." line. argparse's own usage errors are SystemExit(2),
    # which passes through untouched.
    try:
        return _dispatch(argv)
    except CommandError as exc:
        _report(str(exc))
        return exc.status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `geerpc list ... | head -1`: the reader left, nothing to say
        return EXIT_ERROR
    except Exception as exc:  # noqa: BLE001 - promised: a message, never a traceback
        _report(f"unexpected {type(exc).__name__}: {exc}")
        return EXIT_ERROR


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["registry"]:
        # The registry's own entry point already parses these options and runs it;
        # hand the rest of the command line over rather than define them twice.
        # Usage errors name "geerpc registry" (as argparse names every command);
        # failures start with "geerpc:", as every command's do.
        from ..registry.__main__ import main as registry_main

        return registry_main(argv[1:], prog="geerpc registry", prefix="geerpc")
    parser = _build_parser()
    args, extras = parser.parse_known_args(argv)
    _check_security(args.parser, args)
    if args.command == "call":
        _check_call_args(args.parser, args, extras)
    elif extras:
        args.parser.error(f"unrecognized arguments: {' '.join(extras)}")
    status: int = args.run(args)
    return status


def _report(message: str) -> None:
    print(f"geerpc: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- commands


def _run_call(args: argparse.Namespace) -> int:
    from .call import run

    return run(args.target, args.service_method, args.values, args.kwargs,
               timeout=args.timeout, broadcast=args.broadcast, security=_client_security(args, args.target),
               stream=args.stream)


def _run_serve(args: argparse.Namespace) -> int:
    from . import security
    from .serve import Security, run

    tls = None if args.tls_cert is None else security.server_context(args.tls_cert, args.tls_key,
                                                                     args.tls_client_ca)
    registry_tls = registry_token = None
    if args.registry is not None:
        if security.registry_is_tls(args.registry):
            registry_tls = security.client_context(args.tls_ca, args.tls_cert, args.tls_key)
        if args.registry.startswith(("http://", "https://")):
            registry_token = security.token(args.registry_token, "--registry-token", security.REGISTRY_TOKEN_ENV)
    tokens = None if args.tokens is None else security.read_tokens(args.tokens)
    return run(args.object, host=args.host, port=args.port, registry=args.registry,
               name=args.name, log_level=args.log_level,
               security=Security(tls, registry_tls, registry_token, tokens))


def _run_list(args: argparse.Namespace) -> int:
    from .listing import run

    return run(args.registry, timeout=args.timeout, security=_client_security(args, args.registry))


def _client_security(args: argparse.Namespace, target: str) -> ClientSecurity:
    """What ``call`` or ``list`` connects with; the tokens from the flags, else the environment."""
    from . import security

    context = security.client_context(args.tls_ca, args.tls_cert, args.tls_key)
    token = security.call_token(args.token) if args.command == "call" else None
    registry_token = None
    if target.startswith(("http://", "https://")):  # etcd takes user:password@ in its URL
        registry_token = security.token(args.registry_token, "--registry-token",
                                        security.REGISTRY_READ_TOKEN_ENV, security.REGISTRY_TOKEN_ENV)
    return security.ClientSecurity(context, token, registry_token)


# --------------------------------------------------------------------------- parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def _registry_url(text: str) -> str:
    if not is_registry_url(text):
        raise argparse.ArgumentTypeError(f"not a registry URL: {text!r} (want {WANT})")
    return text


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    return int(text)


_MAIN_EPILOG = """\
examples:
  geerpc registry --port 9999
  geerpc serve myapp:Arith --port 9000 --registry http://127.0.0.1:9999/_geerpc_/registry
  geerpc call tcp@127.0.0.1:9000 Arith.add 1 2
  geerpc list http://127.0.0.1:9999/_geerpc_/registry

exit status: 0 success, 1 error, 2 usage, 3 timeout.
Run "geerpc COMMAND --help" for each command's options.
"""

_REGISTRY_HELP = "run the built-in registry in the foreground (same options as python -m geerpc.registry)"

_SERVE_DESCRIPTION = """\
Serve the public methods of an object, without writing a server script.

OBJECT is module:attr, imported with the current directory on the import path. A class
is instantiated with no arguments; any other object (an instance) is served as it is.
Its methods are called as "Name.method", Name being the class name unless --name says
otherwise. The address is printed on stdout once the server is listening. SIGTERM or
Ctrl-C stop it gracefully (calls in flight get up to 5 s) and it exits with status 0.
"""

_SERVE_EPILOG = """\
examples:
  geerpc serve myapp:Arith
  geerpc serve myapp:Arith --port 9000 --registry http://127.0.0.1:9999/_geerpc_/registry
  geerpc serve myapp.services:calculator --name Calc --host unix@/tmp/calc.sock
  GEERPC_REGISTRY_TOKEN=... geerpc serve myapp:Arith --tls-cert srv.pem --tls-key srv.key \\
      --tls-ca ca.pem --registry https://127.0.0.1:9999/_geerpc_/registry --tokens tokens.txt

A flag beats the environment; tokens from the environment stay out of ps.
"""

_CALL_DESCRIPTION = """\
Make one call and print its result as one line of JSON on stdout.

TARGET is a server address (tcp@host:port, unix@/path) or a registry URL (http://...
or etcd://...), in which case one server offering the service is picked, or every one
is called with --broadcast: then each server gets a line on stdout, in address order,
{"server": ADDRESS, "result": VALUE} or {"server": ADDRESS, "error": MESSAGE,
"type": TYPE}, and stderr the count ("geerpc: 2 of 3 servers returned a result").

Each ARG is parsed as JSON when it parses, else taken as a string: 1 is a number,
abc is the string "abc", '"1"' the string "1", '{"a": 1}' a map, null is None.
Keyword arguments are given as --kw name=value, the value parsed the same way.
Options may come before or after the ARGs; put -- before an ARG that starts with a
dash (negative numbers need none).

Values JSON cannot tell apart are printed, and accepted, as one-key objects:
bytes as {"$bytes": "<base64>"}, a map with non-string keys as
{"$map": [[key, value], ...]}, NaN and infinities as {"$float": "NaN"}.
"""

_CALL_EPILOG = """\
examples:
  geerpc call tcp@127.0.0.1:9000 Arith.add 1 2                       # 3
  geerpc call tcp@127.0.0.1:9000 Greeter.hello world                 # "hello, world"
  geerpc call tcp@127.0.0.1:9000 Store.put key '{"a": [1, 2]}' --kw ttl=60
  geerpc call http://127.0.0.1:9999/_geerpc_/registry Arith.add 1 2
  geerpc call http://127.0.0.1:9999/_geerpc_/registry Cache.clear --broadcast
  GEERPC_TOKEN=... geerpc call tls@127.0.0.1:9000 Arith.add 1 2 --tls-ca ca.pem

A flag beats the environment; tokens from the environment stay out of ps.

exit status: 0 success, 1 error (unreachable, unknown method, the method raised),
2 usage, 3 timeout. With --broadcast: 0 when every server returned a result, 3 when
every failure was a timeout, else 1.
"""

_LIST_DESCRIPTION = """\
List the live servers a registry knows: address, services and seconds since the last
heartbeat, as an aligned table. Services read (any) for a server that declared none
(it is sent every call), (unknown) for a registry that only reports addresses.
"""

_LIST_EPILOG = """\
examples:
  geerpc list http://127.0.0.1:9999/_geerpc_/registry
  geerpc list etcd://127.0.0.1:2379/geerpc
  GEERPC_REGISTRY_READ_TOKEN=... geerpc list https://127.0.0.1:9999/_geerpc_/registry --tls-ca ca.pem
"""


def _build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="geerpc", formatter_class=formatter, epilog=_MAIN_EPILOG,
        description="geerpc from the shell: run a registry or a server, make a call, list servers.")
    parser.add_argument("--version", action="version", version=f"geerpc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Listed for --help only: main() hands "registry" to geerpc.registry before parsing.
    commands.add_parser("registry", help=_REGISTRY_HELP, add_help=False)

    serve = commands.add_parser("serve", help="serve an object's methods", description=_SERVE_DESCRIPTION,
                                epilog=_SERVE_EPILOG, formatter_class=formatter)
    serve.add_argument("object", metavar="OBJECT", help="module:attr, a class or an instance")
    serve.add_argument("--host", default="127.0.0.1",
                       help="host to listen on, or unix@PATH (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=0, help="port to listen on (default 0: any free port)")
    serve.add_argument("--registry", metavar="URL", type=_registry_url,
                       help="announce the server to this registry (http://... or etcd://...) until it stops")
    serve.add_argument("--name", help="service name (default: the class name)")
    serve.add_argument("--log-level", default="WARNING", help="logging level on stderr (default WARNING)")
    tls = serve.add_argument_group("TLS and tokens")
    tls.add_argument("--tls-cert", metavar="FILE",
                     help="serve TLS (address tls@host:port) with this PEM certificate (needs --tls-key); "
                          "also presented to an https:// registry that asks for one")
    tls.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    tls.add_argument("--tls-client-ca", metavar="FILE",
                     help="mutual TLS: every client must present a certificate from this PEM CA")
    tls.add_argument("--tls-ca", metavar="FILE",
                     help="verify an https:// (or etcds://) registry with this PEM CA (default: the system's CAs)")
    tls.add_argument("--registry-token", metavar="TOKEN",
                     help="the registry's write token, sent with every heartbeat (default: $GEERPC_REGISTRY_TOKEN)")
    tls.add_argument("--tokens", metavar="FILE",
                     help="every call needs a bearer token: FILE has lines of TOKEN IDENTITY")
    serve.set_defaults(run=_run_serve, parser=serve)

    call = commands.add_parser("call", help="make one call and print the result as JSON",
                               description=_CALL_DESCRIPTION, epilog=_CALL_EPILOG, formatter_class=formatter)
    call.add_argument("target", metavar="TARGET", help="server address or registry URL")
    call.add_argument("service_method", metavar="Service.method", help="what to call")
    call.add_argument("values", metavar="ARG", nargs="*", help="positional arguments (JSON, else string)")
    call.add_argument("--kw", "-k", metavar="NAME=VALUE", action="append", default=[], dest="kw",
                      help="a keyword argument (JSON, else string); repeat for more")
    call.add_argument("--broadcast", action="store_true",
                      help="with a registry URL: call every server offering the service, "
                           "print one JSON line per server")
    call.add_argument("--stream", action="store_true",
                      help="the method is a generator: print one JSON line per item as it arrives "
                           "(--timeout bounds the whole stream)")
    call.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="S",
                      help=f"seconds for the whole command, connecting included (default {DEFAULT_TIMEOUT:g})")
    _add_client_security(call)
    call.add_argument_group("TLS and tokens").add_argument(
        "--token", metavar="TOKEN", help="the bearer token sent to the server(s) with the call (default: $GEERPC_TOKEN)")
    call.set_defaults(run=_run_call, parser=call)

    listing = commands.add_parser("list", help="list a registry's live servers", description=_LIST_DESCRIPTION,
                                  epilog=_LIST_EPILOG, formatter_class=formatter)
    listing.add_argument("registry", metavar="REGISTRY_URL", type=_registry_url, help="http://... or etcd://...")
    listing.add_argument("--timeout", type=_seconds, default=DEFAULT_TIMEOUT, metavar="S",
                         help=f"seconds to wait for the registry (default {DEFAULT_TIMEOUT:g})")
    _add_client_security(listing)
    listing.set_defaults(run=_run_list, parser=listing)
    return parser


def _add_client_security(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("TLS and tokens")
    tls.add_argument("--tls-ca", metavar="FILE",
                     help="verify tls@ servers and an https:// (or etcds://) registry with this PEM CA "
                          "(default: the system's CAs)")
    tls.add_argument("--tls-cert", metavar="FILE",
                     help="present this PEM client certificate when asked (mutual TLS; needs --tls-key)")
    tls.add_argument("--tls-key", metavar="FILE", help="the PEM private key of --tls-cert")
    tls.add_argument("--registry-token", metavar="TOKEN",
                     help="the token of a registry that guards reads (default: $GEERPC_REGISTRY_READ_TOKEN, "
                          "else $GEERPC_REGISTRY_TOKEN)")


def _check_security(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The TLS and token options that make no sense together: usage errors."""
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together: give both, or neither")
    if args.command == "serve":
        registry = args.registry
        if args.tls_client_ca is not None and args.tls_cert is None:
            parser.error("--tls-client-ca asks clients for certificates over TLS: it needs --tls-cert and --tls-key")
        if args.tls_cert is not None and args.host.startswith("unix@"):
            parser.error("--tls-cert serves TLS over TCP; a unix@ socket is local and takes none")
        if args.tls_ca is not None and registry is None:
            parser.error("--tls-ca verifies the registry's certificate: it needs --registry")
        if args.registry_token is not None and registry is None:
            parser.error("--registry-token is sent to the registry: it needs --registry")
        if registry is not None:
            from .security import registry_is_tls

            if args.tls_ca is not None and not registry_is_tls(registry):
                parser.error("--tls-ca verifies an https:// or etcds:// registry; --registry is not one")
            if args.registry_token is not None and not registry.startswith(("http://", "https://")):
                parser.error("--registry-token is for an http(s):// registry; etcd takes user:password@ in its URL")
        return
    target = args.target if args.command == "call" else args.registry
    if args.registry_token is not None and not target.startswith(("http://", "https://")):
        parser.error("--registry-token is for an http(s):// registry URL"
                     + ("; etcd takes user:password@ in its URL" if is_registry_url(target) else ""))
    if args.command == "call" and not is_registry_url(target) and not target.startswith("tls@"):
        for option in ("--tls-ca", "--tls-cert"):
            if getattr(args, option[2:].replace("-", "_")) is not None:
                parser.error(f"{option} is for tls@ servers and https:// registries, not {target[:80]}")


def _check_call_args(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> None:
    """Finish parsing ``call``: ARGs given after an option, JSON values, keyword arguments."""
    from .values import parse_arg

    # The server's own rule (rpartition at the last dot); a malformed name is a usage
    # error, found here rather than after a connection.
    service, dot, method = args.service_method.rpartition(".")
    if not (service and dot and method):
        parser.error(f"Service.method wants a dot between two names, not {args.service_method[:80]!r}")
    # argparse stops filling ARG... at the first option; what follows it comes back
    # as extras, in order. Anything there that looks like an option is a typo, up to
    # a "--": argparse hands that back too when it comes after an option, and what
    # follows it is ARGs whatever they look like (a later "--" among them included).
    before, after = _split_at_separator(extras)
    for extra in before:
        if extra.startswith("-") and not _is_number(extra):
            parser.error(f"unrecognized arguments: {extra} (put -- before an ARG that starts with a dash)")
    values = []
    for position, text in enumerate([*args.values, *before, *after], 1):
        try:
            values.append(parse_arg(text))
        except ValueError as exc:
            parser.error(f"ARG {position} ({text[:40]}): {exc}")
    args.values = values
    kwargs = {}
    for item in args.kw:
        name, sep, text = item.partition("=")
        if not sep or not name:
            parser.error(f"--kw wants NAME=VALUE, not {item!r}")
        if name == "timeout":
            parser.error("--kw timeout=...: a keyword argument named 'timeout' cannot be passed "
                         "(the call's own timeout takes the name); use --timeout for the deadline")
        if name in kwargs:
            parser.error(f"--kw {name} given twice")
        try:
            kwargs[name] = parse_arg(text)
        except ValueError as exc:
            parser.error(f"--kw {name}: {exc}")
    args.kwargs = kwargs


def _split_at_separator(extras: list[str]) -> tuple[list[str], list[str]]:
    """``extras`` before the first ``--``, and what follows it."""
    if "--" not in extras:
        return extras, []
    cut = extras.index("--")
    return extras[:cut], extras[cut + 1:]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
