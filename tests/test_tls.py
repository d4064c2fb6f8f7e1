"""TLS, mutual TLS and bearer tokens, with real TLS over real sockets and certificates
made by trustme for each run (none is committed).

Attacks on this layer, one test each (the HOSTILE.md style of test_hostile.py):

| # | Input / event | Expected safe behaviour | Test |
|---|---|---|---|
| T1 | A TLS client on a plaintext port; a plaintext client on a TLS port | ConnectError naming the likely cause, within connect_timeout; others served | test_tls_client_on_a_plaintext_port, test_plaintext_client_on_a_tls_port |
| T2 | A certificate from an unknown CA; a certificate for another host name | ConnectError "certificate verify failed" naming the host | test_a_certificate_that_does_not_verify, test_a_wrong_host_name |
| T3 | No client certificate where mutual TLS is required | ConnectError saying a client certificate is required; the server counts the failure | test_mutual_tls_without_a_client_certificate |
| T4 | Garbage instead of a ClientHello; 1,000 failed handshakes | Each closed and counted, never reaching the Option or dispatch; the server serves on | test_garbage_handshakes_are_counted_and_the_server_serves_on |
| T5 | A TLS handshake that stalls half way | Cut by the handshake timeout, counted | test_a_stalled_tls_handshake_is_cut_by_the_handshake_timeout |
| T6 | Calls without a token, with a wrong one, 300 guesses, an oversized authorization value | Unauthenticated; neither the interceptors after auth nor the handler run; the right token still works | test_tokens_* |
| T7 | A token about to go in clear to another host (replayable by anyone on the path) | ValueError before any dial, unless insecure_token=True | test_a_token_is_never_sent_in_clear_to_another_host |

TLS renegotiation cannot be asked for from Python's ssl module (and TLS 1.3 has none);
the server's context is the caller's, and OpenSSL refuses client-initiated
renegotiation by default.
"""

from __future__ import annotations

import asyncio
import ssl

import aiohttp
import pytest
import trustme
from conftest import eventually

import geerpc
from geerpc.xclient import XClient


class Arith:
    def __init__(self) -> None:
        self.calls = 0

    async def add(self, a, b):
        self.calls += 1
        return a + b

    async def who(self):
        call = geerpc.current_call()
        return {"identity": call.identity, "has_cert": call.peer_certificate is not None}

    def who_in_thread(self):
        return geerpc.current_call().identity


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_context(ca: trustme.CA, *hosts: str, mutual: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*(hosts or ("127.0.0.1", "localhost"))).configure_cert(context)
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


