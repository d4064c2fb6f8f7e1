"""The registry's bearer tokens: who may change the list, and who may read it.

Layer: the registry's server side, with no I/O and no aiohttp: ``server.py`` hands in
the ``Authorization`` header (and, for the dashboard's page, a ``?token=``) and gets
a yes or a no. Both tokens are optional; without them the registry is open, as
GeeRPC's is (its Go servers cannot send a token).

Strategy: a candidate is hashed with SHA-256 and its digest compared with the
token's digest by ``hmac.compare_digest``. Comparing digests of equal length means
the time taken says nothing about the token, not even its length. A header longer
than ``MAX_AUTHORIZATION`` is refused before hashing: a megabyte of header must not
cost a megabyte of hashing per request.
"""

from __future__ import annotations

import hmac
from typing import Final

from ..auth import token_digest

__all__ = ["AUTH_SCHEME", "MAX_AUTHORIZATION", "Tokens", "bearer", "check_token"]

AUTH_SCHEME: Final = "Bearer"
#: The longest ``Authorization`` header (or ``?token=``) looked at; longer is refused unread.
MAX_AUTHORIZATION: Final = 4096


def check_token(name: str, token: object) -> str | None:
    """``token`` if it can travel in an ``Authorization`` header; else ``ValueError``
    (``TypeError`` for a non-string)."""
    if token is None:
        return None
    if not isinstance(token, str):
        raise TypeError(f"{name} must be a string, not {type(token).__name__}")
    if not token or len(token) > MAX_AUTHORIZATION - len(AUTH_SCHEME) - 1:
        raise ValueError(f"{name} must be 1 to {MAX_AUTHORIZATION - len(AUTH_SCHEME) - 1} characters")
    if not (token.isascii() and token.isprintable()) or " " in token:
        raise ValueError(f"{name} must be printable ASCII without spaces (it is sent in an HTTP header)")
    return token


def bearer(header: str | None) -> str | None:
    """The token in an ``Authorization: Bearer <token>`` header; None when there is
    none, it is another scheme, or the header is oversized."""
    if header is None or len(header) > MAX_AUTHORIZATION:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != AUTH_SCHEME.lower():
        return None
    return token.strip() or None




class Tokens:
    """The registry's write token and optional read token.

    ``token`` guards POST and DELETE; ``read_token`` guards every GET (the list, the
    watch, the dashboard, ``/metrics``), and the write token reads too. A
    ``read_token`` without a ``token`` is refused: a list hidden from readers that
    anyone may rewrite protects nothing.
    """

    def __init__(self, token: str | None = None, read_token: str | None = None) -> None:
        token = check_token("token", token)
        read_token = check_token("read_token", read_token)
        if read_token is not None and token is None:
            raise ValueError("read_token needs a token too: without one, anyone could change the list")
        self._write = None if token is None else token_digest(token)
        self._read = None if read_token is None else token_digest(read_token)

    @property
    def writes_open(self) -> bool:
        return self._write is None

    @property
    def reads_open(self) -> bool:
        return self._read is None

    def may_write(self, authorization: str | None) -> bool:
        """Whether a request with this ``Authorization`` header may POST or DELETE."""
        return self._write is None or self._matches(bearer(authorization), self._write)

    def may_read(self, authorization: str | None, query_token: str | None = None) -> bool:
        """Whether a request with this header (or, for the page, ``?token=``) may GET."""
        if self._read is None:
            return True
        candidate = bearer(authorization)
        if candidate is None and query_token is not None and len(query_token) <= MAX_AUTHORIZATION:
            candidate = query_token
        # Both compared, always: which one matched (or that neither did) takes the same time.
        read = self._matches(candidate, self._read)
        write = self._write is not None and self._matches(candidate, self._write)
        return read | write

    @staticmethod
    def _matches(candidate: str | None, digest: bytes) -> bool:
        if candidate is None:
            return False
        return hmac.compare_digest(token_digest(candidate), digest)
