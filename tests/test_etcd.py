"""The etcd backend: URL parsing, registration with a lease, discovery by watch.

URL tests need nothing; the rest run against a real etcd started for the session
(see ``etcd_server.py``), and skip without one unless ``GEERPC_REQUIRE_ETCD=1``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from conftest import eventually
from etcd_server import EtcdProcess, etcd_binary, etcd_required, free_port

from geerpc.errors import NoServerAvailable, RegistryError
from geerpc.registry.etcd import EtcdClients, EtcdURL, parse_etcd_url, register
from geerpc.registry.etcd_gateway import EtcdEndpoint, prefix_end
from geerpc.xclient.etcd_discovery import EtcdDiscovery
from geerpc.xclient.selection import SelectMode

ROOT = Path(__file__).resolve().parent.parent
A1, A2, A3 = "tcp@127.0.0.1:9001", "tcp@127.0.0.1:9002", "tcp@127.0.0.1:9003"


# ----------------------------------------------------------------- URL parsing


@pytest.mark.parametrize(
    ("url", "endpoints", "prefix", "ttl"),
    [
        ("etcd://127.0.0.1:2379/geerpc", (("127.0.0.1", 2379),), "/geerpc", 10),
        ("etcd://h1:2379,h2:2380/geerpc?ttl=3", (("h1", 2379), ("h2", 2380)), "/geerpc", 3),
        ("etcd://localhost", (("localhost", 2379),), "/geerpc", 10),
        ("etcd://h/", (("h", 2379),), "/geerpc", 10),
        ("etcd://h/a/b/", (("h", 2379),), "/a/b", 10),
        ("etcd://[::1]:2379,[::2]/x", (("::1", 2379), ("::2", 2379)), "/x", 10),
        ("ETCD://h:1/x?ttl=60", (("h", 1),), "/x", 60),
    ],
)
def test_parse_etcd_url(url: str, endpoints: tuple[tuple[str, int], ...], prefix: str, ttl: int) -> None:
    assert parse_etcd_url(url) == EtcdURL(endpoints, prefix, ttl)


@pytest.mark.parametrize(
    ("url", "tls", "username", "password"),
    [
        ("etcd://h/x", False, None, None),
        ("etcds://h/x", True, None, None),
        ("ETCDS://h/x?ssl=1", True, None, None),
        ("etcd://h/x?ssl=1&ttl=3", True, None, None),
        ("etcd://h/x?ssl=0", False, None, None),
        ("etcd://geerpc:s3cret@h1,h2/x", False, "geerpc", "s3cret"),
        ("etcds://geerpc@h/x", True, "geerpc", None),
        ("etcd://us%40er:p%3Aw%2Fd%40@h/x", False, "us@er", "p:w/d@"),
        ("etcd://u:@h/x", False, "u", ""),
    ],
)
def test_parse_tls_and_credentials(url: str, tls: bool, username: str | None, password: str | None) -> None:
    config = parse_etcd_url(url)
    assert (config.tls, config.username, config.password) == (tls, username, password)
    assert "@" not in config.describe()
    if password:
        assert password not in repr(config)


def test_prefix_end_covers_the_prefix() -> None:
    assert prefix_end(b"/geerpc/") == b"/geerpc0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff") == b"\0"


def test_keys_live_under_the_prefix() -> None:
    config = parse_etcd_url("etcd://h:2379/geerpc")
    assert config.key("tcp@10.0.0.5:9000") == b"/geerpc/tcp@10.0.0.5:9000"
    assert config.key_prefix == b"/geerpc/"
    assert config.describe() == "h:2379"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://h:2379/geerpc", "want etcd://"),
        ("h:2379/geerpc", "want etcd://"),
        ("etcd:///geerpc", "no endpoints"),
        ("etcd://h1:2379,,h2:2379/x", "empty endpoint"),
        ("etcd://h:abc/x", "bad port"),
        ("etcd://h:0/x", "bad port"),
        ("etcd://h:65536/x", "bad port"),
        ("etcd://h:²/x", "bad port"),
        ("etcd://h:/x", "bad port"),
        ("etcd://bad_host!/x", "bad host"),
        ("etcd://::1/x", "brackets"),
        (":pw@h/x", "want etcd://"),
        ("etcd://:pw@h/x", "password without a user name"),
        ("etcds://h/x?ssl=0", "contradicts"),
        ("etcd://h/x?ssl=yes", "ssl must be 1"),
        ("etcd://h/x?ssl=1&ssl=1", "twice"),
        ("etcd://h/x?ttl=0", "ttl must be a positive"),
        ("etcd://h/x?ttl=-5", "ttl must be a positive"),
        ("etcd://h/x?ttl=1.5", "ttl must be a positive"),
        ("etcd://h/x?ttl=²", "ttl must be a positive"),
        ("etcd://h/x?ttl=", "ttl must be a positive"),
        ("etcd://h/x?ttl=1&ttl=2", "twice"),
        ("etcd://h/x?tll=5", "unknown parameter"),
        ("etcd://h/x#frag", "fragment"),
        ("etcd://h/a b", "spaces"),
    ],
)
def test_parse_etcd_url_rejects(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_etcd_url(url)


def test_a_bad_url_never_shows_its_password() -> None:
    with pytest.raises(ValueError, match="bad port") as caught:
        parse_etcd_url("etcd://geerpc:hunter2@h:99999/x")
    assert "hunter2" not in str(caught.value)


def test_credentials_come_from_arguments_url_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from geerpc.registry.etcd_client import credentials

    monkeypatch.delenv("GEERPC_ETCD_PASSWORD", raising=False)
    url = parse_etcd_url("etcd://u:from-url@h/x")
    assert credentials(url, None, None) == ("u", "from-url")
    assert credentials(url, None, "given") == ("u", "given")
    assert credentials(url, "other", "given") == ("other", "given")
    bare = parse_etcd_url("etcd://h/x")
    assert credentials(bare, None, None) == (None, None)
    with pytest.raises(ValueError, match="GEERPC_ETCD_PASSWORD"):
        credentials(bare, "u", None)
    with pytest.raises(ValueError, match="needs a user name"):
        credentials(bare, None, "pw")
    monkeypatch.setenv("GEERPC_ETCD_PASSWORD", "from-env")
    assert credentials(bare, "u", None) == ("u", "from-env")
    assert credentials(parse_etcd_url("etcd://u@h/x"), None, None) == ("u", "from-env")


async def test_register_rejects_bad_arguments_before_any_io() -> None:
    url = "etcd://127.0.0.1:1/geerpc"
    with pytest.raises(ValueError, match="address"):
        await register(url, "nonsense@x", ["Arith"])
    with pytest.raises(ValueError, match="one string"):
        await register(url, A1, "Arith")
    with pytest.raises(ValueError, match="JSON"):
        await register(url, A1, ["Arith"], {"when": object()})


# ----------------------------------------------------------------- a real etcd


def _missing(problem: str) -> None:
    if etcd_required():
        pytest.fail(f"{problem}, and GEERPC_REQUIRE_ETCD=1 requires the etcd tests to run")
    pytest.skip(problem)


def _etcd_or_skip() -> str:
    """The etcd binary; skips (or fails, with GEERPC_REQUIRE_ETCD=1) without it."""
    binary = etcd_binary()
    if binary is None:
        _missing("no etcd binary on PATH (install etcd-server)")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdProcess]:
    process = EtcdProcess(_etcd_or_skip())
    process.start()
    yield process
    process.close()


@pytest.fixture
def prefix() -> str:
    """A prefix of its own for each test, so tests sharing etcd never see each other."""
    return f"geerpc-test-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def plain_client(etcd: EtcdProcess) -> AsyncIterator[EtcdEndpoint]:
    """The gateway of ``etcd`` with no failover and no login, to look at it and to meddle with it."""
    clients = EtcdClients([("127.0.0.1", etcd.client_port)], call_timeout=5)
    try:
        yield clients.client()
    finally:
        await clients.close()


@pytest.fixture
async def kv(etcd: EtcdProcess) -> AsyncIterator[EtcdEndpoint]:
    async with plain_client(etcd) as client:
        yield client


async def test_register_writes_one_leased_key(etcd: EtcdProcess, prefix: str, kv) -> None:
    reg = await register(etcd.url(prefix, ttl=5), A1, ["Arith", "Echo"], {"zone": "a"})
    try:
        got = await kv.get(f"/{prefix}/{A1}".encode())
        assert got is not None
        assert json.loads(got.value) == {"address": A1, "services": ["Arith", "Echo"], "metadata": {"zone": "a"}}
        assert got.lease == reg.lease_id != 0
        _, granted = await kv.time_to_live(reg.lease_id)
        assert granted == 5
    finally:
        await reg.stop()


async def test_register_and_discover(etcd: EtcdProcess, prefix: str) -> None:
    async with await register(etcd.url(prefix), A1, ["Arith"]), \
            await register(etcd.url(prefix), A2, ["Echo"]), \
            await register(etcd.url(prefix), A3, None), \
            EtcdDiscovery(etcd.url(prefix)) as discovery:
        assert await discovery.get_all() == [A1, A2, A3]
        assert await discovery.get_all("Arith") == [A1, A3]  # A3 did not say: it may offer anything
        assert await discovery.get_all("Echo") == [A2, A3]
        assert await discovery.get(SelectMode.ROUND_ROBIN, "Arith") in (A1, A3)
        assert discovery.services()[A1] == frozenset({"Arith"})
        assert discovery.services()[A3] is None
        assert discovery.version >= 1


class EtcdArith:
    async def add(self, a: int, b: int) -> int:
        return a + b


async def test_server_announces_itself_in_etcd(etcd: EtcdProcess, prefix: str) -> None:
    import geerpc

    async with EtcdDiscovery(etcd.url(prefix)) as discovery:
        server = geerpc.Server()
        server.register(EtcdArith())
        address = await server.start("127.0.0.1", 0, registry=etcd.url(prefix, ttl=5))
        try:
            await eventually(lambda: _has(discovery, address), 1, "server listed")
            assert discovery.services()[address] == frozenset({"EtcdArith"})
        finally:
            await server.stop()
        await eventually(lambda: _lacks(discovery, address), 1, "server gone once stopped")


async def test_stop_removes_the_key_at_once(etcd: EtcdProcess, prefix: str, kv) -> None:
    discovery = EtcdDiscovery(etcd.url(prefix))
    try:
        reg = await register(etcd.url(prefix, ttl=30), A1, ["Arith"])
        await eventually(lambda: _has(discovery, A1), 2, "registration seen")
        await reg.stop()
        assert await kv.get(f"/{prefix}/{A1}".encode()) is None
        assert not reg.running
        await reg.stop()  # idempotent
        await eventually(lambda: _lacks(discovery, A1), 1, "deregistration seen")
    finally:
        await discovery.close()


async def test_stop_after_the_lease_vanished_is_quiet(etcd: EtcdProcess, prefix: str, kv,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="geerpc.registry.etcd")
    reg = await register(etcd.url(prefix, ttl=30), A1, ["Arith"])  # next renewal in 10 s
    await kv.revoke(reg.lease_id)
    await reg.stop()
    assert "deregistered" in caplog.text
    assert "could not revoke" not in caplog.text


_KILLABLE_SERVER = """
import asyncio, sys
from geerpc.registry.etcd import register

