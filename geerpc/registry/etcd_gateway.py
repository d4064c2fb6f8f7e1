"""etcd's v3 JSON gateway, spoken over aiohttp: the few calls the etcd backend makes.

Layer: registry, the etcd backend's wire half; ``etcd_client`` adds failover between
endpoints and deadlines on top. etcd serves its gRPC API as JSON on the client port
too (``POST /v3/kv/range`` and so on): keys and values in base64, 64-bit numbers as
strings, fields at their default value left out, and streams (watch, lease keep-alive)
as one JSON object per line. Going through it needs only aiohttp, which geerpc already
uses, and takes an ``ssl.SSLContext`` as is (client certificates included).

etcd's auth is a token per member (``/v3/auth/authenticate``), sent as the
``Authorization`` header; a token etcd no longer knows (it restarted, or the token
expired) is replaced once and the call made again.
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from ..errors import RegistryError

if TYPE_CHECKING:
    import aiohttp

__all__ = ["EtcdAuthFailed", "EtcdEndpoint", "EtcdError", "Event", "Header", "KeyValue", "Listing",
           "is_tls_refusal", "prefix_end"]

_MAX_LINE: Final = 16 * 1024 * 1024  # one streamed JSON object; etcd's own limit is ~1.5 MiB a request
_STALE_TOKEN: Final = ("invalid auth token", "user name is empty", "auth token not found")


class EtcdError(RegistryError):
    """etcd answered, with an error (``code`` is its gRPC status code)."""

    def __init__(self, message: str, code: int = 0, *, refusal: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.refusal = refusal  # a configuration error: asking again will not help


class EtcdAuthFailed(RegistryError):
    """etcd refused the user name and password: trying again will not help."""


@dataclass(frozen=True, slots=True)
class Header:
    """The response header: the store's revision, and whose revisions they are."""

    revision: int
    cluster_id: int
    raft_term: int


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    mod_revision: int
    lease: int


@dataclass(frozen=True, slots=True)
class Listing:
    """A range read: the keys, and the revision they were read at."""

    header: Header
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True, slots=True)
class Event:
    kind: str  # "PUT" or "DELETE"
    kv: KeyValue


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range read or watch cover every key starting with ``prefix``."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return b"\0"  # all keys
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


