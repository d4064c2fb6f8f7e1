"""Addresses written GeeRPC's way, ``protocol@address``: pure parsing, no I/O."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Final

__all__ = ["Address", "parse_address", "MAX_ADDRESS_LENGTH"]

MAX_ADDRESS_LENGTH: Final = 256
_SCHEMES: Final = ("tcp", "unix", "http")


@dataclass(frozen=True, slots=True)
class Address:
    """A parsed address. ``host``/``port`` for tcp and http, ``path`` for unix."""

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
    """Parse ``tcp@host:port``, ``http@host:port`` or ``unix@/path``.

    A bare ``host:port`` means tcp. Raises ``ValueError`` naming what is wrong.
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
        raise ValueError(f"address {text!r}: unknown protocol {scheme!r} (want tcp, unix or http)")
    if scheme == "unix":
        if not rest:
            raise ValueError(f"address {text!r}: empty socket path")
        return Address("unix", path=rest)
    host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit() or len(port_text) > 5:
        raise ValueError(f"address {text!r}: want {scheme}@host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"address {text!r}: port must be 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"address {text!r}: bad IPv6 literal") from None
    elif not _valid_hostname(host):
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
