"""Addresses written GeeRPC's way, ``protocol@address``: pure parsing, no I/O.

``str(parse_address(text))`` is the canonical form: one spelling per server, so the
registry keeps one entry for ``[::1]`` and ``[0:0:0:0:0:0:0:1]``, or for ``Host`` and
``host``. IPv6 literals take ``ipaddress``'s compressed form, host names are
lowercased (DNS names are case-insensitive), ports lose leading zeros.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Final

__all__ = ["Address", "parse_address", "check_announced", "is_local_host", "MAX_ADDRESS_LENGTH"]

MAX_ADDRESS_LENGTH: Final = 256
_SCHEMES: Final = ("tcp", "unix", "http", "tls")
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")  # what inet_aton reads as a number


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address. ``host``/``port`` for tcp, tls and http, ``path`` for unix."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix@{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}@{host}:{self.port}"


def parse_address(text: str) -> Address:
    """Parse ``tcp@host:port``, ``tls@host:port`` (TCP with TLS from the first byte),
    ``http@host:port`` or ``unix@/path``; canonicalise the host.

    A bare ``host:port`` means tcp. The port is 1 to 65535 in ASCII digits. Raises
    ``ValueError`` naming what is wrong.
    """
    if not isinstance(text, str):
        raise ValueError(f"address must be a str, not {type(text).__name__}")
    if not text or len(text) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"address must be 1 to {MAX_ADDRESS_LENGTH} characters")
    if not text.isprintable() or any(c in text for c in " ,\t"):
        raise ValueError(f"address {text[:64]!r} contains spaces, commas or control characters")
    scheme, sep, rest = text.partition("@")
    if not sep:
        scheme, rest = "tcp", text
    if scheme not in _SCHEMES:
        raise ValueError(f"address {text!r}: unknown protocol {scheme!r} (want tcp, tls, unix or http)")
    if scheme == "unix":
        if not rest:
            raise ValueError(f"address {text!r}: empty socket path")
        return Address("unix", path=rest)
    host, sep, port_text = rest.rpartition(":")
    # isascii: str.isdigit also accepts other scripts' digits ("٩٠"), which int() reads.
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise ValueError(f"address {text!r}: want {scheme}@host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"address {text!r}: port must be 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ip = ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"address {text!r}: bad IPv6 literal") from None
        # Python 3.13 prints IPv4-mapped addresses as ::ffff:1.2.3.4, older ones in hex:
        # spell them the newer way so registries on either agree.
        mapped = ip.ipv4_mapped
        host = f"::ffff:{mapped}" if mapped is not None and ip.scope_id is None else str(ip)
    elif _valid_hostname(host):
        host = host.lower()  # ASCII only (checked), so lower() cannot change its length
    else:
        raise ValueError(f"address {text!r}: bad host name {host!r}")
    return Address(scheme, host=host, port=port)


def _valid_hostname(host: str) -> bool:
    if len(host) > 253:
        return False
    labels = host.split(".")
    return all(
        label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
        and label.isascii() and not label.startswith("-")
        for label in labels
    )


def is_local_host(host: str | None) -> bool:
    """True for a peer on this host: a loopback address or ``localhost`` (None or empty:
    a unix socket, which is local too)."""
    if not host:
        return True
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]").partition("%")[0]).is_loopback
    except ValueError:
        return False


def check_announced(address: Address, *, from_local_peer: bool) -> None:
    """Refuse an address that a registry should not hand to clients.

    A registry's list tells clients where to connect, so an address announced by one
    peer must not turn clients against their own host: ``unix@`` paths (a Docker
    socket, say) are taken only from a peer on the same host; numeric hosts must be
    plain dotted IPv4 (``tcp@0:1``, ``tcp@2130706433:80``, ``127.1`` and ``0x7f.1`` all
    reach the client's own host through ``inet_aton``); and IPv6 scope ids (``%eth0``)
    name the client's own interfaces. (0.0.0.0 stays allowed: a server listening on
    all interfaces announces it, and clients on its host can dial it.) Raises
    ``ValueError`` naming the problem.
    """
    if address.scheme == "unix":
        if not from_local_peer:
            raise ValueError("unix@ addresses are accepted only from a peer on the registry's own host")
        return
    host = address.host
    if "%" in host:
        raise ValueError(f"address {address}: an IPv6 scope id names the client's own interface")
    if all(_NUMERIC_LABEL.fullmatch(label) for label in host.split(".")):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"address {address}: a numeric host must be a dotted IPv4 address "
                             "such as 10.0.0.5") from None