async def main():
    await register(sys.argv[1], sys.argv[2], ["Arith"])
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_key_expires_after_the_server_is_killed(etcd: EtcdProcess, prefix: str, kv) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _KILLABLE_SERVER, etcd.url(prefix, ttl=1), A1,
        stdout=asyncio.subprocess.PIPE, env=env)
    try:
        async with asyncio.timeout(15):
            line = await child.stdout.readline()
        assert line == b"registered\n"
        key = f"/{prefix}/{A1}".encode()
        assert await kv.get(key) is not None
    finally:
        child.kill()  # SIGKILL: no chance to revoke the lease
        await child.communicate()
    assert await kv.get(key) is not None  # only the lease's expiry removes it
    waited = await eventually(lambda: _gone(kv, key), 4, "key expired with its lease")
    assert waited < 3


async def test_keep_alive_grants_a_new_lease_when_the_old_one_is_revoked(
        etcd: EtcdProcess, prefix: str, kv) -> None:
    async with await register(etcd.url(prefix, ttl=1), A1, ["Arith"]) as reg:
        old = reg.lease_id
        key = f"/{prefix}/{A1}".encode()
        await kv.revoke(old)  # as if it expired while etcd was out of reach
        assert await kv.get(key) is None

        await eventually(lambda: _leased_anew(kv, key, reg.lease_id, old), 3,
                         "key written again under a new lease")
        assert reg.running


