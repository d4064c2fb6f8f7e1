"""The ZooKeeper backend: URL parsing, ephemeral nodes, discovery by watches, the CLI.

URL tests need nothing; the rest run against a real standalone ZooKeeper (Debian's
``zookeeper`` jars, started by ``zk_server.py`` on a free port with a temporary data
directory) and skip without one unless ``GEERPC_REQUIRE_ZOOKEEPER=1``. One ZooKeeper
serves the module; the tests that stop or wipe it have one of their own.

Hostile and faulty conditions covered here, beside HOSTILE.md's rows 27-29:

| # | Input / event | Expected safe behaviour |
|---|---|---|
| Z1 | A malformed ``zk://`` URL: no hosts, bad port, bad or absurd session_timeout, unknown or repeated parameter, a user name, a path into /zookeeper | ``ValueError`` naming the problem, before any I/O |
| Z2 | Nodes under the path holding junk: not JSON, not an object, no or a bad address, services not a list, undecodable bytes | skipped with one warning each; the rest of the list is served; discovery lives on |
| Z3 | A server SIGKILLed | its node goes when its session expires (session_timeout), and every discovery drops it |
| Z4 | ZooKeeper stopped, restarted, or restarted with its data lost | discoveries serve the last list meanwhile; servers keep or re-create their node, discoveries pick up again with no user action |
| Z5 | A session expired while the connection was away | kazoo opens a new session; the node is created again in it |
| Z6 | A host that accepts and drops every connection | reconnects back off (a handful a second at most), never spin |
| Z7 | A node of ours deleted by hand | the registration creates it again |
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from conftest import PYTHON, ROOT, eventually, subprocess_env
from zk_server import ZooKeeperProcess, free_port, zookeeper_command, zookeeper_required

from geerpc.errors import NoServerAvailable, RegistryError
from geerpc.registry.zk_client import ZkURL, node_name, parse_zk_url
from geerpc.registry.zookeeper import register
from geerpc.xclient.selection import SelectMode
from geerpc.xclient.zookeeper_discovery import ZooKeeperDiscovery

A1, A2, A3 = "tcp@127.0.0.1:9001", "tcp@127.0.0.1:9002", "tcp@127.0.0.1:9003"


# ----------------------------------------------------------------- URL parsing


@pytest.mark.parametrize(
    ("url", "hosts", "path", "timeout"),
    [
        ("zk://127.0.0.1:2181/geerpc", (("127.0.0.1", 2181),), "/geerpc", 10.0),
        ("zk://127.0.0.1:2181,127.0.0.2:2181/geerpc", (("127.0.0.1", 2181), ("127.0.0.2", 2181)), "/geerpc", 10.0),
        ("zk://h1,h2:2182/a/b/?session_timeout=2.5", (("h1", 2181), ("h2", 2182)), "/a/b", 2.5),
        ("zk://localhost", (("localhost", 2181),), "/geerpc", 10.0),
        ("zk://h/", (("h", 2181),), "/geerpc", 10.0),
        ("ZK://[::1]:2181,[::2]/x?session_timeout=30", (("::1", 2181), ("::2", 2181)), "/x", 30.0),
    ],
)
def test_parse_zk_url(url: str, hosts: tuple[tuple[str, int], ...], path: str, timeout: float) -> None:
    assert parse_zk_url(url) == ZkURL(hosts, path, timeout)


def test_connect_string_and_nodes() -> None:
    config = parse_zk_url("zk://h1:2181,[::1]:2182/geerpc")
    assert config.connect_string() == "h1:2181,[::1]:2182"
    assert config.node("tcp@10.0.0.5:9000") == "/geerpc/tcp@10.0.0.5:9000"
    # A node name holds no "/": unix@ addresses are %-escaped, and so is "%" itself.
    assert node_name("unix@/run/x%y.sock") == "unix@%2Frun%2Fx%25y.sock"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("etcd://h:2181/x", "want zk://"),
        ("h:2181/geerpc", "want zk://"),
        ("zk:///geerpc", "no hosts"),
        ("zk://?session_timeout=1", "no hosts"),
        ("zk://h1:2181,,h2/x", "empty host"),
        ("zk://h:abc/x", "bad port"),
        ("zk://h:0/x", "bad port"),
        ("zk://h:65536/x", "bad port"),
        ("zk://h:/x", "bad port"),
        ("zk://h:²/x", "bad port"),
        ("zk://bad_host!/x", "bad host"),
        ("zk://::1/x", "brackets"),
        ("zk://user:pw@h/x", "not supported"),
        ("zk://h/x?session_timeout=0", "session_timeout"),
        ("zk://h/x?session_timeout=-1", "session_timeout"),
        ("zk://h/x?session_timeout=abc", "session_timeout"),
        ("zk://h/x?session_timeout=nan", "session_timeout"),
        ("zk://h/x?session_timeout=inf", "session_timeout"),
        ("zk://h/x?session_timeout=1e9", "session_timeout"),
        ("zk://h/x?session_timeout=", "session_timeout"),
        ("zk://h/x?session_timeout=1&session_timeout=2", "twice"),
        ("zk://h/x?ttl=5", "unknown parameter 'ttl'"),
        ("zk://h/x?session_timeout", "malformed query"),
        ("zk://h/x#frag", "fragment"),
        ("zk://h/a/../b", "bad path segment"),
        ("zk://h/a b", "bad path segment"),
        ("zk://h/zookeeper/quota", "ZooKeeper's own"),
    ],
)
def test_parse_zk_url_rejects(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_zk_url(url)


def test_registry_urls_map_zk_to_zookeeper_discovery() -> None:
    from geerpc.xclient import ZooKeeperDiscovery as exported
    from geerpc.xclient.urls import WANT, discovery_for, is_registry_url

    assert exported is ZooKeeperDiscovery
    assert is_registry_url("zk://h/x") and "zk://" in WANT
    assert isinstance(discovery_for("zk://127.0.0.1:1/x"), ZooKeeperDiscovery)
    assert isinstance(discovery_for("zk://127.0.0.1:1/x", once=True, timeout=0.5), ZooKeeperDiscovery)
    with pytest.raises(ValueError, match="bad port"):
        discovery_for("zk://h:99999/x")
    with pytest.raises(ValueError, match="ZooKeeper is reached without TLS"):
        discovery_for("zk://127.0.0.1:1/x", ssl=ssl.create_default_context())


def test_kazoo_is_imported_only_for_a_session() -> None:
    code = ("import sys, geerpc.xclient, geerpc.registry.heartbeat\n"
            "from geerpc.xclient import ZooKeeperDiscovery\n"
            "ZooKeeperDiscovery('zk://127.0.0.1:2181/x')\n"
            "print('kazoo' in sys.modules)")
    out = subprocess.run([PYTHON, "-c", code], check=False, env=subprocess_env(), capture_output=True,
                         text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


async def test_register_rejects_bad_arguments_before_any_io() -> None:
    url = "zk://127.0.0.1:1/geerpc"
    with pytest.raises(ValueError, match="address"):
        await register(url, "nonsense@x", ["Arith"])
    with pytest.raises(ValueError, match="one string"):
        await register(url, A1, "Arith")
    with pytest.raises(ValueError, match="JSON"):
        await register(url, A1, ["Arith"], {"when": object()})
    with pytest.raises(ValueError, match="session_timeout"):
        await register("zk://127.0.0.1:1/geerpc?session_timeout=0", A1, ["Arith"])


async def test_without_kazoo_a_zk_url_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "kazoo.client", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'geerpc\[zookeeper\]'"):
        await register("zk://127.0.0.1:1/x", A1, ["Arith"])
    async with ZooKeeperDiscovery("zk://127.0.0.1:1/x") as discovery:
        with pytest.raises(ImportError, match="need kazoo"):
            await discovery.get_all()


async def test_announce_dispatches_zk_urls() -> None:
    from geerpc.registry.heartbeat import announce

    with pytest.raises(ValueError, match="unknown parameter"):
        await announce("zk://127.0.0.1:1/x?ttl=1", A1, ["Arith"])
    with pytest.raises(ValueError, match="zk://"):
        await announce("mailto:x", A1, ["Arith"])


# ----------------------------------------------------------------- a real ZooKeeper


def _command_or_skip() -> list[str]:
    command = zookeeper_command()
    if command is None:
        problem = "no ZooKeeper (install zookeeperd: it brings java and /usr/share/java/zookeeper.jar)"
        if zookeeper_required():
            pytest.fail(f"{problem}, and GEERPC_REQUIRE_ZOOKEEPER=1 requires the ZooKeeper tests to run")
        pytest.skip(problem)
    try:
        import kazoo  # noqa: F401
    except ImportError:
        if zookeeper_required():
            pytest.fail("kazoo is missing (pip install -e '.[zookeeper]'), and GEERPC_REQUIRE_ZOOKEEPER=1")
        pytest.skip("kazoo is not installed (the zookeeper extra)")
    assert command is not None
    return command


@pytest.fixture(scope="module")
def zk() -> Iterator[ZooKeeperProcess]:
    process = ZooKeeperProcess(_command_or_skip())
    process.start()
    yield process
    process.close()


@pytest.fixture
async def own_zk() -> AsyncIterator[ZooKeeperProcess]:
    """A ZooKeeper of the test's own: stopping the shared one would disturb others."""
    process = ZooKeeperProcess(_command_or_skip())
    await asyncio.to_thread(process.start)
    try:
        yield process
    finally:
        await asyncio.to_thread(process.close)


