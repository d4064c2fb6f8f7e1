"""The registry's dashboard: content negotiation over HTTP, then the page in a real headless Chromium."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

import aiohttp
import pytest
from browser import Browser

import geerpc
from geerpc.registry import Registry
from geerpc.registry.dashboard import prefers_html, render_dashboard

SERVER = "X-Geerpc-Server"
SERVERS = "X-Geerpc-Servers"
SERVICES = "X-Geerpc-Services"
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8"
GO = "tcp@127.0.0.1:9001"  # registers without services, as GeeRPC's Go servers do
LATE = "tcp@127.0.0.1:9003"

# What a person sees in the table: one list of cell texts per row.
ROWS = "[...document.querySelectorAll('#rows tr')].map(r => [...r.cells].map(c => c.innerText.trim()))"
VISIBLE = "(id) => !document.getElementById(id).hidden"


@pytest.fixture
async def registry():
    registry = Registry(timeout=300)
    await registry.start("127.0.0.1", 0)
    yield registry
    await registry.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession() as session:
        yield session


async def post(http: aiohttp.ClientSession, url: str, address: str, services: str | None = None) -> None:
    headers = {SERVER: address} if services is None else {SERVER: address, SERVICES: services}
    async with http.post(url, headers=headers) as response:
        assert response.status == 200


def root(url: str) -> str:
    return url.removesuffix("/_geerpc_/registry") + "/"


async def screenshot(browser: Browser, path: Path) -> None:
    """Save a screenshot; with GEERPC_SCREENSHOTS set, also copy it into that directory to look at."""
    await browser.screenshot(path)
    assert path.stat().st_size > 5000
    keep = os.environ.get("GEERPC_SCREENSHOTS")
    if keep:
        shutil.copy(path, Path(keep) / path.name)


# -- which representation a GET gets ------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "html"),
    [
        (BROWSER_ACCEPT, True),
        ("text/html", True),
        ("TEXT/HTML; charset=utf-8", True),
        ("", False),
        ("*/*", False),
        ("text/*", False),
        ("application/json", False),
        ("text/html;q=0.5, application/json", False),
        ("text/html, application/json", False),
        ("text/html, application/json;q=0.9", True),
        ("text/html;q=0", False),
        ("text/html;q=bogus", True),
    ],
)
def test_prefers_html_only_for_explicit_html_ranked_above_json(accept, html):
    assert prefers_html(accept) is html


async def test_browser_get_on_the_registry_path_is_the_page(registry, http):
    await post(http, registry.url, GO)
    async with http.get(registry.url, headers={"Accept": BROWSER_ACCEPT}) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert response.charset == "utf-8"
        page = await response.text()
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Vary"] == "Accept"
        assert response.headers[SERVERS] == GO  # GeeRPC's header rides along on every GET
    assert "<title>geerpc registry</title>" in page
    assert "innerHTML" not in page  # the page builds its DOM with textContent only


async def test_get_root_is_the_same_page_whatever_it_accepts(registry, http):
    async with http.get(registry.url, headers={"Accept": BROWSER_ACCEPT}) as response:
        page = await response.read()
    for accept in (BROWSER_ACCEPT, "*/*"):
        async with http.get(root(registry.url), headers={"Accept": accept}) as response:
            assert response.status == 200
            assert response.content_type == "text/html"
            assert "Content-Security-Policy" in response.headers
            assert await response.read() == page


@pytest.mark.parametrize("accept", [None, "*/*", "application/xml"])
async def test_plain_get_keeps_the_geerpc_header_contract(registry, http, accept):
    await post(http, registry.url, GO)
    await post(http, registry.url, LATE, "Arith")
    headers = {} if accept is None else {"Accept": accept}
    skip = ["Accept"] if accept is None else []  # a Go client sends no Accept at all
    async with http.get(registry.url, headers=headers, skip_auto_headers=skip) as response:
        assert response.status == 200
        assert response.headers[SERVERS] == f"{GO},{LATE}"
        assert response.content_type != "text/html"
        assert "Content-Security-Policy" not in response.headers
        assert await response.read() == b""


async def test_json_is_unchanged_for_clients_that_ask_for_it(registry, http):
    await post(http, registry.url, GO)
    async with http.get(registry.url, headers={"Accept": "application/json, text/html;q=0.5"}) as response:
        assert response.content_type == "application/json"
        assert [s["address"] for s in (await response.json())["servers"]] == [GO]


async def test_browser_get_with_a_current_index_is_answered_at_once(registry, http):
    params = {"index": str(registry.table.index), "wait": "30"}
    async with asyncio.timeout(2):  # a watch would wait 30 s; a browser gets the page now
        async with http.get(registry.url, params=params, headers={"Accept": BROWSER_ACCEPT}) as response:
            assert response.content_type == "text/html"


async def test_head_answers_headers_without_a_body(registry, http):
    await post(http, registry.url, GO)
    async with http.head(registry.url) as response:
        assert response.status == 200
        assert response.headers[SERVERS] == GO
        assert await response.read() == b""
    async with http.head(root(registry.url)) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        assert await response.read() == b""


async def test_other_paths_and_methods(registry, http):
    async with http.get(root(registry.url) + "favicon.ico") as response:
        assert response.status == 404
    async with http.post(root(registry.url), headers={SERVER: GO}) as response:
        assert response.status == 405
        assert set(response.headers["Allow"].split(",")) == {"GET", "HEAD"}
    async with http.request("PUT", registry.url) as response:
        assert response.status == 405
        assert set(response.headers["Allow"].split(",")) == {"DELETE", "GET", "HEAD", "POST"}


async def test_registry_at_the_root_path_negotiates_there(http):
    async with Registry(path="/") as registry:
        await post(http, registry.url, GO)
        async with http.get(registry.url, headers={"Accept": BROWSER_ACCEPT}) as response:
            assert response.content_type == "text/html"
        async with http.get(registry.url) as response:
            assert response.headers[SERVERS] == GO
            assert await response.read() == b""


def test_the_api_path_is_escaped_into_the_page():
    page = render_dashboard('/reg"<b>&').decode()
    assert 'data-api="/reg&quot;&lt;b&gt;&amp;"' in page
    assert "<b>" not in page


# -- connections: keepalive also bounds reading a request head --------------------------


async def _closed_by_server(reader: asyncio.StreamReader) -> bytes:
    received = b""
    async with asyncio.timeout(5):
        while chunk := await reader.read(4096):
            received += chunk
    return received


async def test_idle_connection_and_slow_request_head_are_closed_after_keepalive_timeout():
    async with Registry(keepalive_timeout=0.2) as registry:
        port = int(registry.url.split(":")[2].split("/")[0])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:  # half a request head, then nothing: dropped, not kept for an hour
            writer.write(b"GET /_geerpc_/registry HTTP/1.1\r\nHost: x\r\n")
            assert await _closed_by_server(reader) == b""
        finally:
            writer.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:  # one request answered, then idle: closed after the keepalive timeout
            writer.write(b"GET /_geerpc_/registry HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await _closed_by_server(reader)).startswith(b"HTTP/1.1 200")
        finally:
            writer.close()


# -- in the browser -------------------------------------------------------------------------


async def test_dashboard_follows_the_registry_live_without_reloading(browser, registry, http, arith, tmp_path):
    url = registry.url
    port = int(url.split(":")[2].split("/")[0])
    server = geerpc.Server()
    server.register(arith)
    fresh: Registry | None = None
    # Any Content-Security-Policy violation (a blocked script or style) is recorded.
    await browser.send("Page.addScriptToEvaluateOnNewDocument", source=(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation', e => __violations.push(e.violatedDirective));"))
    try:
        await server.start("127.0.0.1", 0, registry=url)
        await post(http, url, GO)
        await browser.goto(url)
        await browser.wait_for(f"{ROWS}.length === 2")
        text = await browser.text()
        assert "geerpc registry" in text
        assert "300 s" in text  # the timeout
        assert await browser.evaluate("document.getElementById('count').innerText") == "2"
        rows = {row[0]: row[1:] for row in await browser.evaluate(ROWS)}
        assert rows[server.address][0] == "Arith"
        assert rows[GO][0] == "any"
        for _, ago in rows.values():
            assert re.fullmatch(r"\d+ s ago", ago), ago
        # CSS and script both ran under the policy: a laid-out table, nothing blocked.
        assert await browser.evaluate("document.querySelector('table').getBoundingClientRect().width") > 600
        assert await browser.evaluate("window.__violations") == []

        await browser.evaluate("window.__marker = 1")
        await post(http, url, LATE, "Calc,Arith")
        await browser.wait_for(f"{ROWS}.some(r => r[0] === '{LATE}' && r[1] === 'Arith Calc')")
        await server.stop(grace=1.0)  # deregisters (DELETE)
        await browser.wait_for(f"!{ROWS}.some(r => r[0] === '{server.address}')")
        assert await browser.evaluate("document.getElementById('count').innerText") == "2"
        await screenshot(browser, tmp_path / "dashboard.png")

        await registry.stop()
        await browser.wait_for(f"({VISIBLE})('lost')")
        text = await browser.text()
        assert "Connection lost — retrying" in text
        assert "offline" in text
        assert GO in text  # the last list stays on screen, dimmed
        await screenshot(browser, tmp_path / "dashboard-lost.png")

        fresh = Registry(timeout=300)
        await fresh.start("127.0.0.1", port)  # the same address: the page recovers by itself
        await browser.wait_for(f"!({VISIBLE})('lost') && ({VISIBLE})('empty')", timeout=8)
        text = await browser.text()
        assert "No servers registered yet" in text
        assert "server.start(registry=url)" in text
        assert "live" in text
        assert await browser.evaluate("window.__marker") == 1  # never reloaded
        await browser.wait_for("getComputedStyle(document.querySelector('.card')).opacity === '1'")  # undimmed
        await screenshot(browser, tmp_path / "dashboard-empty.png")
    finally:
        await server.stop(grace=1.0)
        if fresh is not None:
            await fresh.stop()


async def test_old_heartbeats_get_a_badge(browser, http, tmp_path):
    # A fake registry clock ages the heartbeats; timeout 100 means a 33 s heartbeat period.
    now = [1000.0]
    async with Registry(timeout=100, clock=lambda: now[0]) as registry:
        await post(http, registry.url, "tcp@127.0.0.1:9100", "Arith")
        now[0] += 50
        await post(http, registry.url, LATE, "Arith")
        now[0] += 45
        await post(http, registry.url, GO)
        await browser.goto(root(registry.url))
        await browser.wait_for(f"{ROWS}.length === 3")
        badges = await browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#rows tr')].map(r => "
            "[r.cells[0].innerText, r.querySelector('.badge').hidden ? '' : r.querySelector('.badge').className]))")
        assert badges == {"tcp@127.0.0.1:9100": "badge expiring", LATE: "badge late", GO: ""}
        rows = {row[0]: row[2] for row in await browser.evaluate(ROWS)}
        assert re.fullmatch(r"expires in \d s\s+1 min 3\d s ago", rows["tcp@127.0.0.1:9100"]), rows
        assert re.fullmatch(r"late\s+4\d s ago", rows[LATE]), rows
        await screenshot(browser, tmp_path / "dashboard-badges.png")


NARROW = 420  # CSS pixels: a phone held upright, or a narrow side panel
UNIX = "unix@/var/run/geerpc/a-rather-long-directory-name/services/geerpc-calc.sock"


async def test_dashboard_reads_whole_in_a_420_px_window(browser, http, tmp_path):
    # Nothing may scroll sideways or be cut off: not the empty page, not a table of
    # servers with long addresses, many services and badges. Rows stack instead.
    now = [1000.0]
    servers = {
        "tcp@127.0.0.1:9100": ["Arith"],
        "tcp@127.0.0.1:9101": ["Arith", "Calc", "Store", "AVeryLongServiceNameForTheTable"],
        LATE: ["Cache"],
        GO: None,
        UNIX: ["Calc"],
    }
    async with Registry(timeout=100, clock=lambda: now[0]) as registry:
        await browser.set_viewport(NARROW)
        await browser.goto(root(registry.url))
        await browser.wait_for(f"({VISIBLE})('empty')")
        assert await browser.evaluate("window.innerWidth") == NARROW
        assert await browser.evaluate("document.documentElement.scrollWidth") <= NARROW
        assert await browser.cut_off() == []
        await screenshot(browser, tmp_path / "dashboard-narrow-empty.png")

        await post(http, registry.url, "tcp@127.0.0.1:9100", "Arith")
        now[0] += 50
        for address in (LATE, GO):
            await post(http, registry.url, address, None if servers[address] is None else ",".join(servers[address]))
        now[0] += 45  # 9100 is now expiring, LATE late
        for address in ("tcp@127.0.0.1:9101", UNIX):
            await post(http, registry.url, address, ",".join(servers[address]))
        await browser.wait_for(f"{ROWS}.length === {len(servers)}", timeout=8)
        assert await browser.evaluate("document.documentElement.scrollWidth") <= NARROW
        assert await browser.cut_off() == []
        rows = {row[0]: row[1:] for row in await browser.evaluate(ROWS)}
        assert set(rows) == set(servers)  # every address shown, whole
        for address, offered in servers.items():
            assert rows[address][0] == ("any" if offered is None else " ".join(sorted(offered)))
            assert re.search(r"\d+ s ago$", rows[address][1]), rows[address]
        assert rows["tcp@127.0.0.1:9100"][1].startswith("expires in")
        assert rows[LATE][1].startswith("late")
        # An address reads as one piece: a tcp address on a single line, and only a
        # path too long for the width may wrap.
        lines = await browser.evaluate(
            "Object.fromEntries([...document.querySelectorAll('#rows td.address code')]"
            ".map(c => [c.innerText, c.getClientRects().length]))")
        assert {address: n for address, n in lines.items() if address.startswith("tcp@")} == {
            address: 1 for address in servers if address.startswith("tcp@")}
        # Every row's parts are visible on screen, in reading order: address, services, heartbeat.
        tops = await browser.evaluate(
            "[...document.querySelectorAll('#rows tr')].map(r => [...r.cells].map(c => c.getBoundingClientRect().top))")
        assert all(top[0] < top[1] < top[2] for top in tops), tops
        await screenshot(browser, tmp_path / "dashboard-narrow.png")