async def test_watch_delivers_a_new_server_within_a_second(etcd: EtcdProcess, prefix: str) -> None:
    async with EtcdDiscovery(etcd.url(prefix)) as discovery:
        assert await discovery.get_all() == []
        async with await register(etcd.url(prefix), A1, ["Arith"]):
            assert await eventually(lambda: _has(discovery, A1), 1, "new server seen") < 1


async def test_bad_values_are_skipped(etcd: EtcdProcess, prefix: str, kv,
                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="geerpc.xclient.etcd_discovery")
    good = json.dumps({"address": A1, "services": ["Arith"]}).encode()
    await kv.put(f"/{prefix}/junk".encode(), b"not json {")
    await kv.put(f"/{prefix}/list".encode(), b"[1, 2]")
    await kv.put(f"/{prefix}/bad-address".encode(), json.dumps({"address": "nope@x"}).encode())
    await kv.put(f"/{prefix}/{A1}".encode(), good)
    try:
        async with EtcdDiscovery(etcd.url(prefix)) as discovery:
            assert await discovery.get_all() == [A1]
            assert caplog.text.count("skipping etcd key") == 3
            # The same through the watch, and the loop lives on.
            await kv.put(f"/{prefix}/binary".encode(), b"\xff\xfe")
            await kv.put(f"/{prefix}/{A2}".encode(), json.dumps({"address": A2, "services": 7}).encode())
            await kv.put(f"/{prefix}/{A3}".encode(), json.dumps({"address": A3}).encode())
            await eventually(lambda: _has(discovery, A3), 1, "good server after bad ones")
            assert await discovery.get_all() == [A1, A3]
            assert caplog.text.count("skipping etcd key") == 5
            # A good key overwritten with junk is no longer a server.
            await kv.put(f"/{prefix}/{A1}".encode(), b"junk")
            await eventually(lambda: _lacks(discovery, A1), 1, "overwritten key dropped")
    finally:
        await kv.delete_prefix(f"/{prefix}/".encode())