@pytest.fixture
def path() -> str:
    """A path of its own for each test, so tests sharing ZooKeeper never see each other."""
    return f"geerpc-test-{uuid.uuid4().hex[:10]}"


class Raw:
    """A plain kazoo client, to look at ZooKeeper and to meddle with it."""

    def __init__(self, endpoint: str) -> None:
        from kazoo.client import KazooClient

        self.client: Any = KazooClient(endpoint, timeout=5)
        self.client.start(10)

    def get(self, node: str) -> tuple[bytes, Any] | None:
        try:
            value, stat = self.client.get(node)
        except Exception as exc:  # NoNodeError
            if type(exc).__name__ == "NoNodeError":
                return None
            raise
        return value, stat

    def put(self, node: str, value: bytes) -> None:
        if self.client.exists(node):
            self.client.set(node, value)
        else:
            self.client.create(node, value, makepath=True)

    def expire(self, session: tuple[int, bytes], endpoint: str) -> None:
        """Expire ``session`` as ZooKeeper would: another client takes it over and closes it."""
        from kazoo.client import KazooClient

        thief = KazooClient(endpoint, timeout=5, client_id=session)
        thief.start(10)
        thief.stop()
        thief.close()

    def close(self) -> None:
        self.client.stop()
        self.client.close()


