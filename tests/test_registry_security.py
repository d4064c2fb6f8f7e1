"""The registry's tokens and HTTPS: who may change the list, who may read it, and
heartbeats and discoveries that send the token and verify the registry's certificate.

Real TLS over loopback sockets, with certificates from ``trustme``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator

import aiohttp
import pytest
import trustme
from conftest import eventually

from geerpc.errors import RegistryError
from geerpc.registry import Registry
from geerpc.registry.auth import MAX_AUTHORIZATION, Tokens, bearer
from geerpc.registry.heartbeat import Heartbeat, announce_heartbeat
from geerpc.xclient.registry_discovery import RegistryDiscovery

TOKEN = "reg-secret"
READ = "read-secret"
SERVER = "X-Geerpc-Server"
A = "tcp@10.0.0.5:9000"


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
async def guarded() -> AsyncIterator[Registry]:
    async with Registry(token=TOKEN) as reg:
        yield reg


@pytest.fixture
async def private() -> AsyncIterator[Registry]:
    async with Registry(token=TOKEN, read_token=READ) as reg:
        yield reg


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def refused(registry: Registry) -> int:
    return registry.counts.refused[401]


# -- tokens, pure ------------------------------------------------------------------------


def test_bearer_reads_only_a_bearer_header_of_sane_size():
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer") is None
    assert bearer(None) is None
    assert bearer("Bearer " + "x" * MAX_AUTHORIZATION) is None


def test_tokens_refuse_what_a_header_cannot_carry_and_a_read_token_alone():
    for bad in ("", "two words", "tab\there", "é", "x" * MAX_AUTHORIZATION):
        with pytest.raises(ValueError):
            Tokens(bad)
    with pytest.raises(TypeError):
        Tokens(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a token"):
        Tokens(None, READ)


def test_the_write_token_reads_too():
    tokens = Tokens(TOKEN, READ)
    assert tokens.may_read(f"Bearer {TOKEN}") and tokens.may_read(f"Bearer {READ}")
    assert tokens.may_write(f"Bearer {TOKEN}") and not tokens.may_write(f"Bearer {READ}")
    assert not tokens.may_read(None) and not tokens.may_read("Bearer nope")
    assert tokens.may_read(None, READ)  # the dashboard's ?token=


# -- writes --------------------------------------------------------------------------------


async def test_rogue_registration_and_deregistration_are_401_and_change_nothing(guarded, http):
    async with http.post(guarded.url, headers={SERVER: A, **auth(TOKEN)}) as r:
        assert r.status == 200
    index = guarded.table.index
    for headers in ({SERVER: "tcp@10.6.6.6:1"}, {SERVER: "tcp@10.6.6.6:1", **auth("wrong")},
                    {SERVER: "tcp@10.6.6.6:1", "Authorization": f"Basic {TOKEN}"}):
        async with http.post(guarded.url, headers=headers) as r:
            assert r.status == 401
            body = await r.text()
            assert body.count("\n") == 1 and "token" in body
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            assert "X-Geerpc-Index" not in r.headers
    async with http.delete(guarded.url, headers={SERVER: A, **auth("wrong")}) as r:
        assert r.status == 401
    assert guarded.table.index == index
    async with http.get(guarded.url) as r:  # GETs stay open without a read token
        assert r.status == 200 and r.headers["X-Geerpc-Servers"] == A
    assert guarded.counts.refused[401] == 4
    async with http.delete(guarded.url, headers={SERVER: A, **auth(TOKEN)}) as r:
        assert r.status == 200


async def test_a_refused_write_wakes_no_watcher(guarded, http):
    index = guarded.table.index

    async def watch() -> str:
        async with http.get(guarded.url, params={"index": str(index), "wait": "2"}) as r:
            return r.headers["X-Geerpc-Servers"]

    watcher = asyncio.create_task(watch())
    await eventually(lambda: guarded.watchers == 1, what="the watch parked")
    async with http.post(guarded.url, headers={SERVER: A}) as r:
        assert r.status == 401
    await asyncio.sleep(0.2)  # a wrongly woken watcher would answer within this
    assert not watcher.done()
    async with http.post(guarded.url, headers={SERVER: A, **auth(TOKEN)}) as r:
        assert r.status == 200
    assert await asyncio.wait_for(watcher, 2) == A


async def test_guessing_the_token_gets_401s_and_the_right_one_still_works(guarded, http):
    for guess in [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "r", *(f"guess-{n}" for n in range(60))]:
        async with http.post(guarded.url, headers={SERVER: A, **auth(guess)}) as r:
            assert r.status == 401
    assert len(guarded.table) == 0
    async with http.post(guarded.url, headers={SERVER: A, **auth(TOKEN)}) as r:
        assert r.status == 200
    assert len(guarded.table) == 1
    async with http.get(guarded.url.rsplit("/_geerpc_", 1)[0] + "/metrics") as r:
        assert 'geerpc_registry_refused_total{code="401"} 64.0' in await r.text()


async def test_an_oversized_authorization_header_is_a_401(guarded):
    # aiohttp's client and server both allow 8 KiB header fields: 7 KiB is over our cap.
    async with aiohttp.ClientSession() as session:
        huge = "Bearer " + TOKEN + "x" * (7 * 1024)
        async with session.post(guarded.url, headers={SERVER: A, "Authorization": huge}) as r:
            assert r.status == 401
    assert len(guarded.table) == 0


# -- reads -----------------------------------------------------------------------------------


async def test_a_read_token_guards_every_get(private, http):
    base = private.url.rsplit("/_geerpc_", 1)[0]
    targets = [(private.url, {}), (private.url, {"Accept": "application/json"}),
               (private.url, {"Accept": "text/html"}), (base + "/", {}), (base + "/metrics", {})]
    for url, headers in targets:
        async with http.get(url, headers=headers) as r:
            assert r.status == 401, url
        async with http.get(url, headers={**headers, **auth("wrong")}) as r:
            assert r.status == 401, url
        for token in (READ, TOKEN):
            async with http.get(url, headers={**headers, **auth(token)}) as r:
                assert r.status == 200, url
    async with http.get(private.url, params={"index": "1", "wait": "1"}) as r:  # a watch
        assert r.status == 401
    async with http.post(private.url, headers={SERVER: A, **auth(READ)}) as r:  # reading is not writing
        assert r.status == 401
    assert len(private.table) == 0


async def test_the_dashboard_page_takes_the_read_token_in_its_url_and_nothing_else_does(private, http):
    base = private.url.rsplit("/_geerpc_", 1)[0]
    async with http.get(base + "/", params={"token": READ}) as r:
        assert r.status == 200 and b"<html" in (await r.read()).lower()
    async with http.get(private.url, params={"token": READ}, headers={"Accept": "text/html"}) as r:
        assert r.status == 200
    async with http.get(private.url, params={"token": READ}, headers={"Accept": "application/json"}) as r:
        assert r.status == 401  # the API wants the header: tokens stay out of URLs
    async with http.get(base + "/", params={"token": "wrong"}) as r:
        assert r.status == 401


# -- HTTPS -----------------------------------------------------------------------------------


async def test_https_registry_serves_its_url_and_a_plaintext_request_does_not_hang_it(server_ctx, ca_ctx):
    reg = Registry(token=TOKEN)
    url = await reg.start("127.0.0.1", 0, ssl=server_ctx)
    try:
        assert url.startswith("https://127.0.0.1:") and url.endswith("/_geerpc_/registry")
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with asyncio.timeout(5):
                    await session.get(url.replace("https://", "http://"))
            async with session.post(url, headers={SERVER: A, **auth(TOKEN)}, ssl=ca_ctx) as r:
                assert r.status == 200
            async with session.get(url, ssl=ca_ctx) as r:
                assert r.headers["X-Geerpc-Servers"] == A
    finally:
        await reg.stop()


async def test_a_client_context_is_refused_as_the_registry_s(ca_ctx):
    with pytest.raises(ValueError, match="host names"):
        await Registry().start("127.0.0.1", 0, ssl=ca_ctx)
    with pytest.raises(TypeError):
        await Registry().start("127.0.0.1", 0, ssl="yes")  # type: ignore[arg-type]


async def test_a_heartbeat_over_https_with_the_token_keeps_its_server_listed(server_ctx, ca_ctx):
    reg = Registry(timeout=1.0, token=TOKEN, heartbeat_period=0.2)
    url = await reg.start("127.0.0.1", 0, ssl=server_ctx)
    try:
        beat = await announce_heartbeat(url, A, ["Arith"], token=TOKEN, ssl=ca_ctx)
        try:
            assert beat.beats == 1 and len(reg.table) == 1
            await eventually(lambda: beat.beats >= 8, timeout=10, what="beats past the registry's timeout")
            assert reg.count_listed() == 1
        finally:
            await beat.stop()
        assert len(reg.table) == 0  # the DELETE carried the token
        assert reg.counts.refused[401] == 0
    finally:
        await reg.stop()


async def test_a_heartbeat_with_a_wrong_token_says_so_and_keeps_retrying(guarded, caplog):
    caplog.set_level(logging.DEBUG, logger="geerpc.registry")
    sleeps: list[float] = []
    tried = asyncio.Event()

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= 3:
            tried.set()
        await asyncio.sleep(0)

    beat = Heartbeat(guarded.url, A, token="wrong", sleep=sleep)
    beat.start()
    try:
        assert not await beat.wait_first()
        await asyncio.wait_for(tried.wait(), 5)
        assert beat.failures >= 3 and len(guarded.table) == 0
        assert all(s > 0 for s in sleeps)  # its backoff, never a spin
    finally:
        await beat.stop()
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures and all("the registry refused our token" in m for m in failures)


async def test_a_heartbeat_without_a_token_is_told_it_needs_one(guarded, caplog):
    caplog.set_level(logging.WARNING, logger="geerpc.registry")
    beat = Heartbeat(guarded.url, A)
    beat.start()
    try:
        assert not await beat.wait_first()
    finally:
        await beat.stop()
    assert any("failed" in r.getMessage() and "wants a token and we sent none" in r.getMessage()
               for r in caplog.records)


def test_heartbeat_arguments_are_checked_up_front(ca_ctx):
    with pytest.raises(ValueError):
        Heartbeat("http://127.0.0.1:1/r", A, token="two words")
    with pytest.raises(ValueError, match="https"):
        Heartbeat("http://127.0.0.1:1/r", A, ssl=ca_ctx)
    with pytest.raises(TypeError):
        Heartbeat("https://127.0.0.1:1/r", A, ssl=True)  # type: ignore[arg-type]


# -- discovery -------------------------------------------------------------------------------


async def test_discovery_over_https_with_the_read_token(server_ctx, ca_ctx, http):
    reg = Registry(token=TOKEN, read_token=READ)
    url = await reg.start("127.0.0.1", 0, ssl=server_ctx)
    try:
        async with http.post(url, headers={SERVER: A, **auth(TOKEN)}, ssl=ca_ctx) as r:
            assert r.status == 200
        async with RegistryDiscovery(url, ssl=ca_ctx, token=READ, watch=False) as discovery:
            await discovery.refresh()
            assert await discovery.get_all() == [A]
        async with RegistryDiscovery(url, ssl=ca_ctx, watch=False) as discovery:
            with pytest.raises(RegistryError, match="401.*wants a read token"):
                await discovery.refresh()
        async with RegistryDiscovery(url, ssl=ca_ctx, token="wrong", watch=False) as discovery:
            with pytest.raises(RegistryError, match="401.*refused our token"):
                await discovery.refresh()
    finally:
        await reg.stop()


async def test_discovery_with_the_wrong_ca_fails_certificate_verification(server_ctx):
    reg = Registry()
    url = await reg.start("127.0.0.1", 0, ssl=server_ctx)
    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    try:
        async with RegistryDiscovery(url, ssl=other, watch=False) as discovery:
            with pytest.raises(RegistryError, match="certificate verify failed"):
                await discovery.refresh()
        async with RegistryDiscovery(url, watch=False) as discovery:  # the system's CAs do not know ours
            with pytest.raises(RegistryError, match="certificate verify failed"):
                await discovery.refresh()
    finally:
        await reg.stop()