async def test_unreachable_etcd_is_a_registry_error_naming_it() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(RegistryError, match=endpoint):
        await register(f"etcd://{endpoint}/geerpc", A1, ["Arith"])
    assert 4 < time.monotonic() - start < 7  # retried for its 5 s, no longer


async def test_failover_skips_a_dead_first_endpoint(etcd: EtcdProcess, prefix: str) -> None:
    url = f"etcd://127.0.0.1:{free_port()},{etcd.endpoint}/{prefix}"
    async with await register(url, A1, ["Arith"]), EtcdDiscovery(url) as discovery:
        assert await discovery.get_all() == [A1]


async def test_discovery_without_etcd_serves_nothing_after_a_bounded_wait() -> None:
    async with EtcdDiscovery(f"etcd://127.0.0.1:{free_port()}/geerpc", first_list_timeout=0.3) as discovery:
        start = time.monotonic()
        assert await discovery.get_all() == []
        assert 0.25 < time.monotonic() - start < 2
        with pytest.raises(NoServerAvailable, match="not listed yet"):
            await discovery.get(SelectMode.RANDOM)  # no second wait
        with pytest.raises(RegistryError, match="127.0.0.1"):
            await discovery.refresh()


async def test_refresh_and_close(etcd: EtcdProcess, prefix: str) -> None:
    discovery = EtcdDiscovery(etcd.url(prefix))
    async with await register(etcd.url(prefix), A1, ["Arith"]):
        await discovery.refresh()
        assert await discovery.get_all() == [A1]
    await discovery.close()
    await discovery.close()  # idempotent
    assert await discovery.get_all() in ([A1], [])  # the last list stays readable
    with pytest.raises(RegistryError, match="closed"):
        await discovery.refresh()


@pytest.fixture
async def own_etcd() -> AsyncIterator[EtcdProcess]:
    """An etcd of the test's own: restarting or wiping the shared one would disturb others."""
    process = EtcdProcess(_etcd_or_skip())
    await asyncio.to_thread(process.start)
    try:
        yield process
    finally:
        await asyncio.to_thread(process.close)