@pytest.fixture
async def raw(zk: ZooKeeperProcess) -> AsyncIterator[Raw]:
    client = await asyncio.to_thread(Raw, zk.endpoint)
    yield client
    await asyncio.to_thread(client.close)


async def _has(discovery: ZooKeeperDiscovery, address: str) -> bool:
    return address in await discovery.get_all()


async def _lacks(discovery: ZooKeeperDiscovery, address: str) -> bool:
    return address not in await discovery.get_all()


async def test_register_creates_one_ephemeral_node(zk: ZooKeeperProcess, path: str, raw: Raw) -> None:
    async with await register(zk.url(path, 5), A1, ["Echo", "Arith"], {"zone": "a"}) as reg:
        got = await asyncio.to_thread(raw.get, f"/{path}/{A1}")
        assert got is not None
        value, stat = got
        assert json.loads(value) == {"address": A1, "services": ["Arith", "Echo"], "metadata": {"zone": "a"}}
        assert stat.ephemeralOwner == reg.session_id != 0
        assert await asyncio.to_thread(raw.client.get_children, f"/{path}") == [A1]
    assert await asyncio.to_thread(raw.get, f"/{path}/{A1}") is None  # stop() deleted it at once
    await reg.stop()  # idempotent


async def test_register_and_discover_with_services(zk: ZooKeeperProcess, path: str) -> None:
    async with await register(zk.url(path), A1, ["Arith"]), \
            await register(zk.url(path), A2, ["Echo"]), \
            await register(zk.url(path), A3, None), \
            ZooKeeperDiscovery(zk.url(path)) as discovery:
        assert await discovery.get_all() == [A1, A2, A3]
        assert await discovery.get_all("Arith") == [A1, A3]  # A3 did not say: it may offer anything
        assert await discovery.get_all("Echo") == [A2, A3]
        assert await discovery.get(SelectMode.ROUND_ROBIN, "Arith") in (A1, A3)
        assert discovery.services()[A1] == frozenset({"Arith"})
        assert discovery.services()[A3] is None
        await discovery.refresh()
        assert await discovery.get_all() == [A1, A2, A3]


