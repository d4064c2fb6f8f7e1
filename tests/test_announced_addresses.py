"""What a registry hands to clients, and its watch slots, must not be turned against clients."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from geerpc.address import check_announced, is_local_host, parse_address
from geerpc.registry import Registry
from geerpc.xclient.registry_reply import ReplyReader

HOSTILE = ["tcp@0:1", "tcp@2130706433:80", "tcp@127.1:80", "tcp@0x7f.0.0.1:80", "tcp@0177.0.0.1:80",
           "tcp@[fe80::1%eth0]:1", "http@017700000001:80"]
FINE = ["tcp@10.0.0.5:9000", "tcp@127.0.0.1:9000", "tcp@[::1]:9000", "tcp@node-3.example:9000",
        "tcp@0.0.0.0:9000", "http@10.0.0.5:80"]


@pytest.mark.parametrize("address", HOSTILE)
def test_numeric_tricks_and_scope_ids_are_refused_even_from_this_host(address):
    with pytest.raises(ValueError, match="dotted IPv4|scope id"):
        check_announced(parse_address(address), from_local_peer=True)


@pytest.mark.parametrize("address", FINE)
def test_plain_addresses_are_announced_from_anywhere(address):
    check_announced(parse_address(address), from_local_peer=False)


def test_unix_sockets_only_from_a_peer_on_the_same_host():
    docker = parse_address("unix@/var/run/docker.sock")
    check_announced(docker, from_local_peer=True)
    with pytest.raises(ValueError, match="same host|own host"):
        check_announced(docker, from_local_peer=False)


@pytest.mark.parametrize(("host", "local"), [
    ("127.0.0.1", True), ("127.4.5.6", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("", True), (None, True), ("10.0.0.5", False), ("192.0.2.1", False), ("example.com", False),
    ("::ffff:10.0.0.5", False),
])
def test_which_peers_are_on_this_host(host, local):
    assert is_local_host(host) is local


@pytest.fixture
async def registry_url():
    registry = Registry()
    url = await registry.start("127.0.0.1", 0)
    try:
        yield url
    finally:
        await registry.stop()


@pytest.mark.parametrize("address", HOSTILE)
async def test_the_registry_refuses_to_list_them(registry_url, address):
    async with aiohttp.ClientSession() as http:
        async with http.post(registry_url, headers={"X-Geerpc-Server": address}) as response:
            assert response.status == 400
            assert "X-Geerpc-Server" in await response.text()
        async with http.get(registry_url) as response:
            assert response.headers["X-Geerpc-Servers"] == ""


async def test_the_registry_takes_unix_sockets_from_its_own_host(registry_url):
    async with aiohttp.ClientSession() as http:
        async with http.post(registry_url, headers={"X-Geerpc-Server": "unix@/tmp/geerpc.sock"}) as response:
            assert response.status == 200  # the test's peer is 127.0.0.1
        async with http.get(registry_url) as response:
            assert response.headers["X-Geerpc-Servers"] == "unix@/tmp/geerpc.sock"


def test_discovery_drops_what_the_registry_should_not_have_listed():
    header = {"X-Geerpc-Servers": "tcp@10.0.0.5:9000,unix@/var/run/docker.sock,tcp@2130706433:80"}
    remote = ReplyReader("http://192.0.2.10:9999/_geerpc_/registry").read("text/plain", header, b"", 0.0)
    assert list(remote.servers) == ["tcp@10.0.0.5:9000"]
    local = ReplyReader("http://127.0.0.1:9999/_geerpc_/registry").read("text/plain", header, b"", 0.0)
    assert list(local.servers) == ["tcp@10.0.0.5:9000", "unix@/var/run/docker.sock"]


async def _park(session: aiohttp.ClientSession, url: str, index: str) -> aiohttp.ClientResponse:
    return await session.get(url, params={"index": index, "wait": "30"})


async def test_one_peer_cannot_take_every_watch_slot():
    from conftest import eventually

    registry = Registry(max_watchers=8, max_watchers_per_peer=2)
    url = await registry.start("127.0.0.1", 0)
    attacker = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0)))
    watcher = aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.3", 0)))
    parked = []
    try:
        async with watcher.get(url) as first:
            index = first.headers["X-Geerpc-Index"]
        parked = [asyncio.ensure_future(_park(attacker, url, index)) for _ in range(2)]
        await eventually(lambda: registry.watchers == 2, what="the attacker's two watches parked")
        async with asyncio.timeout(2):  # refused at once, not parked
            async with attacker.get(url, params={"index": index, "wait": "30"}) as refused:
                assert refused.status == 429 and refused.headers["Retry-After"] == "1"
                assert "127.0.0.2" in await refused.text()
        # Another peer still watches, and hears of a change at once.
        real = asyncio.ensure_future(_park(watcher, url, index))
        await eventually(lambda: registry.watchers == 3, what="the real watcher parked")
        async with watcher.post(url, headers={"X-Geerpc-Server": "tcp@10.0.0.5:9000"}) as posted:
            assert posted.status == 200
        async with asyncio.timeout(2):
            response = await real
        assert response.status == 200 and response.headers["X-Geerpc-Servers"] == "tcp@10.0.0.5:9000"
        response.release()
    finally:
        for task in parked:
            task.cancel()
        await asyncio.gather(*parked, return_exceptions=True)
        await registry.stop()
        await attacker.close()
        await watcher.close()


def test_watch_caps_are_checked():
    with pytest.raises(ValueError, match="max_watchers_per_peer"):
        Registry(max_watchers_per_peer=0)
    assert Registry(max_watchers=1024).max_watchers_per_peer == 64
    assert Registry(max_watchers=100).max_watchers_per_peer == 16
    assert Registry(max_watchers=2).max_watchers_per_peer == 2