async def test_both_sides_recover_when_etcd_restarts(own_etcd: EtcdProcess, prefix: str,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="geerpc")
    own = own_etcd
    discovery = EtcdDiscovery(own.url(prefix))
    reg = await register(own.url(prefix, ttl=2), A1, ["Arith"])
    try:
        await eventually(lambda: _has(discovery, A1), 2, "registration seen")
        await asyncio.to_thread(own.stop)
        # Keep etcd away until the keep-alive has missed a renewal.
        await eventually(lambda: _logged(caplog, f"etcd registration of {A1}: no etcd endpoint"), 3,
                         "keep-alive noticed the outage")
        assert await discovery.get_all() == [A1]  # the last list is served meanwhile
        await asyncio.to_thread(own.start)
        await eventually(lambda: _logged(caplog, f"etcd registration of {A1}: etcd answers again"), 3,
                         "keep-alive renewed after the restart")

        # The keep-alive lives on: revoke its lease and it writes the key again.
        async with plain_client(own) as kv:
            old = reg.lease_id
            await kv.revoke(old)
            await eventually(lambda: _leased_anew(kv, f"/{prefix}/{A1}".encode(), reg.lease_id, old), 5,
                             "keep-alive re-registered after the restart")
        # The watch lives on: a new server shows up.
        async with await register(own.url(prefix), A2, ["Arith"]):
            await eventually(lambda: _has(discovery, A2), 5, "watch resumed after the restart")
        await eventually(lambda: _lacks(discovery, A2), 2, "deregistration seen")
        assert await discovery.get_all() == [A1]
    finally:
        await reg.stop()
        await discovery.close()


async def test_discovery_follows_an_etcd_that_lost_its_data(own_etcd: EtcdProcess, prefix: str) -> None:
    own = own_etcd
    async with plain_client(own) as kv:
        for i in range(300):  # revisions well past what the fresh etcd will reach
            await kv.put(f"/{prefix}-other/{i}".encode(), b"x")
    discovery = EtcdDiscovery(own.url(prefix))
    reg = await register(own.url(prefix, ttl=2), A1, ["Arith"])
    try:
        await eventually(lambda: _has(discovery, A1), 2, "registration seen")
        await asyncio.to_thread(own.wipe)  # same port, empty data: revisions start at 1 again
        # The keep-alive finds its lease gone and writes its key again; discovery
        # must take the new cluster's list although its revisions are lower.
        async with await register(own.url(prefix), A2, ["Arith"]):
            await eventually(lambda: _has(discovery, A2), 10, "a server registered after the wipe seen")
            await eventually(lambda: _has(discovery, A1), 10, "the re-registered server kept")
        await eventually(lambda: _lacks(discovery, A2), 2, "deregistration after the wipe seen")
        assert await discovery.get_all() == [A1]
    finally:
        await reg.stop()
        await discovery.close()


async def _leased_anew(kv, key: bytes, lease_id: int, old: int) -> bool:
    got = await kv.get(key)
    return got is not None and got.lease == lease_id != old


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def _has(discovery: EtcdDiscovery, address: str) -> bool:
    return address in await discovery.get_all()


async def _lacks(discovery: EtcdDiscovery, address: str) -> bool:
    return address not in await discovery.get_all()


async def _gone(kv, key: bytes) -> bool:
    return await kv.get(key) is None


class Named:
    def __init__(self, name: str) -> None:
        self.name = name
        self.cancelled = asyncio.Event()

    async def whoami(self) -> str:
        return self.name

    async def hang(self) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise


async def test_xclient_call_and_broadcast_over_etcd(etcd: EtcdProcess, prefix: str) -> None:
    import geerpc
    from geerpc.xclient import XClient

    servers, nodes = [], []
    try:
        for name in ("a", "b", "c"):
            node = Named(name)
            server = geerpc.Server()
            server.register(node, name="Named")
            await server.start("127.0.0.1", 0, registry=etcd.url(prefix, ttl=5))
            servers.append(server)
            nodes.append(node)
        async with XClient(EtcdDiscovery(etcd.url(prefix)), SelectMode.ROUND_ROBIN) as xc:
            await eventually(lambda: _count(xc.discovery, 3), 3, "three servers listed")
            assert sorted([await xc.call("Named.whoami", timeout=2) for _ in range(3)]) == ["a", "b", "c"]
            assert await xc.broadcast("Named.whoami", timeout=2) in {"a", "b", "c"}
            with pytest.raises(geerpc.CallTimeout):
                await xc.broadcast("Named.hang", timeout=0.2)
            for node in nodes:  # the broadcast's cancellation reached every server
                await asyncio.wait_for(node.cancelled.wait(), 2)
            stopped = servers.pop(0)
            await stopped.stop()  # revokes its lease: gone from the list within a second
            await eventually(lambda: _lacks(xc.discovery, stopped.address), 1, "stopped server unlisted")
            assert {await xc.call("Named.whoami", timeout=2) for _ in range(4)} == {"b", "c"}
    finally:
        for server in servers:
            await server.stop()


async def _count(discovery: EtcdDiscovery, n: int) -> bool:
    return len(await discovery.get_all()) == n