async def test_unix_addresses_survive_the_node_name(zk: ZooKeeperProcess, path: str, tmp_path) -> None:
    address = f"unix@{tmp_path}/x.sock"
    async with await register(zk.url(path), address, ["Arith"]), ZooKeeperDiscovery(zk.url(path)) as discovery:
        assert await discovery.get_all() == [address]


async def test_watch_applies_changes_within_a_second(zk: ZooKeeperProcess, path: str) -> None:
    async with ZooKeeperDiscovery(zk.url(path)) as discovery:
        assert await discovery.get_all() == []  # the path does not exist yet
        reg = await register(zk.url(path), A1, ["Arith"])
        try:
            assert await eventually(lambda: _has(discovery, A1), 1, "new server seen") < 1
            async with await register(zk.url(path), A2, ["Arith"]):
                assert await eventually(lambda: _has(discovery, A2), 1, "second server seen") < 1
            assert await eventually(lambda: _lacks(discovery, A2), 1, "stopped server dropped") < 1
        finally:
            await reg.stop()
        assert await eventually(lambda: _lacks(discovery, A1), 1, "last server dropped") < 1


class ZkArith:
    async def add(self, a: int, b: int) -> int:
        return a + b


async def test_server_announces_itself_and_stop_deletes_its_node(zk: ZooKeeperProcess, path: str,
                                                                raw: Raw) -> None:
    import geerpc

    async with ZooKeeperDiscovery(zk.url(path)) as discovery:
        server = geerpc.Server()
        server.register(ZkArith())
        address = await server.start("127.0.0.1", 0, registry=zk.url(path, 5))
        try:
            await eventually(lambda: _has(discovery, address), 1, "server listed")
            assert discovery.services()[address] == frozenset({"ZkArith"})
        finally:
            await server.stop()
        assert await asyncio.to_thread(raw.get, f"/{path}/{address}") is None
        await eventually(lambda: _lacks(discovery, address), 1, "server gone once stopped")