def client_context(ca: trustme.CA, identity: str | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if identity is not None:
        ca.issue_cert(identity, common_name=identity).configure_cert(context)
    return context


async def serve(context: ssl.SSLContext | None, **options) -> tuple[geerpc.Server, Arith]:
    service = Arith()
    server = geerpc.Server(**options)
    server.register(service)
    await server.start("127.0.0.1", 0, ssl=context)
    return server, service


async def assert_serving(server: geerpc.Server, context: ssl.SSLContext | None) -> None:
    async with await geerpc.dial(server.address, ssl=context, connect_timeout=5) as client:
        assert await client.call("Arith.add", 2, 3) == 5


# --------------------------------------------------------------------------- TLS


async def test_calls_over_tls(ca):
    server, _ = await serve(server_context(ca))
    try:
        assert server.address.startswith("tls@127.0.0.1:")
        async with await geerpc.dial(server.address, ssl=client_context(ca)) as client:
            assert await client.call("Arith.add", 1, 2) == 3
            assert await client.call("Arith.who") == {"identity": None, "has_cert": False}
            big = b"x" * (1 << 20)  # a frame larger than a TLS record
            assert len(await client.call("Arith.add", big, b"")) == 1 << 20
    finally:
        await server.stop()


async def test_the_debug_page_and_metrics_are_served_over_https(ca):
    server, _ = await serve(server_context(ca))
    try:
        port = int(server.address.rpartition(":")[2])
        async with aiohttp.ClientSession() as session:
            for path, words in (("/debug/geerpc", "Arith"), ("/metrics", "geerpc_server_connections")):
                async with session.get(f"https://127.0.0.1:{port}{path}", ssl=client_context(ca)) as response:
                    assert response.status == 200 and words in await response.text()
    finally:
        await server.stop()


async def test_a_unix_socket_takes_no_tls(ca, tmp_path):
    server = geerpc.Server()
    with pytest.raises(ValueError, match="ssl= is for TCP"):
        await server.start(f"unix@{tmp_path}/s.sock", ssl=server_context(ca))


async def test_ssl_for_a_tcp_address_is_a_mistake(ca):
    server, _ = await serve(None)
    try:
        with pytest.raises(ValueError, match="ssl= is for tls@ addresses"):
            await geerpc.dial(server.address, ssl=client_context(ca))
    finally:
        await server.stop()


async def test_tls_client_on_a_plaintext_port(ca):
    server, _ = await serve(None)
    try:
        address = server.address.replace("tcp@", "tls@")
        with pytest.raises(geerpc.ConnectError, match="plaintext port") as caught:
            await geerpc.dial(address, ssl=client_context(ca), connect_timeout=5)
        assert not isinstance(caught.value, geerpc.ConnectTimeout)
        await assert_serving(server, None)
    finally:
        await server.stop()


async def test_plaintext_client_on_a_tls_port(ca):
    server, _ = await serve(server_context(ca))
    try:
        address = server.address.replace("tls@", "tcp@")
        with pytest.raises(geerpc.HandshakeError, match="speaks TLS: dial tls@"):
            await geerpc.dial(address, connect_timeout=5)
        await eventually(lambda: server.tls_failures == 1, what="the failed handshake to be counted")
        await assert_serving(server, client_context(ca))
    finally:
        await server.stop()


async def test_a_certificate_that_does_not_verify(ca):
    server, _ = await serve(server_context(ca))
    try:
        with pytest.raises(geerpc.ConnectError, match=r"certificate verify failed for host '127.0.0.1'"):
            await geerpc.dial(server.address, connect_timeout=5)  # the system's CAs do not know ours
        other = trustme.CA()
        with pytest.raises(geerpc.ConnectError, match="certificate verify failed"):
            await geerpc.dial(server.address, ssl=client_context(other), connect_timeout=5)
        await assert_serving(server, client_context(ca))
    finally:
        await server.stop()


async def test_a_wrong_host_name(ca):
    server, _ = await serve(server_context(ca, "db.example"))
    try:
        with pytest.raises(geerpc.ConnectError, match=r"certificate verify failed for host '127.0.0.1'.*not valid for '127.0.0.1'"):
            await geerpc.dial(server.address, ssl=client_context(ca), connect_timeout=5)
    finally:
        await server.stop()


async def test_mutual_tls_identity_and_certificate(ca):
    server, _ = await serve(server_context(ca, mutual=True))
    try:
        async with await geerpc.dial(server.address, ssl=client_context(ca, "billing")) as client:
            assert await client.call("Arith.who") == {"identity": "billing", "has_cert": True}
            assert await client.call("Arith.who_in_thread") == "billing"
    finally:
        await server.stop()


async def test_mutual_tls_without_a_client_certificate(ca):
    server, _ = await serve(server_context(ca, mutual=True))
    try:
        with pytest.raises(geerpc.ConnectError, match="requires a client certificate") as caught:
            await geerpc.dial(server.address, ssl=client_context(ca), connect_timeout=5)
        assert not isinstance(caught.value, geerpc.ConnectTimeout)
        await eventually(lambda: server.tls_failures == 1, what="the failure to be counted")
        await assert_serving(server, client_context(ca, "ok"))
    finally:
        await server.stop()


async def test_garbage_handshakes_are_counted_and_the_server_serves_on(ca):
    server, _ = await serve(server_context(ca))
    host, _, port = server.address[len("tls@"):].rpartition(":")

    async def garbage(i: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"\x16\x03\x01\x00\x05hello" if i % 2 else b'{"MagicNumber":3927900}\n')
            await writer.drain()
            await asyncio.wait_for(reader.read(), 5)  # the server closes
        except ConnectionError:
            pass
        finally:
            writer.close()

    try:
        for start in range(0, 1000, 100):
            await asyncio.gather(*(garbage(i) for i in range(start, start + 100)))
        await eventually(lambda: server.tls_failures == 1000, what=f"1,000 failures counted ({server.tls_failures})")
        assert server.snapshot().protocol_errors == 0  # none reached the Option
        await assert_serving(server, client_context(ca))
        assert not server.snapshot().connections or all(c.running == 0 for c in server.snapshot().connections)
    finally:
        await server.stop()


async def test_a_stalled_tls_handshake_is_cut_by_the_handshake_timeout(ca):
    server, _ = await serve(server_context(ca), handshake_timeout=0.3)
    host, _, port = server.address[len("tls@"):].rpartition(":")
    try:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"\x16\x03\x01")  # the first bytes of a record header, then nothing
            await writer.drain()
            async with asyncio.timeout(5):
                assert await reader.read() == b""  # closed by the server
        finally:
            writer.close()
        assert server.tls_failures == 1
        await assert_serving(server, client_context(ca))
    finally:
        await server.stop()


