"""TLS files and tokens for ``geerpc serve``, ``call`` and ``list``: the options turned
into ``ssl.SSLContext`` objects, ``BearerTokens`` and token strings, before anything
connects or listens.

- ``--tls-cert FILE --tls-key FILE``: a listener (``serve``) serves TLS with them; a
  process that connects (``call``, ``list``, and ``serve`` towards its registry)
  presents them when the peer asks for a client certificate (mutual TLS).
- ``--tls-ca FILE``: the CA that verifies those it connects to (the server, the
  registry). Without it, the system's CAs. ``serve``'s ``--tls-client-ca FILE`` asks
  its own clients for certificates from that CA.
- Tokens come from a flag, else an environment variable (kept out of ``ps``).

Every mistake is one line naming the option and the file, never a token, raised as
a ``CommandError`` with the usage status. File loading and the token rules are the
registry's command line's (``geerpc.registry.__main__``), so ``geerpc registry``
says the same of the same mistakes.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Final

from ..registry.__main__ import OptionError, load_ca, load_chain, load_server_context, token_option
from ..xclient.discovery import ServerList
from ..xclient.urls import discovery_for
from . import EXIT_USAGE, CommandError

__all__ = [
    "REGISTRY_READ_TOKEN_ENV",
    "REGISTRY_TOKEN_ENV",
    "TOKEN_ENV",
    "ClientSecurity",
    "call_token",
    "client_context",
    "discovery",
    "read_tokens",
    "registry_is_tls",
    "server_context",
    "token",
]

TOKEN_ENV: Final = "GEERPC_TOKEN"
REGISTRY_TOKEN_ENV: Final = "GEERPC_REGISTRY_TOKEN"
REGISTRY_READ_TOKEN_ENV: Final = "GEERPC_REGISTRY_READ_TOKEN"
MAX_TOKEN: Final = 4096


@dataclass(frozen=True)
class ClientSecurity:
    """What ``call`` and ``list`` connect with: ``ssl`` for ``tls@`` servers and
    ``https://`` (or ``etcds://``) registries, ``token`` for the servers, and
    ``registry_token`` for a registry with a read token."""

    ssl: ssl.SSLContext | None = None
    token: str | None = None
    registry_token: str | None = None


def _usage(exc: OptionError) -> CommandError:
    return CommandError(str(exc), EXIT_USAGE)


def server_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    """The context ``serve --tls-cert --tls-key [--tls-client-ca]`` listens with."""
    try:
        return load_server_context(cert, key, client_ca, ca_option="--tls-client-ca")
    except OptionError as exc:
        raise _usage(exc) from None


def client_context(ca: str | None, cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The context to connect with: verifying with ``ca`` (else the system's CAs) and
    presenting ``cert`` and ``key`` when asked; None when no option was given."""
    if ca is None and cert is None:
        return None
    context = ssl.create_default_context()
    try:
        if ca is not None:
            load_ca(context, "--tls-ca", ca)
        if cert is not None and key is not None:
            load_chain(context, cert, key)
    except OptionError as exc:
        raise _usage(exc) from None
    return context


def token(value: str | None, option: str, *envs: str) -> str | None:
    """The token ``option`` gave, else the first of ``envs`` that is set and not empty."""
    try:
        if value is not None:
            return token_option(value, option, None)
        for env in envs:
            found = token_option(None, env, env)
            if found is not None:
                return found
        return None
    except OptionError as exc:
        raise _usage(exc) from None


def call_token(value: str | None) -> str | None:
    """``call --token`` (else ``GEERPC_TOKEN``): printable text of 1 to 4096 characters,
    as the server's ``BearerTokens`` accept."""
    source = "--token"
    if value is None:
        value, source = os.environ.get(TOKEN_ENV) or None, TOKEN_ENV
    if value is not None and not (0 < len(value) <= MAX_TOKEN and value.isprintable()):
        raise CommandError(f"{source} must be printable text of 1 to {MAX_TOKEN} characters", EXIT_USAGE)
    return value


def read_tokens(path: str) -> dict[str, str]:
    """``serve --tokens FILE``: one ``TOKEN IDENTITY`` a line (blank lines and lines
    starting with ``#`` skipped), as a mapping for ``geerpc.BearerTokens``."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError as exc:
        raise CommandError(f"cannot read --tokens {path}: {exc.strerror or exc}", EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise CommandError(f"--tokens {path} is not UTF-8 text", EXIT_USAGE) from None
    tokens: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        secret, _, identity = text.replace("\t", " ").partition(" ")
        identity = identity.strip()
        # Never quote the line: it holds a token.
        if not identity or len(secret) > MAX_TOKEN or not secret.isprintable():
            raise CommandError(f"--tokens {path}, line {number}: want TOKEN IDENTITY "
                               f"(a printable token, a space, who it stands for)", EXIT_USAGE)
        if secret in tokens:
            raise CommandError(f"--tokens {path}, line {number}: this token is already on an earlier line",
                               EXIT_USAGE)
        tokens[secret] = identity
    if not tokens:
        raise CommandError(f"--tokens {path} holds no token (want lines of TOKEN IDENTITY)", EXIT_USAGE)
    return tokens


def discovery(url: str, timeout: float, security: ClientSecurity) -> ServerList:
    """The discovery ``call`` and ``list`` read the registry at ``url`` with, once: no
    watch, no wait past ``timeout``. It verifies the registry with ``security.ssl``
    and sends ``security.registry_token`` when they apply to it."""
    tls = security.ssl if registry_is_tls(url) else None
    return discovery_for(url, once=True, timeout=timeout, ssl=tls, token=security.registry_token)


def registry_is_tls(url: str) -> bool:
    """Whether the registry at ``url`` is reached over TLS (``https://``, ``etcds://``,
    ``etcd://...?ssl=1``)."""
    if url.startswith(("https://", "etcds://")):
        return True
    if url.startswith("etcd://"):
        from ..registry.etcd_client import parse_etcd_url

        try:
            return parse_etcd_url(url).tls
        except ValueError:
            return False
    return False