_KILLABLE_SERVER = """
import asyncio, sys
from geerpc.registry.zookeeper import register

async def main():
    await register(sys.argv[1], sys.argv[2], ["Arith"])
    print("registered", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_node_of_a_killed_server_goes_when_its_session_expires(zk: ZooKeeperProcess, path: str) -> None:
    async with ZooKeeperDiscovery(zk.url(path)) as discovery:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _KILLABLE_SERVER, zk.url(path, session_timeout=1), A1,
            stdout=asyncio.subprocess.PIPE, env=subprocess_env())
        try:
            async with asyncio.timeout(20):
                line = await child.stdout.readline()
            assert line == b"registered\n"
            await eventually(lambda: _has(discovery, A1), 1, "killable server listed")
        finally:
            child.kill()  # SIGKILL: no chance to delete its node
            await child.communicate()
        assert await discovery.get_all() == [A1]  # only the session's expiry removes it
        waited = await eventually(lambda: _lacks(discovery, A1), 4, "node gone with its session")
        assert waited < 3


async def test_bad_nodes_are_skipped_with_a_warning(zk: ZooKeeperProcess, path: str, raw: Raw,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="geerpc.xclient.zookeeper_discovery")
    good = json.dumps({"address": A1, "services": ["Arith"]}).encode()
    for name, value in [("junk", b"not json {"), ("list", b"[1, 2]"),
                        ("bad-address", json.dumps({"address": "nope@x"}).encode()), (A1, good)]:
        await asyncio.to_thread(raw.put, f"/{path}/{name}", value)
    async with ZooKeeperDiscovery(zk.url(path)) as discovery:
        assert await discovery.get_all() == [A1]
        assert caplog.text.count("skipping ZooKeeper node") == 3
        # The same through the watches, and the reader lives on.
        await asyncio.to_thread(raw.put, f"/{path}/binary", b"\xff\xfe")
        await asyncio.to_thread(raw.put, f"/{path}/{A2}", json.dumps({"address": A2, "services": 7}).encode())
        await asyncio.to_thread(raw.put, f"/{path}/{A3}", json.dumps({"address": A3}).encode())
        await eventually(lambda: _has(discovery, A3), 1, "good server after bad ones")
        assert await discovery.get_all() == [A1, A3]
        assert caplog.text.count("skipping ZooKeeper node") == 5
        # A good node overwritten with junk is no longer a server; a junk one mended is.
        await asyncio.to_thread(raw.put, f"/{path}/{A1}", b"junk")
        await eventually(lambda: _lacks(discovery, A1), 1, "overwritten node dropped")
        await asyncio.to_thread(raw.put, f"/{path}/{A2}", json.dumps({"address": A2}).encode())
        await eventually(lambda: _has(discovery, A2), 1, "mended node listed")


async def test_discovery_without_zookeeper_serves_nothing_after_a_bounded_wait() -> None:
    url = f"zk://127.0.0.1:{free_port()}/geerpc"
    async with ZooKeeperDiscovery(url, first_list_timeout=0.3) as discovery:
        start = time.monotonic()
        assert await discovery.get_all() == []
        assert 0.25 < time.monotonic() - start < 2
        with pytest.raises(NoServerAvailable, match="not listed yet"):
            await discovery.get(SelectMode.RANDOM)  # no second wait
        with pytest.raises(RegistryError, match="127.0.0.1"):
            await discovery.refresh()
    with pytest.raises(RegistryError, match="closed"):
        await discovery.refresh()


async def test_unreachable_zookeeper_is_a_registry_error_naming_it() -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(RegistryError, match=endpoint):
        await register(f"zk://{endpoint}/geerpc", A1, ["Arith"], timeout=1)
    assert 0.9 < time.monotonic() - start < 3


class Dropper:
    """A TCP listener that accepts every connection and closes it at once, counting them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


async def test_a_lost_connection_is_retried_with_backoff_never_in_a_spin() -> None:
    dropper = Dropper()
    try:
        async with ZooKeeperDiscovery(f"zk://127.0.0.1:{dropper.port}/geerpc", first_list_timeout=0.1) as d:
            assert await d.get_all() == []
            await eventually(lambda: dropper.accepted >= 2, 3, "reconnect attempts")
            first = time.monotonic()
            before = dropper.accepted
            await asyncio.sleep(2.0)  # a window to count attempts in, not a wait for readiness
            rate = (dropper.accepted - before) / (time.monotonic() - first)
        assert rate < 5, f"{rate:.1f} connection attempts a second"
    finally:
        await asyncio.to_thread(dropper.close)


