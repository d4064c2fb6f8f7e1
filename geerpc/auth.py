"""Who makes a call: bearer tokens checked by a server interceptor.

A client sends its token as call metadata, ``authorization: Bearer <token>``
(``dial(token=...)``). ``BearerTokens`` is a server interceptor (``Server(auth=...)``
runs it before every other one): it finds the identity the token stands for and sets
``call.identity``, or refuses the call with ``Unauthenticated`` before any other
interceptor or the handler runs. Per-method rules are an interceptor of one's own
after it, raising ``PermissionDenied`` from ``call.identity``.

Tokens are compared in constant time: the presented token is hashed (SHA-256) and the
digest looked up among the digests of the known tokens, so how long the check takes
does not depend on how much of a guess was right. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from .context import CallContext
from .errors import Unauthenticated

__all__ = ["BearerTokens", "MAX_TOKEN_LENGTH", "token_digest"]

MAX_TOKEN_LENGTH: Final = 4096  # characters; a longer authorization value is refused unread
_PREFIX: Final = "Bearer "


def token_digest(token: str) -> bytes:
    """What a token is compared by: its SHA-256 digest, the same length for every token,
    so ``hmac.compare_digest`` of two digests says nothing about either (the registry's
    tokens are compared so too)."""
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class BearerTokens:
    """A server ``auth``: the tokens it accepts, each mapped to the identity it stands for.

    ``BearerTokens({"s3cret": "alice"})``. A call without ``authorization`` metadata,
    with one that is not ``Bearer <token>``, or with an unknown token fails with
    ``geerpc.Unauthenticated``.
    """

    def __init__(self, tokens: Mapping[str, str]) -> None:
        if not isinstance(tokens, Mapping) or not tokens:
            raise ValueError("BearerTokens needs a mapping of at least one token to its identity")
        self._identities: dict[bytes, str] = {}
        for token, identity in tokens.items():
            if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH or not token.isprintable():
                raise ValueError(f"tokens must be non-empty printable str of at most {MAX_TOKEN_LENGTH} characters")
            if not isinstance(identity, str) or not identity:
                raise ValueError("each token's identity must be a non-empty str")
            self._identities[token_digest(token)] = identity

    def identity(self, authorization: Any) -> str | None:
        """The identity an ``authorization`` metadata value stands for, or None."""
        if type(authorization) is not str or len(authorization) > len(_PREFIX) + MAX_TOKEN_LENGTH:
            return None
        if not authorization.startswith(_PREFIX):
            return None
        presented = token_digest(authorization[len(_PREFIX):])
        found = None
        for known, identity in self._identities.items():  # every one, match or not
            if hmac.compare_digest(known, presented):
                found = identity
        return found

    async def __call__(self, call: CallContext, proceed: Callable[[], Awaitable[Any]]) -> Any:
        authorization = call.metadata.get("authorization")
        if authorization is None:
            raise Unauthenticated("this server needs a token: dial(..., token=...) sends one")
        identity = self.identity(authorization)
        if identity is None:
            raise Unauthenticated("the token was not accepted")
        call.identity = identity
        return await proceed()

    def __repr__(self) -> str:
        return f"<geerpc.BearerTokens: {len(self._identities)} token(s)>"
