"""etcd behind TLS (with and without client certificates) and with its auth turned on.

Each etcd here is real and of its own (see ``etcd_server.py``): certificates from
``trustme`` in a temporary directory, auth enabled through etcd's JSON gateway. They
skip without an etcd binary unless ``GEERPC_REQUIRE_ETCD=1``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from conftest import eventually
from etcd_server import EtcdProcess, etcd_binary, etcd_required

from geerpc.errors import RegistryError
from geerpc.registry.etcd import EtcdRegistration, register
from geerpc.xclient.etcd_discovery import EtcdDiscovery

A1, A2 = "tcp@127.0.0.1:9001", "tcp@127.0.0.1:9002"
USER, PASSWORD = "geerpc", "pw:with/odd@chars"
QUOTED = "pw%3Awith%2Fodd%40chars"  # PASSWORD as it goes in a URL


def _etcd_or_skip() -> str:
    binary = etcd_binary()
    if binary is None:
        if etcd_required():
            pytest.fail("no etcd binary on PATH, and GEERPC_REQUIRE_ETCD=1 requires the etcd tests to run")
        pytest.skip("no etcd binary on PATH (install etcd-server)")
    return binary


def _started(**options: bool) -> Iterator[EtcdProcess]:
    process = EtcdProcess(_etcd_or_skip(), **options)
    try:
        process.start()
        yield process
    finally:
        process.close()


@pytest.fixture(scope="module")
def tls_etcd() -> Iterator[EtcdProcess]:
    """HTTPS, no client certificate asked for."""
    yield from _started(tls=True)


@pytest.fixture(scope="module")
def mtls_etcd() -> Iterator[EtcdProcess]:
    """HTTPS, and a client certificate signed by its CA required (``--client-cert-auth``)."""
    yield from _started(client_cert_auth=True)


@pytest.fixture
def prefix() -> str:
    return f"geerpc-test-{uuid.uuid4().hex[:10]}"


def _url(etcd: EtcdProcess, prefix: str, *, scheme: str = "etcd", userinfo: str = "", query: str = "") -> str:
    return f"{scheme}://{userinfo}{etcd.endpoint}/{prefix}{query}"


async def _has(discovery: EtcdDiscovery, address: str) -> bool:
    return address in await discovery.get_all()


async def _lacks(discovery: EtcdDiscovery, address: str) -> bool:
    return address not in await discovery.get_all()


# ----------------------------------------------------------------- TLS


async def test_register_and_discover_with_client_certificates(mtls_etcd: EtcdProcess, prefix: str) -> None:
    context = mtls_etcd.client_ssl()
    url = _url(mtls_etcd, prefix, query="?ttl=3")
    async with EtcdDiscovery(url, ssl=context) as discovery:
        assert await discovery.get_all() == []
        async with await register(url, A1, ["Arith"], ssl=context) as reg:
            await eventually(lambda: _has(discovery, A1), 1, "registration seen over TLS")
            assert reg.lease_id
        await eventually(lambda: _lacks(discovery, A1), 1, "deregistration seen over TLS")


async def test_tls_etcd_through_the_server_and_the_xclient(tls_etcd: EtcdProcess, prefix: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    import geerpc
    from geerpc.xclient import XClient

    # etcds:// uses ssl.create_default_context(), which trusts what SSL_CERT_FILE names.
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_etcd.ca_file))

    class Echo:
        async def echo(self, text: str) -> str:
            return text

    server = geerpc.Server()
    server.register(Echo())
    address = await server.start("127.0.0.1", 0, registry=_url(tls_etcd, prefix, scheme="etcds"))
    try:
        async with XClient(_url(tls_etcd, prefix, query="?ssl=1")) as xc:
            await eventually(lambda: _has(xc.discovery, address), 2, "server listed")  # type: ignore[arg-type]
            assert await xc.call("Echo.echo", "over TLS", timeout=2) == "over TLS"
    finally:
        await server.stop()


async def test_an_untrusted_certificate_fails_fast_and_says_so(tls_etcd: EtcdProcess, prefix: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    start = time.monotonic()
    with pytest.raises(RegistryError, match="certificate verify failed"):
        await register(_url(tls_etcd, prefix, scheme="etcds"), A1, ["Arith"])  # the system CAs only
    with pytest.raises(RegistryError, match="certificate verify failed"):
        await register(_url(tls_etcd, prefix), A1, ["Arith"], ssl=ssl.create_default_context())
    assert time.monotonic() - start < 2  # refused: not retried for the 5 s of an outage
    async with EtcdDiscovery(_url(tls_etcd, prefix, query="?ssl=1"), first_list_timeout=0.3) as discovery:
        assert await discovery.get_all() == []
        with pytest.raises(RegistryError, match="certificate verify failed"):
            await discovery.refresh()


async def test_without_a_client_certificate_etcd_refuses_within_the_deadline(
        mtls_etcd: EtcdProcess, prefix: str) -> None:
    start = time.monotonic()
    with pytest.raises(RegistryError, match=mtls_etcd.endpoint):
        await register(_url(mtls_etcd, prefix), A1, ["Arith"], ssl=mtls_etcd.client_ssl(with_cert=False))
    assert time.monotonic() - start < 7  # at most the 5 s of register's deadline


async def test_plain_http_to_a_tls_etcd_is_an_error_within_the_deadline(tls_etcd: EtcdProcess,
                                                                       prefix: str) -> None:
    start = time.monotonic()
    with pytest.raises(RegistryError, match=tls_etcd.endpoint):
        await register(_url(tls_etcd, prefix), A1, ["Arith"])
    assert time.monotonic() - start < 7


# ----------------------------------------------------------------- auth


@pytest.fixture
async def auth_etcd(prefix: str) -> AsyncIterator[EtcdProcess]:
    """A plain-HTTP etcd with auth on: ``USER`` may read and write ``/prefix/`` only."""
    process = EtcdProcess(_etcd_or_skip())
    try:
        await asyncio.to_thread(process.start)
        await asyncio.to_thread(process.enable_auth, USER, PASSWORD, prefix)
        yield process
    finally:
        await asyncio.to_thread(process.close)


async def test_auth_from_arguments_the_url_and_the_environment(auth_etcd: EtcdProcess, prefix: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEERPC_ETCD_PASSWORD", PASSWORD)
    async with EtcdDiscovery(_url(auth_etcd, prefix, userinfo=f"{USER}:{QUOTED}@")) as discovery:
        assert await discovery.get_all() == []
        async with await register(_url(auth_etcd, prefix), A1, ["Arith"], username=USER, password=PASSWORD), \
                await register(_url(auth_etcd, prefix, userinfo=f"{USER}@"), A2, ["Arith"]):  # the env's password
            await eventually(lambda: _has(discovery, A2), 1, "both registrations seen")
            assert await discovery.get_all() == [A1, A2]
        await eventually(lambda: _lacks(discovery, A1), 1, "deregistrations seen")
        assert await discovery.get_all() == []


async def test_a_wrong_password_is_refused_at_once(auth_etcd: EtcdProcess, prefix: str) -> None:
    start = time.monotonic()
    with pytest.raises(RegistryError, match="authentication failed") as caught:
        await register(_url(auth_etcd, prefix), A1, ["Arith"], username=USER, password="bad-pw-7")
    assert time.monotonic() - start < 2
    assert "bad-pw-7" not in str(caught.value)
    async with EtcdDiscovery(_url(auth_etcd, prefix, userinfo=f"{USER}:wrong@"),
                             first_list_timeout=0.3) as discovery:
        assert await discovery.get_all() == []
        with pytest.raises(RegistryError, match="authentication failed"):
            await discovery.refresh()


async def test_no_credentials_or_another_prefix_is_refused(auth_etcd: EtcdProcess, prefix: str) -> None:
    with pytest.raises(RegistryError, match="user name is empty"):
        await register(_url(auth_etcd, prefix), A1, ["Arith"], timeout=0.5)
    with pytest.raises(RegistryError, match="permission denied"):
        await register(_url(auth_etcd, f"{prefix}-other"), A1, ["Arith"], username=USER, password=PASSWORD,
                       timeout=0.5)


async def test_tokens_lost_in_a_restart_are_replaced(auth_etcd: EtcdProcess, prefix: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="geerpc")
    url = _url(auth_etcd, prefix, userinfo=f"{USER}:{QUOTED}@", query="?ttl=2")
    discovery = EtcdDiscovery(url)
    reg = await register(url, A1, ["Arith"])
    try:
        await eventually(lambda: _has(discovery, A1), 2, "registration seen")
        # etcd's simple tokens live in the member's memory: a restart forgets them.
        await asyncio.to_thread(auth_etcd.restart)
        async with await register(url, A2, ["Arith"]):
            await eventually(lambda: _has(discovery, A2), 5, "the watch logged in again")
        await eventually(lambda: _lacks(discovery, A2), 2, "deregistration seen")
        old = reg.lease_id
        await asyncio.to_thread(auth_etcd.gateway, "/v3/lease/revoke", {"ID": str(old)})
        await eventually(lambda: _renewed(reg, old), 5, "the keep-alive logged in again and re-registered")
        await eventually(lambda: _has(discovery, A1), 2, "re-registration seen")
    finally:
        await reg.stop()
        await discovery.close()


async def _renewed(reg: EtcdRegistration, old: int) -> bool:
    return reg.lease_id not in (0, old)


async def test_auth_over_client_certificates() -> None:
    prefix = f"geerpc-test-{uuid.uuid4().hex[:10]}"
    own = EtcdProcess(_etcd_or_skip(), client_cert_auth=True)
    try:
        await asyncio.to_thread(own.start)
        await asyncio.to_thread(own.enable_auth, USER, PASSWORD, prefix)
        context = own.client_ssl()
        url = _url(own, prefix, userinfo=f"{USER}:{QUOTED}@")
        async with EtcdDiscovery(url, ssl=context) as discovery, \
                await register(url, A1, ["Arith"], ssl=context):
            await eventually(lambda: _has(discovery, A1), 1, "registration seen with TLS and auth")
        with pytest.raises(RegistryError, match="authentication failed"):
            await register(url, A1, ["Arith"], ssl=context, password="bad-pw-7")
    finally:
        await asyncio.to_thread(own.close)