async def test_a_node_deleted_by_hand_is_created_again(zk: ZooKeeperProcess, path: str, raw: Raw) -> None:
    async with await register(zk.url(path), A1, ["Arith"]) as reg, ZooKeeperDiscovery(zk.url(path)) as discovery:
        await eventually(lambda: _has(discovery, A1), 1, "listed")
        await asyncio.to_thread(raw.client.delete, f"/{path}/{A1}")
        await eventually(lambda: reg.registrations == 2, 2, "node created again")
        await eventually(lambda: _has(discovery, A1), 1, "listed again")


async def test_a_node_left_by_an_earlier_life_is_replaced(zk: ZooKeeperProcess, path: str, raw: Raw) -> None:
    # A server restarted on the same address before its old session expired: the old
    # node (here held by another client's session) is taken over, not kept.
    stale = json.dumps({"address": A1, "services": ["Old"], "metadata": {}}).encode()
    await asyncio.to_thread(raw.client.create, f"/{path}/{A1}", stale, ephemeral=True, makepath=True)
    async with await register(zk.url(path), A1, ["Arith"]) as reg:
        got = await asyncio.to_thread(raw.get, f"/{path}/{A1}")
        assert got is not None
        assert got[1].ephemeralOwner == reg.session_id
        assert json.loads(got[0])["services"] == ["Arith"]


async def test_a_node_that_cannot_be_created_again_at_once_is_retried(zk: ZooKeeperProcess, path: str,
                                                                       raw: Raw) -> None:
    # The node is deleted by hand while the parent refuses creates (an ACL): the keeper's
    # first attempt fails, and it keeps trying until the parent accepts again.
    from kazoo.security import ACL, Permissions, make_acl

    async with await register(zk.url(path), A1, ["Arith"]) as reg:
        everyone = make_acl("world", "anyone", all=True)
        no_create = ACL(Permissions.READ | Permissions.DELETE | Permissions.WRITE | Permissions.ADMIN,
                        everyone.id)
        await asyncio.to_thread(raw.client.set_acls, f"/{path}", [no_create])
        try:
            await asyncio.to_thread(raw.client.delete, f"/{path}/{A1}")
            await eventually(lambda: reg._trouble.failures >= 1, 2, "a refused create")
            assert reg.registrations == 1
        finally:
            await asyncio.to_thread(raw.client.set_acls, f"/{path}", [everyone])
        await eventually(lambda: reg.registrations == 2, 5, "node created once creates are allowed")
        got = await asyncio.to_thread(raw.get, f"/{path}/{A1}")
        assert got is not None and got[1].ephemeralOwner == reg.session_id


async def test_a_late_deleted_event_does_not_unsettle_a_confirmed_node(zk: ZooKeeperProcess, path: str,
                                                                       raw: Raw) -> None:
    # Replacing a stale node fires the watch set on it; its DELETED can reach the loop
    # after our own node was made and confirmed. It asks the keeper to look again, and
    # the confirmation stands meanwhile: session_id never drops back to 0.
    async with await register(zk.url(path), A1, ["Arith"]) as reg:
        owner = reg.session_id
        assert owner != 0
        reg._node_event("DELETED", reg.node)
        assert reg.session_id == owner
        await eventually(lambda: not reg._recheck, 2, "keeper looked again")
        got = await asyncio.to_thread(raw.get, f"/{path}/{A1}")
        assert got is not None and got[1].ephemeralOwner == owner == reg.session_id
        assert reg.registrations == 1  # ours was still there: confirmed, not created again


