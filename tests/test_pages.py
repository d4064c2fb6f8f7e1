"""Pages as a person sees them, in a real headless Chromium: the server's debug page, and
what it shares with the registry's dashboard."""

from __future__ import annotations

import re

import pytest

import geerpc
from geerpc.debug import duration
from geerpc.registry import Registry
from geerpc.registry.dashboard import render_dashboard


async def test_debug_page_shows_services_methods_and_numbers(browser, server, client, tmp_path):
    for i in range(25):
        await client.call("Arith.add", i, 1)
    with pytest.raises(geerpc.RemoteError):
        await client.call("Arith.fail", "nope")
    host_port = server.address.split("@")[1]
    await browser.goto(f"http://{host_port}/debug/geerpc")
    text = await browser.text()
    assert "geerpc services" in text
    assert "Arith" in text
    for shown in ("add(a, b)", "mul(a, b)", "sleep(seconds)", "fail(message)"):
        assert shown in text
    assert "_secret" not in text
    # the add row as a person reads it: 25 calls, 0 errors, then p50 and p99
    rows = await browser.evaluate(
        "[...document.querySelectorAll('tbody tr')].map(r => [...r.cells].map(c => c.innerText))")
    add = next(r for r in rows if r[0].startswith("add("))
    assert add[2:4] == ["25", "0"] and add[4].endswith(("µs", "ms")) and add[5].endswith(("µs", "ms"))
    fail = next(r for r in rows if r[0].startswith("fail("))
    assert fail[3] == "1"
    # it renders as a laid-out table, not a wall of text
    width = await browser.evaluate("document.querySelector('table').getBoundingClientRect().width")
    assert width > 600
    await browser.screenshot(tmp_path / "debug.png")
    assert (tmp_path / "debug.png").stat().st_size > 5000


# Seconds around every unit boundary, fractions (cut, not rounded) and below zero.
DURATIONS = [-5, 0, 0.9, 1, 59, 59.99, 60, 61, 119, 3599, 3600, 3660, 3725, 86399, 86400, 90061,
             86400 * 400 + 7200]


async def test_dashboard_script_formats_durations_as_the_debug_page_does(browser):
    # The dashboard formats uptime in JavaScript, the debug page in Python
    # (geerpc.debug.duration): the same text for every value, not just look-alikes.
    page = render_dashboard("/_geerpc_/registry").decode()
    source = re.search(r"function duration\(seconds\) \{.*?\n  \}", page, re.S)
    assert source is not None, "the dashboard's script has no duration()"
    shown = await browser.evaluate(f"(() => {{ {source.group(0)}\n return {DURATIONS}.map(duration); }})()")
    assert shown == [duration(seconds) for seconds in DURATIONS]
    assert shown[list(DURATIONS).index(3725)] == "1 h 2 min"


async def test_dashboard_and_debug_page_show_the_same_uptime(browser, server):
    # Both up 1 h 2 min 5 s (a fake clock for the registry, an earlier start for the
    # server): both pages read "1 h 2 min".
    now = [1000.0]
    async with Registry(timeout=0, clock=lambda: now[0]) as registry:
        now[0] += 3725
        await browser.goto(registry.url.removesuffix("/_geerpc_/registry") + "/")
        await browser.wait_for("document.getElementById('uptime').innerText !== '\u2013'")
        assert await browser.evaluate("document.getElementById('uptime').innerText") == "1 h 2 min"
    assert server.started_at is not None
    server.started_at -= 3725
    await browser.goto(f"http://{server.address.split('@')[1]}/debug/geerpc")
    assert "up 1 h 2 min" in await browser.text()
