"""Heartbeats and announce(), against real registries on 127.0.0.1."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
import types

import aiohttp
import pytest
from _registry_helpers import REPO, FakeClock, RegistryProcess, free_port
from aiohttp import web

from geerpc.registry import (
    DEFAULT_PERIOD,
    DEFAULT_TIMEOUT,
    Heartbeat,
    Registry,
    announce,
    heartbeat,
    period_for,
)
from geerpc.registry.contract import RELIST_PERIOD, heartbeat_period, parse_instance
from geerpc.registry.heartbeat import MIN_PERIOD

A = "tcp@127.0.0.1:9001"


@pytest.fixture
async def beats():
    """Starts heartbeats (on ``clock=`` when given) and stops every one of them afterwards."""
    started: list[Heartbeat] = []

    def make(*args, clock: FakeClock | None = None, **kwargs) -> Heartbeat:
        if clock is not None:
            kwargs.update(clock=clock, sleep=clock.sleep)
        beat = Heartbeat(*args, **kwargs)
        beat.start()
        started.append(beat)
        return beat

    yield make
    for beat in started:
        await beat.stop()


async def listed(url: str) -> list[str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        value = response.headers["X-Geerpc-Servers"]
    return value.split(",") if value else []


def on_time(delay: float, period: float) -> bool:
    """A beat's delay after a good beat: the period, or up to a tenth less."""
    return 0.9 * period <= delay <= period


# -- the period rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "timeout, period",
    [(300, 240), (180, 120), (30, 10), (0.6, 0.2), (0, 240), (None, 240), (-5, 240), (float("nan"), 240),
     (0.3, 0.1), (0.0001, MIN_PERIOD), (1e-300, MIN_PERIOD), (5e-324, MIN_PERIOD)],
)
def test_period_for(timeout, period):
    assert period_for(timeout) == pytest.approx(period)


@pytest.mark.parametrize("period", [0.001, 0.2, 1.0, 5.0, 240.0])
async def test_failed_beats_back_off_from_a_quarter_second_up_to_the_period_or_5_s(geerpc_like, beats,
                                                                                   period):
    geerpc_like.status = 500
    clock = FakeClock()
    beat = beats(geerpc_like.url, A, period=period, clock=clock)
    assert beat.period == max(period, MIN_PERIOD)  # 0.001 is raised to MIN_PERIOD
    assert await beat.wait_first() is False
    delays = [await clock.wake() for _ in range(12)]
    await clock.sleeping()
    assert beat.failures == 13  # one POST per wake: no retry without a wait
    assert min(delays) >= 0.25  # never a POST loop, whatever the period
    assert max(delays) <= max(min(period, RELIST_PERIOD), 0.5)
    if period >= RELIST_PERIOD:
        # exponential up to the cap (equal jitter: half of each step fixed), and the cap
        # is RELIST_PERIOD whatever the period, so a registry back from an outage hears
        # from every server within that long
        for delay, step in zip(delays, (0.5, 1, 2, 4)):
            assert step / 2 <= delay <= step
        assert all(RELIST_PERIOD / 2 <= delay <= RELIST_PERIOD for delay in delays[4:])