class EtcdEndpoint:
    """One etcd member's gateway, on a shared aiohttp session.

    ``username`` and ``password`` (both or neither) turn on etcd's auth; ``tokens`` holds
    the token of each endpoint, shared with whoever made this handle, so that one login
    serves every call. Calls carry no deadline of their own: the caller bounds them.
    """

    def __init__(self, session: aiohttp.ClientSession, base: str, *, username: str | None = None,
                 password: str | None = None, tokens: dict[str, str] | None = None) -> None:
        self._session = session
        self.base = base  # "https://host:port"
        self._username = username
        self._password = password
        self._tokens = {} if tokens is None else tokens

    # ------------------------------------------------------------ the calls

    async def get_prefix(self, prefix: bytes) -> Listing:
        reply = await self.post("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return Listing(_header(reply), tuple(_kv(item) for item in reply.get("kvs", ())))

    async def get(self, key: bytes) -> KeyValue | None:
        reply = await self.post("/v3/kv/range", {"key": _b64(key)})
        kvs = reply.get("kvs", ())
        return _kv(kvs[0]) if kvs else None

    async def put(self, key: bytes, value: bytes, *, lease: int = 0) -> None:
        body: dict[str, object] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        await self.post("/v3/kv/put", body)

    async def delete_prefix(self, prefix: bytes) -> int:
        reply = await self.post("/v3/kv/deleterange",
                                {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return int(reply.get("deleted", 0))

    async def grant(self, ttl: int) -> tuple[int, int]:
        """A new lease: its id and the TTL etcd granted."""
        reply = await self.post("/v3/lease/grant", {"TTL": str(ttl)})
        return int(reply["ID"]), int(reply.get("TTL", ttl))

    async def keep_alive(self, lease: int) -> int:
        """Renew ``lease`` once; the TTL it has now, 0 when etcd does not know it."""
        reply = await self.post("/v3/lease/keepalive", {"ID": str(lease)})
        result = reply.get("result", reply)
        return int(result.get("TTL", 0)) if isinstance(result, dict) else 0

    async def revoke(self, lease: int) -> None:
        await self.post("/v3/lease/revoke", {"ID": str(lease)})

    async def time_to_live(self, lease: int) -> tuple[int, int]:
        """The lease's remaining and granted TTLs (remaining -1: no such lease)."""
        reply = await self.post("/v3/lease/timetolive", {"ID": str(lease)})
        return int(reply.get("TTL", 0)), int(reply.get("grantedTTL", 0))

    async def status(self) -> Header:
        """A cheap call that proves the member answers."""
        return _header(await self.post("/v3/maintenance/status", {}))

    async def watch_prefix(self, prefix: bytes, start_revision: int) -> AsyncIterator[list[Event]]:
        """The changes under ``prefix`` from ``start_revision`` on, one batch per etcd message.

        Yields an empty batch first, once etcd has created the watch. Ends when etcd closes
        the stream; raises ``EtcdError`` when etcd cancels the watch (a compacted revision,
        a token it no longer takes, permission denied).
        """
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision)}}
        await self._login_if_needed()
        async for result in self._stream("/v3/watch", body):
            if result.get("canceled"):
                reason = str(result.get("cancel_reason") or "")
                if result.get("compact_revision"):
                    reason = f"revision {start_revision} is compacted (etcd keeps from {result['compact_revision']})"
                if any(text in reason for text in _STALE_TOKEN):
                    self._tokens.pop(self.base, None)  # log in afresh on the next attempt
                raise EtcdError(f"etcd cancelled the watch: {reason or 'no reason given'}")
            if result.get("created"):
                yield []
                continue
            yield [Event(str(item.get("type", "PUT")), _kv(item.get("kv", {}))) for item in result.get("events", ())]

    # ------------------------------------------------------------ requests

    async def post(self, path: str, body: Mapping[str, object]) -> dict[str, Any]:
        """POST ``body`` to ``path`` (logging in first with auth on); the JSON reply.

        Raises ``EtcdError`` for an error etcd answered, ``EtcdAuthFailed`` when it refuses
        the password, and aiohttp's errors when it cannot be reached.
        """
        await self._login_if_needed()
        try:
            return await self._post(path, body)
        except EtcdError as exc:
            if self._username is None or not any(text in exc.message for text in _STALE_TOKEN):
                raise
        self._tokens.pop(self.base, None)
        await self._login_if_needed()
        return await self._post(path, body)

    async def _login_if_needed(self) -> None:
        if self._username is None or self.base in self._tokens:
            return
        try:
            reply = await self._post("/v3/auth/authenticate", {"name": self._username, "password": self._password})
        except EtcdError as exc:
            if "authentication failed" in exc.message:
                raise EtcdAuthFailed(f"etcd at {self.base}: authentication failed for user "
                                     f"{self._username!r} (wrong user name or password)") from None
            if "authentication is not enabled" in exc.message:
                # etcd accepts every call without a token then: carry on without one.
                self._tokens[self.base] = ""
                return
            raise
        token = reply.get("token")
        if not isinstance(token, str):
            raise EtcdError("etcd's authenticate reply has no token")
        self._tokens[self.base] = token

    def _headers(self) -> dict[str, str]:
        token = self._tokens.get(self.base)
        return {"Authorization": token} if token else {}

    async def _post(self, path: str, body: Mapping[str, object]) -> dict[str, Any]:
        async with self._session.post(self.base + path, json=body, headers=self._headers()) as response:
            raw = await response.read()
        if response.status == 400 and b"HTTP request to an HTTPS server" in raw:
            raise EtcdError("etcd serves HTTPS here: use etcds://, ?ssl=1 or ssl=", refusal=True)
        try:
            reply = json.loads(raw)
        except ValueError:
            raise EtcdError(f"etcd answered {path} with HTTP {response.status} and no JSON: {raw[:200]!r}") from None
        if not isinstance(reply, dict):
            raise EtcdError(f"etcd answered {path} with {type(reply).__name__}, not a JSON object")
        _raise_error(reply)
        if response.status != 200:
            raise EtcdError(f"etcd answered {path} with HTTP {response.status}")
        return reply

    async def _stream(self, path: str, body: Mapping[str, object]) -> AsyncIterator[dict[str, Any]]:
        """The ``result`` of each JSON object of a streamed reply."""
        async with self._session.post(self.base + path, json=body, headers=self._headers()) as response:
            if response.status != 200:
                raw = await response.read()
                try:
                    _raise_error(json.loads(raw))
                except ValueError:
                    pass
                raise EtcdError(f"etcd answered {path} with HTTP {response.status}")
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                if len(buffer) > _MAX_LINE:
                    raise EtcdError(f"etcd streamed an object over {_MAX_LINE} bytes on {path}")
                for line in lines:
                    if line.strip():
                        yield _result(line)
            if buffer.strip():
                yield _result(buffer)


def _result(line: bytes) -> dict[str, Any]:
    try:
        message = json.loads(line)
    except ValueError:
        raise EtcdError(f"etcd streamed something that is not JSON: {line[:200]!r}") from None
    if not isinstance(message, dict):
        raise EtcdError("etcd streamed something that is not a JSON object")
    _raise_error(message)
    result = message.get("result")
    if not isinstance(result, dict):
        raise EtcdError("etcd streamed an object without a result")
    return result


def _raise_error(reply: object) -> None:
    """Raise the error etcd put in ``reply``: ``{"error": "...", "code": N}``, or in a stream
    ``{"error": {"message": "...", "grpc_code": N}}``."""
    if not isinstance(reply, dict) or "error" not in reply:
        return
    error = reply["error"]
    if isinstance(error, dict):
        message, code = error.get("message", error), error.get("grpc_code", 0)
    else:
        message, code = reply.get("message") or error, reply.get("code", 0)
    raise EtcdError(str(message), int(code) if isinstance(code, int) else 0)


def _header(reply: dict[str, Any]) -> Header:
    header = reply.get("header", {})
    return Header(int(header.get("revision", 0)), int(header.get("cluster_id", 0)), int(header.get("raft_term", 0)))


def _kv(item: dict[str, Any]) -> KeyValue:
    return KeyValue(base64.b64decode(item.get("key", "")), base64.b64decode(item.get("value", "")),
                    int(item.get("mod_revision", 0)), int(item.get("lease", 0)))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def is_tls_refusal(exc: BaseException) -> bool:
    """True when TLS itself failed (a certificate that does not verify, a client certificate
    etcd refuses or misses, plain HTTP to an HTTPS port): a configuration error, which
    trying again will not mend."""
    seen: BaseException | None = exc
    for _ in range(5):  # aiohttp wraps the ssl module's error, sometimes twice
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError) or (isinstance(seen, EtcdError) and seen.refusal):
            return True
        text = str(seen).upper()
        if isinstance(seen, OSError) and "ALERT" in text and "CERTIFICATE" in text:
            return True  # the peer's TLS alert: bad, unknown or missing certificate
        seen = seen.__cause__ or seen.__context__
    return False
