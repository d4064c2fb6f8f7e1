"""The registry over HTTPS: its dashboard in a real headless Chromium, with a read token,
and its TLS listener's handshake timeout.

Certificates come from ``trustme`` for each run (none is committed). Chromium trusts
exactly the registry's certificate: ``--ignore-certificate-errors-spki-list`` with the
hash of its public key, which Chromium honours with a ``--user-data-dir`` of its own.

Hostile peers on the HTTPS port (rows for docs/registry.md):

- a client that connects and never sends a ClientHello: closed after
  ``handshake_timeout`` (10 s by default), while other clients are served;
- a client that sends half a TLS record header and stops: the same.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme
from browser import Browser, find_chromium

from geerpc.registry import Registry

TOKEN = "reg-secret"
READ = "read-secret"
ROWS = "[...document.querySelectorAll('#rows tr')].map(r => [...r.cells].map(c => c.innerText.trim()))"


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("127.0.0.1", "localhost")


@pytest.fixture
def server_ctx(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


@pytest.fixture
def ca_ctx(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def _tlv(der: bytes, at: int) -> tuple[int, int, int]:
    """The DER element at ``at``: where its content starts, where it ends, and its tag."""
    tag, length = der[at], der[at + 1]
    start = at + 2
    if length & 0x80:  # long form: the next (length & 0x7f) bytes hold the length
        count = length & 0x7F
        length = int.from_bytes(der[start:start + count], "big")
        start += count
    return start, start + length, tag


def spki_hash(leaf: trustme.LeafCert) -> str:
    """Base64 of the SHA-256 of the certificate's SubjectPublicKeyInfo, as Chromium's
    ``--ignore-certificate-errors-spki-list`` wants it."""
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    certificate, _, _ = _tlv(der, 0)  # SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
    at, end, _ = _tlv(der, certificate)  # tbsCertificate: SEQUENCE { [0] version, serial, ..., subject, spki, ... }
    fields = []
    while at < end:
        _, after, tag = _tlv(der, at)
        fields.append((tag, der[at:after]))
        at = after
    spki = fields[6 if fields[0][0] == 0xA0 else 5][1]
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
async def https_browser(leaf: trustme.LeafCert) -> AsyncIterator[Browser]:
    """A headless Chromium that trusts the registry's certificate; skipped without
    Chromium, unless GEERPC_REQUIRE_BROWSER=1."""
    executable = find_chromium()
    if executable is None:
        if os.environ.get("GEERPC_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is required (GEERPC_REQUIRE_BROWSER=1) but not installed")
        pytest.skip("chromium is not installed")
    browser = Browser(executable, [f"--ignore-certificate-errors-spki-list={spki_hash(leaf)}"])
    try:
        await browser.start()
        yield browser
    finally:
        await browser.close()


@contextlib.asynccontextmanager
async def https_registry(ctx: ssl.SSLContext, **options: Any) -> AsyncIterator[Registry]:
    registry = Registry(**options)
    await registry.start("127.0.0.1", 0, ssl=ctx)
    try:
        yield registry
    finally:
        await registry.stop()


async def beat(url: str, ca_ctx: ssl.SSLContext, address: str, services: str) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_ctx)) as http, http.post(
            url, headers={"X-Geerpc-Server": address, "X-Geerpc-Services": services,
                          "Authorization": f"Bearer {TOKEN}"}) as response:
        assert response.status == 200


async def test_the_dashboard_over_https_with_a_read_token(https_browser, server_ctx, ca_ctx):
    async with https_registry(server_ctx, timeout=300, token=TOKEN, read_token=READ) as registry:
        url = registry.url
        assert url is not None
        assert url.startswith("https://127.0.0.1:")
        await beat(url, ca_ctx, "tls@127.0.0.1:9001", "Arith")
        root = url.removesuffix("/_geerpc_/registry") + "/"
        await https_browser.goto(f"{root}?token={READ}")
        assert await https_browser.evaluate("location.protocol") == "https:"
        await https_browser.wait_for(f"{ROWS}.length === 1")
        assert (await https_browser.evaluate(ROWS))[0][:2] == ["tls@127.0.0.1:9001", "Arith"]
        assert await https_browser.evaluate("document.getElementById('status-text').innerText") == "live"
        # The page keeps itself current over HTTPS, sending the token as a header.
        await beat(url, ca_ctx, "tls@127.0.0.1:9002", "Calc")
        await https_browser.wait_for(f"{ROWS}.some(r => r[0] === 'tls@127.0.0.1:9002' && r[1] === 'Calc')")
        assert registry.counts.refused[401] == 0


async def test_the_dashboard_over_https_without_the_token_is_refused(https_browser, server_ctx):
    async with https_registry(server_ctx, timeout=300, token=TOKEN, read_token=READ) as registry:
        url = registry.url
        assert url is not None
        await https_browser.goto(url.removesuffix("/_geerpc_/registry") + "/")
        assert await https_browser.evaluate("location.protocol") == "https:"
        assert "needs the registry's token" in await https_browser.text()
        assert registry.counts.refused[401] == 1


# -- the TLS handshake timeout -------------------------------------------------------------


async def assert_served(url: str, ca_ctx: ssl.SSLContext) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca_ctx)) as http, http.get(
            url, headers={"Accept": "application/json"}) as response:
        assert response.status == 200


@pytest.mark.parametrize("first_bytes", [b"", b"\x16\x03\x01"], ids=["nothing", "half-a-record-header"])
async def test_a_stalled_tls_handshake_is_closed_after_the_handshake_timeout(server_ctx, ca_ctx, first_bytes):
    async with https_registry(server_ctx, handshake_timeout=0.3) as registry:
        url = registry.url
        assert url is not None
        port = int(url.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            if first_bytes:
                writer.write(first_bytes)
                await writer.drain()
            # Others are served while it stalls.
            await assert_served(url, ca_ctx)
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed by the registry
            assert loop.time() - started < 3
        finally:
            writer.close()
        await assert_served(url, ca_ctx)


def test_handshake_timeout_must_be_a_positive_number():
    for bad in (0, -1, float("nan"), float("inf"), "5", True):
        with pytest.raises(ValueError, match="handshake_timeout"):
            Registry(handshake_timeout=bad)