async def test_tiny_registry_timeout_does_not_make_a_post_loop(beats):
    # A registry (hostile or misconfigured) that says X-Geerpc-Timeout: 0.0001.
    posts = 0

    async def reply(request: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        return web.Response(headers={"X-Geerpc-Timeout": "0.0001"})

    async with _Fake(reply) as url:
        clock = FakeClock()
        beat = beats(url, A, clock=clock)
        assert await beat.wait_first()
        assert beat.period == MIN_PERIOD
        assert [await clock.wake() for _ in range(3)] == [MIN_PERIOD] * 3
        await clock.sleeping()
        assert posts == 4  # one a period: the floor holds
        await beat.stop()


class _Fake:
    """A one-route registry answering every request with ``reply``."""

    def __init__(self, reply) -> None:
        self.reply = reply
        self.runner: web.AppRunner | None = None

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/r", self.reply)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/r"

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.mark.parametrize("header, period", [("300", 240), ("30", 10), ("0", 240), (None, 240), ("junk", 240)])
async def test_period_follows_the_registry_timeout_header(geerpc_like, beats, header, period):
    if header is not None:
        geerpc_like.extra_headers = {"X-Geerpc-Timeout": header}
    beat = beats(geerpc_like.url, A)
    assert await beat.wait_first() is True
    assert beat.period == pytest.approx(period)
    assert geerpc_like.servers == [A]


@pytest.mark.parametrize(
    "asked, timeout, period",
    [("5", "300", 5), ("2.5", "300", 2.5), ("1000", "300", 240), ("1000", "30", 10),
     ("0.0001", "300", MIN_PERIOD), ("0", "300", 240), ("-1", "300", 240), ("junk", "300", 240), ("nan", "30", 10), ("inf", "30", 10),
     ("5", None, 5), ("5", "0", 5), (None, "300", 240)],
)
async def test_period_follows_the_registry_period_header_within_its_timeout(geerpc_like, beats, asked, timeout,
                                                                            period):
    # X-Geerpc-Period is what the registry asks for; never longer than its timeout allows,
    # never below MIN_PERIOD, and ignored unless a number above 0.
    given = (("X-Geerpc-Period", asked), ("X-Geerpc-Timeout", timeout))
    geerpc_like.extra_headers = {name: value for name, value in given if value is not None}
    beat = beats(geerpc_like.url, A)
    assert await beat.wait_first() is True
    assert beat.period == pytest.approx(period)


async def test_good_beats_come_a_period_apart_or_up_to_a_tenth_sooner(geerpc_like, beats):
    # Servers started together drift apart instead of beating in one burst forever.
    clock = FakeClock()
    beat = beats(geerpc_like.url, A, period=10.0, clock=clock)
    assert await beat.wait_first()
    delays = [await clock.wake() for _ in range(20)]
    assert all(on_time(delay, 10.0) for delay in delays)
    assert len(set(delays)) > 10 and max(delays) - min(delays) > 0.2


@pytest.mark.parametrize(
    "asked, timeout, period",
    [(None, None, 240), (None, 300, 240), (5, 300, 5), (5, None, 5), (5, 0, 5), (300, 300, 240), (5, 6, 2),
     (1e-9, 300, MIN_PERIOD), (0, 300, 240), (-5, 300, 240), (math.nan, 300, 240), (math.inf, 30, 10)],
)
def test_heartbeat_period_rule(asked, timeout, period):
    assert heartbeat_period(asked, timeout) == pytest.approx(period)


@pytest.mark.parametrize("value, instance", [("3f9c2a7d41b05e68", "3f9c2a7d41b05e68"), (" ab ", "ab"),
                                             (None, None), ("", None), ("  ", None), ("x" * 65, None)])
def test_parse_instance(value, instance):
    # Hostile: a registry sending a huge or blank X-Geerpc-Instance is treated as sending none.
    assert parse_instance(value) == instance


async def test_geerpcs_registry_asks_for_a_beat_every_5_s_by_default(beats):
    clock = FakeClock()
    async with Registry() as registry:  # the defaults: timeout 300 s
        beat = beats(registry.url, A, clock=clock)
        assert await beat.wait_first()
        assert beat.period == 5.0
        assert on_time(await clock.sleeping(), 5.0)
    async with Registry(heartbeat_period=30) as registry:
        beat = beats(registry.url, "tcp@127.0.0.1:9002", clock=clock)
        assert await beat.wait_first()
        assert beat.period == 30.0


async def test_a_changed_instance_counts_as_a_restart_and_is_logged_once(beats, caplog):
    instance = "a1"

    async def reply(request: web.Request) -> web.Response:
        return web.Response(headers={"X-Geerpc-Instance": instance, "X-Geerpc-Period": "1"})

    caplog.set_level(logging.INFO, "geerpc.registry")
    async with _Fake(reply) as url:
        clock = FakeClock()
        beat = beats(url, A, clock=clock)
        assert await beat.wait_first()
        await clock.wake()
        await clock.sleeping()
        assert (beat.instance, beat.restarts) == ("a1", 0)
        instance = "b2"
        for _ in range(3):
            await clock.wake()
            await clock.sleeping()
        assert (beat.instance, beat.restarts) == ("b2", 1)
        assert caplog.text.count("restarted") == 1
        await beat.stop()


async def test_explicit_period_wins_over_the_registry(registry, beats):
    beat = beats(registry.url, A, period=7)
    assert await beat.wait_first()
    assert beat.period == 7


# -- against geerpc's registry --------------------------------------------------------


async def test_first_beat_registers_with_services(registry, beats):
    beat = beats(registry.url, A, services=["Calc", "Arith"])
    assert await beat.wait_first() is True
    assert await listed(registry.url) == [A]
    assert await listed(registry.url + "?service=Arith") == [A]
    assert await listed(registry.url + "?service=Other") == []


async def test_heartbeat_keeps_a_server_alive_past_the_timeout(beats):
    clock = FakeClock()
    async with Registry(timeout=0.6, clock=clock) as registry:
        beat = beats(registry.url, A, clock=clock)
        assert await beat.wait_first()
        assert beat.period == pytest.approx(0.2)
        # Three timeouts go by: the server must be listed after every beat.
        for _ in range(9):
            assert on_time(await clock.wake(), 0.2)
            await clock.sleeping()  # the beat is done
            assert await listed(registry.url) == [A]
        assert beat.beats == 10
        await beat.stop()
        clock.advance(0.6)
        assert await listed(registry.url) == []


async def test_stop_deregisters_at_once(registry):
    beat = heartbeat(registry.url, A)
    assert await beat.wait_first()
    await beat.stop()
    assert await listed(registry.url) == []  # timeout is 300 s: only DELETE explains this
    await beat.stop()  # idempotent


async def test_async_with_heartbeat(registry):
    async with Heartbeat(registry.url, A) as beat:
        assert await beat.wait_first()
        assert await listed(registry.url) == [A]
    assert await listed(registry.url) == []


async def test_stop_before_the_first_beat(registry):
    beat = heartbeat(registry.url, A)
    await beat.stop()
    assert await beat.wait_first() is False


# -- failures and recovery --------------------------------------------------------------


async def test_registry_down_at_start_then_up(beats):
    port = free_port()
    url = f"http://127.0.0.1:{port}/_geerpc_/registry"
    clock = FakeClock()
    beat = beats(url, A, period=1.0, clock=clock)
    assert await beat.wait_first() is False
    await clock.wake()
    await clock.sleeping()
    assert beat.failures == 2
    registry = Registry(timeout=300)
    await registry.start("127.0.0.1", port)
    async with registry:
        assert await clock.wake() <= 1.0  # backoff is capped at the period
        await clock.sleeping()
        assert beat.failures == 0
        assert await listed(registry.url) == [A]


async def test_http_errors_are_retried_and_logged_without_spam(geerpc_like, beats, caplog):
    caplog.set_level(logging.DEBUG, logger="geerpc.registry")
    geerpc_like.status = 500
    clock = FakeClock()
    beat = beats(geerpc_like.url, A, period=0.5, clock=clock)
    assert await beat.wait_first() is False
    for _ in range(2):
        await clock.wake()
    await clock.sleeping()
    assert beat.failures == 3
    geerpc_like.status = None
    await clock.wake()
    assert on_time(await clock.sleeping(), 0.5)  # a good beat: the period again
    assert beat.failures == 0 and geerpc_like.servers == [A]
    records = [r for r in caplog.records if r.name == "geerpc.registry" and A in r.getMessage()]
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "HTTP 500" in warnings[0].getMessage()
    assert [r.levelno for r in records if "failed" in r.getMessage()] == [logging.WARNING] + [logging.DEBUG] * 2
    assert any(r.levelno == logging.INFO and "works again after 3 failure(s)" in r.getMessage() for r in records)


async def test_post_that_hangs_times_out_and_loop_continues(geerpc_like, beats):
    geerpc_like.delay = 10
    clock = FakeClock()
    beat = beats(geerpc_like.url, A, period=0.3, timeout=0.2, clock=clock)
    started = time.monotonic()
    assert await beat.wait_first() is False
    assert time.monotonic() - started < 2
    geerpc_like.delay = 0
    await clock.wake()
    await clock.sleeping()
    assert beat.beats == 1


async def test_stop_tolerates_a_registry_that_is_down(beats):
    process = RegistryProcess(timeout=300)
    try:
        url = await process.start()
        beat = heartbeat(url, A)
        assert await beat.wait_first()
        await process.kill()
        started = time.monotonic()
        await beat.stop()
        assert time.monotonic() - started < 3
    finally:
        await process.stop()


async def test_heartbeat_survives_registry_kill_and_restart_on_the_same_port(beats):
    process = RegistryProcess(timeout=1.5)  # period 0.5 s
    clock = FakeClock()
    try:
        url = await process.start()
        beat = beats(url, A, clock=clock)
        assert await beat.wait_first()
        assert beat.period == pytest.approx(0.5)
        await process.kill()
        for _ in range(2):
            await clock.wake()
        await clock.sleeping()
        assert beat.failures == 2
        assert await process.start() == url  # same port
        # Back within one period (backoff is capped at it).
        assert await clock.wake() <= beat.period
        await clock.sleeping()
        assert beat.failures == 0
        assert await _is_listed(url)
    finally:
        await process.stop()


async def _is_listed(url: str) -> bool:
    try:
        return await listed(url) == [A]
    except aiohttp.ClientError:
        return False


# -- arguments and announce() -------------------------------------------------------------


def test_heartbeat_needs_a_running_loop():
    with pytest.raises(RuntimeError):
        heartbeat("http://127.0.0.1:1/_geerpc_/registry", A)


@pytest.mark.parametrize(
    "url, address, period",
    [("ftp://x/", A, None), ("http://x/", "nonsense", None), ("http://x/", A, 0), ("http://x/", A, -1.0)],
)
async def test_bad_arguments(url, address, period):
    with pytest.raises(ValueError):
        heartbeat(url, address, period)


@pytest.mark.parametrize("timeout", [math.nan, None, 0, -1.0, math.inf, True, "5"])
async def test_bad_timeout_fails_at_construction(timeout):
    with pytest.raises(ValueError, match="timeout"):
        Heartbeat("http://127.0.0.1:1/_geerpc_/registry", A, timeout=timeout)


@pytest.mark.parametrize(
    "services",
    [["Ar ith"], ["a,b"], [""], [" Arith"], [".hidden"], ["x" * 101], [5], [f"S{i}" for i in range(65)]],
    ids=["space", "comma", "empty", "padded", "dot", "long", "not-str", "too-many"],
)
async def test_bad_service_names_fail_at_construction(services):
    # The registry would answer 400 to every beat; fail here instead of retrying forever.
    with pytest.raises(ValueError, match="service"):
        Heartbeat("http://127.0.0.1:1/_geerpc_/registry", A, services=services)


async def test_announce_over_http_returns_after_the_first_beat(registry):
    announcement = await announce(registry.url, A, ["Arith"])
    try:
        assert await listed(registry.url + "?service=Arith") == [A]
    finally:
        await announcement.stop()
    assert await listed(registry.url) == []


async def test_announce_with_registry_down_still_returns(caplog):
    url = f"http://127.0.0.1:{free_port()}/_geerpc_/registry"
    announcement = await announce(url, A, None)
    try:
        assert isinstance(announcement, Heartbeat)
        assert announcement.failures >= 1
    finally:
        await announcement.stop()


async def test_announce_etcd_uses_the_etcd_module(monkeypatch):
    calls = []

    class Registration:
        async def stop(self) -> None:
            calls.append("stop")

    async def register(url, address, services):
        calls.append((url, address, services))
        return Registration()

    fake = types.ModuleType("geerpc.registry.etcd")
    fake.register = register
    monkeypatch.setitem(sys.modules, "geerpc.registry.etcd", fake)
    announcement = await announce("etcd://127.0.0.1:2379/geerpc", A, ["Arith"])
    await announcement.stop()
    assert calls == [("etcd://127.0.0.1:2379/geerpc", A, ["Arith"]), "stop"]


async def test_announce_other_scheme_is_value_error():
    with pytest.raises(ValueError, match="want http://, https://, etcd:// or zk://"):
        await announce("consul://127.0.0.1/x", A, None)


async def test_default_period_is_geerpcs(geerpc_like, beats):
    # GeeRPC drops a server after 5 minutes and beats every 4 (the timeout less a minute).
    assert DEFAULT_TIMEOUT == 300.0
    assert DEFAULT_PERIOD == 240.0
    assert period_for(None) == period_for(300.0) == 240.0
    # GeeRPC's registry sends no X-Geerpc-Timeout: the heartbeat beats every 240 s.
    clock = FakeClock()
    beat = beats(geerpc_like.url, A, clock=clock)
    assert beat.period == 240.0
    assert await beat.wait_first()
    assert on_time(await clock.sleeping(), 240.0)


# -- a program that never calls stop() ---------------------------------------------------

_FORGETFUL = """
import asyncio, gc, sys
import geerpc
from geerpc.registry import Registry, heartbeat

class Arith:
    async def add(self, a, b):
        return a + b

async def forget():
    registry = Registry()
    url = await registry.start("127.0.0.1", 0)
    if sys.argv[1] == "server":
        server = geerpc.Server()
        server.register(Arith())
        await server.start("127.0.0.1", 0, registry=url)   # and never server.stop()
    else:
        beat = heartbeat(url, "tcp@127.0.0.1:9001")          # and never beat.stop()
        assert await beat.wait_first()
    return registry

if sys.argv[2] == "asyncio.run":       # the loop ends with the heartbeat running
    async def main():
        registry = await forget()
        await registry.stop()
    asyncio.run(main())
else:                                  # the loop is closed under the pending heartbeat
    loop = asyncio.new_event_loop()
    registry = loop.run_until_complete(forget())
    loop.run_until_complete(registry.stop())
    loop.close()
    del loop, registry
    gc.collect()
print("exited")
"""


def _run_forgetful(*args: str, warnings: str | None = None) -> str:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    options = [] if warnings is None else ["-W", warnings]
    done = subprocess.run([sys.executable, *options, "-c", _FORGETFUL, *args],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert (done.returncode, done.stdout) == (0, "exited\n"), done.stderr
    return done.stderr


@pytest.mark.parametrize("ending", ["asyncio.run", "closed loop"])
@pytest.mark.parametrize("what", ["server", "heartbeat"])
def test_a_forgotten_stop_closes_the_session_without_aiohttps_noise(what, ending):
    quiet = _run_forgetful(what, ending)
    noisy = _run_forgetful(what, ending, warnings="default")
    for stderr in (quiet, noisy):
        assert "Unclosed client session" not in stderr
        assert "Unclosed connector" not in stderr
        assert "Traceback" not in stderr
    # geerpc's own warning, once, only where warnings are shown.
    assert "ended without stop()" not in quiet
    assert noisy.count("ResourceWarning: geerpc heartbeat of tcp@127.0.0.1:") == 1
    assert "was not deregistered" in noisy
    if (what, ending) == ("heartbeat", "asyncio.run"):
        assert quiet == ""  # nothing at all by default