async def test_an_expired_session_is_replaced_and_the_node_created_again(
        zk: ZooKeeperProcess, path: str, raw: Raw, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="geerpc")
    async with await register(zk.url(path, 1), A1, ["Arith"]) as reg, \
            ZooKeeperDiscovery(zk.url(path)) as discovery:
        await eventually(lambda: _has(discovery, A1), 1, "listed")
        old = reg.session_id
        await asyncio.to_thread(raw.expire, reg._session._client.client_id, zk.endpoint)
        await eventually(lambda: reg.registrations == 2 and reg.session_id != old, 5,
                         "node created again in a new session")
        got = await asyncio.to_thread(raw.get, f"/{path}/{A1}")
        assert got is not None and got[1].ephemeralOwner == reg.session_id
        await eventually(lambda: _has(discovery, A1), 1, "listed again")
        assert "registered tcp@127.0.0.1:9001 in ZooKeeper again" in caplog.text


async def test_both_sides_carry_on_when_zookeeper_restarts(own_zk: ZooKeeperProcess, path: str) -> None:
    reg = await register(own_zk.url(path, 2), A1, ["Arith"])
    discovery = ZooKeeperDiscovery(own_zk.url(path, 2), first_list_timeout=0.5)
    try:
        await eventually(lambda: _has(discovery, A1), 1, "registration seen")
        await asyncio.to_thread(own_zk.stop)
        assert await discovery.get_all() == [A1]  # the last list is served meanwhile
        with pytest.raises(RegistryError):
            await discovery.refresh()
        assert await discovery.get_all() == [A1]
        await asyncio.to_thread(own_zk.start)
        # The watch lives on: a new server shows up, then leaves.
        async with await register(own_zk.url(path), A2, ["Arith"]):
            await eventually(lambda: _has(discovery, A2), 5, "watch resumed after the restart")
        await eventually(lambda: _lacks(discovery, A2), 1, "deregistration after the restart")
        assert await discovery.get_all() == [A1]
        assert reg.running
    finally:
        await reg.stop()
        await discovery.close()


async def test_both_sides_carry_on_when_zookeeper_loses_its_data(own_zk: ZooKeeperProcess, path: str) -> None:
    reg = await register(own_zk.url(path, 2), A1, ["Arith"])
    discovery = ZooKeeperDiscovery(own_zk.url(path, 2))
    try:
        await eventually(lambda: _has(discovery, A1), 1, "registration seen")
        await asyncio.to_thread(own_zk.stop, kill=True)
        await asyncio.to_thread(own_zk.wipe)  # every session and node gone
        # The new ZooKeeper refuses clients that saw newer transactions than its own:
        # a session timeout later they start over with new sessions.
        await eventually(lambda: reg.registrations == 2, 6, "node created again in a new session")
        assert reg._session.renewals == 1
        async with await register(own_zk.url(path), A2, ["Arith"]):
            await eventually(lambda: _has(discovery, A2), 5, "a server registered after the wipe seen")
        await eventually(lambda: _lacks(discovery, A2), 1, "deregistration after the wipe seen")
        assert await discovery.get_all() == [A1]
    finally:
        await reg.stop()
        await discovery.close()


class Named:
    def __init__(self, name: str) -> None:
        self.name = name

    async def whoami(self) -> str:
        return self.name


