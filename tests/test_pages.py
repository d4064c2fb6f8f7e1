"""Pages as a person sees them, in a real headless Chromium: the server's debug page."""

from __future__ import annotations


import pytest

import geerpc


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