# --------------------------------------------------------------------------- tokens


async def _with_tokens(ca):
    seen: list[str] = []

    async def after_auth(call, proceed):
        seen.append(call.identity)
        if call.service_method == "Arith.who" and call.identity != "alice":
            raise geerpc.PermissionDenied(f"{call.identity} may not call Arith.who")
        return await proceed()

    server, service = await serve(server_context(ca), auth=geerpc.BearerTokens({"s3cret": "alice", "b0b": "bob"}),
                                  interceptors=[after_auth])
    return server, service, seen


async def test_tokens_identify_the_caller_and_an_interceptor_authorises_per_method(ca):
    server, service, seen = await _with_tokens(ca)
    try:
        async with await geerpc.dial(server.address, ssl=client_context(ca), token="s3cret") as alice:
            assert (await alice.call("Arith.who"))["identity"] == "alice"
        async with await geerpc.dial(server.address, ssl=client_context(ca), token="b0b") as bob:
            assert await bob.call("Arith.add", 1, 2) == 3
            with pytest.raises(geerpc.PermissionDenied, match="bob may not call Arith.who"):
                await bob.call("Arith.who")
        assert seen == ["alice", "bob", "bob"]
    finally:
        await server.stop()


async def test_tokens_missing_or_wrong_are_unauthenticated_and_nothing_runs(ca):
    server, service, seen = await _with_tokens(ca)
    try:
        async with await geerpc.dial(server.address, ssl=client_context(ca)) as anonymous:
            with pytest.raises(geerpc.Unauthenticated, match="needs a token"):
                await anonymous.call("Arith.add", 1, 2)
            for value in ("Bearer nope", "s3cret", "Basic czNjcmV0", "bearer s3cret", "Bearer  s3cret"):
                with pytest.raises(geerpc.Unauthenticated, match="not accepted"):
                    await anonymous.call("Arith.add", 1, 2, metadata={"authorization": value})
            with pytest.raises(geerpc.Unauthenticated):
                await anonymous.call("Arith.add", 1, 2, metadata={"authorization": b"Bearer s3cret"})
        assert seen == [] and service.calls == 0
    finally:
        await server.stop()


async def test_tokens_guessing_gets_nowhere(ca):
    server, service, _ = await _with_tokens(ca)
    try:
        async with await geerpc.dial(server.address, ssl=client_context(ca)) as guesser:
            for guess in range(300):
                with pytest.raises(geerpc.Unauthenticated):
                    await guesser.call("Arith.add", 1, 2, metadata={"authorization": f"Bearer s3cre{guess}"})
        assert service.calls == 0
        async with await geerpc.dial(server.address, ssl=client_context(ca), token="s3cret") as alice:
            assert await alice.call("Arith.add", 1, 2) == 3
    finally:
        await server.stop()


async def test_tokens_an_oversized_authorization_is_refused(ca):
    server, service, _ = await _with_tokens(ca)
    try:
        async with await geerpc.dial(server.address, ssl=client_context(ca)) as client:
            with pytest.raises(geerpc.Unauthenticated):
                await client.call("Arith.add", 1, 2, metadata={"authorization": "Bearer " + "x" * 5000})
            with pytest.raises(ValueError, match="over the limit"):
                await client.call("Arith.add", 1, 2, metadata={"authorization": "Bearer " + "x" * 9000})
        with pytest.raises(ValueError, match="at most 4096"):
            await geerpc.dial(server.address, ssl=client_context(ca), token="x" * 5000)
        assert service.calls == 0
    finally:
        await server.stop()