async def test_xclient_call_and_broadcast_over_zookeeper(zk: ZooKeeperProcess, path: str) -> None:
    import geerpc
    from geerpc.xclient import XClient

    servers = []
    try:
        for name in ("a", "b", "c"):
            server = geerpc.Server()
            server.register(Named(name), name="Named")
            await server.start("127.0.0.1", 0, registry=zk.url(path, 5))
            servers.append(server)
        async with XClient(ZooKeeperDiscovery(zk.url(path)), SelectMode.ROUND_ROBIN) as xc:
            await eventually(lambda: _count(xc.discovery, 3), 2, "three servers listed")
            assert sorted([await xc.call("Named.whoami", timeout=2) for _ in range(3)]) == ["a", "b", "c"]
            assert await xc.broadcast("Named.whoami", timeout=2) in {"a", "b", "c"}
            stopped = servers.pop(0)
            await stopped.stop()  # deletes its node: gone from the list within a second
            await eventually(lambda: _lacks(xc.discovery, stopped.address), 1, "stopped server unlisted")
            assert {await xc.call("Named.whoami", timeout=2) for _ in range(4)} == {"b", "c"}
        async with XClient(zk.url(path)) as by_url:  # a zk:// URL alone makes the discovery
            assert isinstance(by_url.discovery, ZooKeeperDiscovery)
            assert await by_url.call("Named.whoami", timeout=2) in {"b", "c"}
    finally:
        for server in servers:
            await server.stop()


async def _count(discovery: Any, n: int) -> bool:
    return len(await discovery.get_all()) == n


# ----------------------------------------------------------------- the command line


def _geerpc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "geerpc", *args], check=False, cwd=ROOT / "tests",
                          env=subprocess_env(), capture_output=True, text=True, timeout=30)


_CLI_SERVER = """
import asyncio, sys
import geerpc

class Calc:
    async def add(self, a, b):
        return a + b

async def main():
    server = geerpc.Server()
    server.register(Calc())
    print(await server.start("127.0.0.1", 0, registry=sys.argv[1]), flush=True)
    await asyncio.to_thread(sys.stdin.read)  # until the test closes our stdin
    await server.stop()

asyncio.run(main())
"""


def test_cli_list_and_call_through_zookeeper(zk: ZooKeeperProcess, path: str) -> None:
    url = zk.url(path)
    server = subprocess.Popen([PYTHON, "-c", _CLI_SERVER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert server.stdout is not None and server.stdin is not None
        address = server.stdout.readline().strip()  # printed once registered
        assert address.startswith("tcp@127.0.0.1:"), server.stderr.read() if server.poll() is not None else ""
        listed = _geerpc("list", url)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[1].split()[:2] == [address, "Calc"]
        called = _geerpc("call", url, "Calc.add", "1", "2")
        assert (called.returncode, called.stdout) == (0, "3\n"), called.stderr
        _, errors = server.communicate(timeout=10)  # closes its stdin: it stops and deregisters
        assert server.returncode == 0, errors
        assert address not in _geerpc("list", url).stdout
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()


def test_cli_says_what_is_wrong_with_a_zk_url() -> None:
    listed = _geerpc("list", "zk://127.0.0.1:99999/x")
    assert listed.returncode != 0
    assert "bad port" in listed.stderr


def test_cli_serve_registers_in_zookeeper(zk: ZooKeeperProcess, path: str) -> None:
    url = zk.url(path)
    env = {**subprocess_env(), "PYTHONPATH": str(ROOT / "tests") + os.pathsep + subprocess_env()["PYTHONPATH"]}
    server = subprocess.Popen([PYTHON, "-m", "geerpc", "serve", "cli_service:Calc", "--registry", url],
                              cwd=ROOT / "tests", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        address = server.stdout.readline().strip()
        assert address, server.stderr.read() if server.poll() is not None else "no address printed"
        assert _geerpc("call", url, "Calc.add", "2", "3").stdout == "5\n"
    finally:
        server.terminate()
        server.communicate(timeout=15)


async def test_registry_ssl_with_a_zk_url_is_refused_in_words() -> None:
    """TLS to ZooKeeper is not offered: registry_ssl= with zk:// says so, before any dial."""
    import ssl

    import geerpc

    server = geerpc.Server()
    server.register(ZkArith())
    try:
        with pytest.raises(ValueError, match="registry_ssl is for https:// and etcd registries, not zk://"):
            await server.start("127.0.0.1", 0, registry="zk://127.0.0.1:9/geerpc",
                               registry_ssl=ssl.create_default_context())
    finally:
        await server.stop()