def test_bearer_tokens_refuse_bad_tables():
    for bad in ({}, {"": "a"}, {"t": ""}, {"t\n": "a"}, ["t"]):
        with pytest.raises(ValueError):
            geerpc.BearerTokens(bad)  # type: ignore[arg-type]
    assert "s3cret" not in repr(geerpc.BearerTokens({"s3cret": "alice"}))


async def test_a_token_is_never_sent_in_clear_to_another_host(monkeypatch):
    loop = asyncio.get_running_loop()
    attempts: list[tuple] = []

    async def no_network(*args, **kwargs):
        attempts.append(args[1:3])
        raise OSError(101, "no network in tests")

    monkeypatch.setattr(loop, "create_connection", no_network)
    for address in ("tcp@10.1.2.3:9000", "http@10.1.2.3:9000", "rpc.example:9000"):
        with pytest.raises(ValueError, match="refusing to send a token in clear"):
            await geerpc.dial(address, token="s3cret")
    assert attempts == []  # nothing was dialed
    with pytest.raises(geerpc.ConnectError):
        await geerpc.dial("tcp@10.1.2.3:9000", token="s3cret", insecure_token=True)
    assert attempts == [("10.1.2.3", 9000)]
    with pytest.raises(geerpc.ConnectError):
        await geerpc.dial("tls@10.1.2.3:9000", token="s3cret")  # encrypted: fine
    with pytest.raises(ValueError, match="refusing"):
        XClient(["tcp@10.1.2.3:9000"], token="s3cret")._token and await XClient(
            ["tcp@10.1.2.3:9000"], token="s3cret").call("Arith.add", 1, 2)


async def test_a_token_over_loopback_tcp_is_allowed():
    server = geerpc.Server(auth=geerpc.BearerTokens({"t": "me"}))
    server.register(Arith())
    await server.start("127.0.0.1", 0)
    try:
        async with await geerpc.dial(server.address, token="t") as client:
            assert (await client.call("Arith.who"))["identity"] == "me"
    finally:
        await server.stop()


async def test_xclient_and_sync_client_over_tls_with_a_token(ca):
    server, _, _ = await _with_tokens(ca)
    plain, _ = await serve(None)
    try:
        async with XClient([server.address], ssl=client_context(ca), token="s3cret") as xc:
            assert (await xc.call("Arith.who"))["identity"] == "alice"
        async with XClient([plain.address], ssl=client_context(ca)) as xc:  # ssl only for tls@ servers
            assert await xc.call("Arith.add", 1, 1) == 2

        def blocking():
            with geerpc.SyncClient(server.address, ssl=client_context(ca), token="s3cret") as client:
                return client.call("Arith.who")["identity"]

        assert await asyncio.to_thread(blocking) == "alice"
    finally:
        await server.stop()
        await plain.stop()


async def test_a_closed_tls_connection_is_freed_without_the_cyclic_gc(ca):
    """As over TCP (tests/test_hostile_calls.py): a server whose TLS clients come and
    go must not keep each closed connection, or the socket transport beneath its TLS
    layer, for the next full collection; nor must a client keep its own, or its socket
    transport."""
    import gc
    import weakref

    server, _ = await serve(server_context(ca))
    try:
        gc.collect()
        gc.disable()
        try:
            client = await geerpc.dial(server.address, ssl=client_context(ca))
            assert await client.call("Arith.add", 1, 2) == 3
            (connection,) = server._connections
            gone, raw = weakref.ref(connection), weakref.ref(connection._raw)
            del connection
            ours = weakref.ref(client._conn)
            assert client._conn.transport is not None
            # asyncio's TLS transport -> its protocol -> the socket transport beneath it
            ours_raw = weakref.ref(client._conn.transport._ssl_protocol._transport)
            await client.close()
            del client
            await eventually(lambda: gone() is None, what="the closed connection freed")
            await eventually(lambda: raw() is None, what="its socket transport freed")
            await eventually(lambda: ours() is None, what="the client's closed connection freed")
            await eventually(lambda: ours_raw() is None, what="the client's socket transport freed")
        finally:
            gc.enable()
    finally:
        await server.stop()
