"""The registry's dashboard: one self-contained HTML page, and when to serve it.

Pure data and functions, no I/O: ``server.py`` serves the page to browsers at the
registry path (when the Accept header prefers HTML) and at ``/``. The page needs no
external resource: CSS and JavaScript are inline, allowed by hash in the
Content-Security-Policy, and the script reads the registry's own JSON API (a watch
with ``index`` and a short ``wait``) to stay current without reloading. It builds
the table with ``textContent`` only, so nothing a server sends is parsed as HTML.
This module imports nothing from aiohttp or the rest of geerpc.
"""

from __future__ import annotations

import base64
import hashlib
import html
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

__all__ = ["CONTENT_SECURITY_POLICY", "PAGE_HEADERS", "accepts_json", "prefers_html", "render_dashboard"]

# What a browser announces; application/xhtml+xml only ever comes along with text/html.
_HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})


def prefers_html(accept: str) -> bool:
    """True when an ``Accept`` header ranks HTML above JSON, as a browser's does.

    Only an explicit ``text/html`` counts: no header, or ``*/*`` (what curl and most
    HTTP libraries send) keep GeeRPC's header-only answer, and a client that lists
    ``application/json`` at least as high still gets JSON.
    """
    html_q, json_q = _qualities(accept)
    return html_q > 0 and html_q > json_q


def accepts_json(accept: str) -> bool:
    """True when an ``Accept`` header lists ``application/json`` (with a weight above 0).

    Only an explicit listing counts, so ``*/*`` and no header keep GeeRPC's empty body.
    """
    return _qualities(accept)[1] > 0


def _qualities(accept: str) -> tuple[float, float]:
    """The highest weights an ``Accept`` header gives HTML and JSON (0: not listed).

    Media types are case-insensitive (RFC 9110, section 8.3.1): ``Application/JSON``
    is JSON.
    """
    html_q = json_q = 0.0
    for item in accept.split(","):
        media, _, params = item.partition(";")
        media = media.strip().lower()
        if media == "application/json":
            json_q = max(json_q, _quality(params))
        elif media in _HTML_TYPES:
            html_q = max(html_q, _quality(params))
    return html_q, json_q


def _quality(params: str) -> float:
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip()[:8])
            except ValueError:
                return 1.0  # a garbled weight: count the type as plainly listed
            return q if 0.0 <= q <= 1.0 else 1.0
    return 1.0


_STYLE: Final = """
:root { color-scheme: light dark;
  --bg: #f6f8fa; --card: #ffffff; --head: #f6f8fa; --text: #1f2328; --muted: #59636e;
  --line: #d1d9e0; --accent: #0969da; --chip: #ddf4ff; --chip-text: #0550ae;
  --green: #1a7f37; --amber: #9a6700; --amber-bg: #fff8c5; --red: #cf222e; --red-bg: #ffebe9; }
@media (prefers-color-scheme: dark) { :root {
  --bg: #0d1117; --card: #151b23; --head: #1a212a; --text: #e6edf3; --muted: #9198a1;
  --line: #30363d; --accent: #4493f8; --chip: #122d4f; --chip-text: #79c0ff;
  --green: #3fb950; --amber: #d29922; --amber-bg: #2e2510; --red: #f85149; --red-bg: #2d1315; } }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--text);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
.wrap { max-width: 62rem; margin: 0 auto; padding: 2.5rem 1.5rem 3rem; }
code, .chip, .where { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
header { display: flex; justify-content: space-between; align-items: flex-start; gap: 1rem;
  margin-bottom: 1.5rem; }
h1 { font-size: 1.6rem; line-height: 1.2; margin: 0; letter-spacing: -0.01em; }
h1 .brand { color: var(--accent); }
.where { margin: .3rem 0 0; color: var(--muted); font-size: .85rem; overflow-wrap: anywhere; }
.status { display: inline-flex; align-items: center; gap: .5rem; padding: .3rem .8rem; flex: none;
  border: 1px solid var(--line); border-radius: 999px; background: var(--card); color: var(--muted);
  font-size: .85rem; }
.dot { width: .55rem; height: .55rem; border-radius: 50%; background: var(--muted); }
.status.live .dot { background: var(--green);
  box-shadow: 0 0 0 3px color-mix(in srgb, var(--green) 22%, transparent); }
.status.lost { color: var(--red); border-color: color-mix(in srgb, var(--red) 45%, var(--line)); }
.status.lost .dot { background: var(--red); }
.notice { margin: 0 0 1.25rem; padding: .75rem 1rem; border-radius: .6rem; color: var(--text);
  background: var(--red-bg); border: 1px solid color-mix(in srgb, var(--red) 40%, transparent); }
.notice strong { color: var(--red); }
.facts { display: grid; grid-template-columns: repeat(3, minmax(0, 1fr)); gap: 1rem;
  margin-bottom: 1.5rem; }
.fact, .card { background: var(--card); border: 1px solid var(--line); border-radius: .6rem; }
.fact { padding: .9rem 1.1rem; }
.label { display: block; color: var(--muted); font-size: .72rem; font-weight: 600;
  letter-spacing: .07em; text-transform: uppercase; }
.value { display: block; font-size: 1.65rem; font-weight: 600; line-height: 1.3;
  font-variant-numeric: tabular-nums; }
.sub { display: block; color: var(--muted); font-size: .8rem; }
.card { overflow: hidden; transition: opacity .2s; }
main.stale .card { opacity: .55; }
table { width: 100%; border-collapse: collapse; }
th { text-align: left; padding: .6rem 1.1rem; background: var(--head); color: var(--muted);
  border-bottom: 1px solid var(--line); font-size: .72rem; font-weight: 600;
  letter-spacing: .07em; text-transform: uppercase; }
td { padding: .7rem 1.1rem; border-top: 1px solid var(--line); vertical-align: middle; }
tbody tr:first-child td { border-top: 0; }
tbody tr:hover { background: color-mix(in srgb, var(--accent) 5%, transparent); }
th.num, td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
td.address { width: 34%; } td.address code { font-size: .9rem; overflow-wrap: anywhere; }
.chip { display: inline-block; margin: .1rem .3rem .1rem 0; padding: .05rem .55rem;
  border-radius: 999px; background: var(--chip); color: var(--chip-text); font-size: .82rem; }
.any { color: var(--muted); font-style: italic; cursor: help; }
.badge { display: inline-block; margin-right: .6rem; padding: 0 .5rem; border-radius: 999px;
  font-size: .72rem; font-weight: 600; line-height: 1.35rem; vertical-align: 1px; }
.badge.late { color: var(--amber); background: var(--amber-bg); }
.badge.expiring { color: var(--red); background: var(--red-bg); }
.empty { padding: 3rem 1.5rem; text-align: center; }
.empty-title { margin: 0 0 .4rem; font-size: 1.1rem; font-weight: 600; }
.hint { margin: 0; color: var(--muted); font-size: .92rem; }
.hint code { padding: .1rem .35rem; border-radius: .3rem; background: var(--head);
  border: 1px solid var(--line); font-size: .8rem; white-space: nowrap; }
footer { margin-top: 1rem; color: var(--muted); font-size: .8rem; overflow-wrap: anywhere; }
[hidden] { display: none !important; }
@media (max-width: 40rem) {
  .wrap { padding: 1.5rem 1rem; } header { flex-direction: column; }
  .facts { grid-template-columns: 1fr 1fr; gap: .75rem; } .fact { padding: .75rem .9rem; }
  .hint code { white-space: normal; overflow-wrap: anywhere; }
  /* Too narrow for three columns: each server becomes a stacked block, its address
     on a line of its own, then its services, then its heartbeat. The header row
     stays for screen readers only. */
  #table, #table tbody, #table tr, #table td { display: block; width: auto; }
  #table thead { position: absolute; width: 1px; height: 1px; overflow: hidden; clip-path: inset(50%); }
  #table tr { padding: .75rem 1rem; border-top: 1px solid var(--line); }
  #table tbody tr:first-child { border-top: 0; }
  #table td { padding: .15rem 0; border: 0; }
  #table td.num { text-align: left; white-space: normal; }
  #table td.beat { font-size: .9rem; }
  #table td.beat::before { content: "Last heartbeat "; color: var(--muted); } }
"""

_SCRIPT: Final = """
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const api = new URL(document.body.dataset.api, location.href);
  // A registry with a read token serves this page to ?token=...; the page then sends
  // it as a header, so it never rides in the API's URLs.
  const token = new URLSearchParams(location.search).get("token");
  const auth = token ? { Authorization: "Bearer " + token } : {};
  // One loop: a watch (index + wait) answers at once on a change, and after WAIT
  // seconds otherwise, which refreshes the heartbeat ages that often.
  const WAIT = 2;
  const state = { data: null, at: 0, index: null, rows: [], online: null, lastOk: null };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // The same format as the debug page on the RPC port (geerpc.debug.duration).
  function duration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  // The period geerpc's heartbeat uses for this timeout (registry.contract.period_for);
  // a server silent for longer, plus a little slack, has missed a beat.
  function period(timeout) { return timeout >= 180 ? timeout - 60 : timeout / 3; }

  function badge(age, timeout) {
    if (!(timeout > 0)) return null;  // 0: servers never expire
    const left = timeout - age;
    if (left <= timeout / 10) return ["expiring", "expires in " + duration(left)];
    const beat = period(timeout);
    if (age > beat + Math.min(5, beat / 2)) return ["late", "late"];
    return null;
  }

  function build(data) {
    const rows = [];
    const body = document.createDocumentFragment();
    for (const server of data.servers) {
      const address = el("td", "address");
      address.append(el("code", "", server.address));
      const services = el("td", "services");
      if (server.services === null) {
        const any = el("span", "any", "any");
        any.title = "Declared no services, so it counts as offering every one (as GeeRPC's Go servers do)";
        services.append(any);
      } else if (server.services.length === 0) {
        services.append(el("span", "any", "none"));
      } else {
        // Spaces between the chips, so the names read (and copy) as words.
        for (const name of server.services) services.append(el("span", "chip", name), " ");
      }
      const beat = el("td", "num beat");
      const mark = el("span", "badge");
      const ago = el("span", "ago");
      beat.append(mark, " ", ago);
      const tr = el("tr");
      tr.append(address, services, beat);
      body.append(tr);
      rows.push({ age: server.age, mark, ago });
    }
    $("rows").replaceChildren(body);
    state.rows = rows;
  }

  function tick() {
    const data = state.data;
    if (!data) return;
    const elapsed = (performance.now() - state.at) / 1000;
    for (const row of state.rows) {
      const age = row.age + elapsed;
      row.ago.textContent = duration(age) + " ago";
      const flag = badge(age, data.timeout);
      row.mark.hidden = flag === null;
      if (flag !== null) {
        row.mark.className = "badge " + flag[0];
        row.mark.textContent = flag[1];
      }
    }
    $("uptime").textContent = duration(data.uptime + elapsed);
  }

  function show(data) {
    const rebuild = !state.data || data.index !== state.data.index
      || data.servers.length !== state.rows.length;
    state.data = data;
    state.at = performance.now();
    if (rebuild) {
      build(data);
    } else {
      data.servers.forEach((server, i) => { state.rows[i].age = server.age; });
    }
    const n = data.servers.length;
    $("count").textContent = String(n);
    $("count-sub").textContent = "listed and alive";
    $("timeout").textContent = data.timeout > 0 ? data.timeout + " s" : "never";
    $("timeout-sub").textContent = data.timeout > 0 ? "of silence before a server is dropped" : "servers are never dropped";
    $("table").hidden = n === 0;
    $("empty").hidden = n !== 0;
    document.title = n + (n === 1 ? " server" : " servers") + " \\u00b7 geerpc registry";
    tick();
  }

  function setOnline(online, reason) {
    state.online = online;
    const status = $("status");
    status.className = "status " + (online ? "live" : "lost");
    $("status-text").textContent = online ? "live" : "offline";
    $("lost").hidden = online;
    $("main").classList.toggle("stale", !online);
    if (!online) {
      const since = state.lastOk ? " Showing the list as of " + state.lastOk.toLocaleTimeString() + "." : "";
      $("lost-detail").textContent = reason + "." + since;
    }
  }

  async function run() {
    let failures = 0;
    for (;;) {
      const started = performance.now();
      const url = new URL(api);
      if (state.index !== null) {
        url.searchParams.set("index", String(state.index));
        url.searchParams.set("wait", String(WAIT));
      }
      try {
        const response = await fetch(url, {
          headers: { Accept: "application/json", ...auth }, cache: "no-store",
          signal: AbortSignal.timeout((WAIT + 8) * 1000),
        });
        if (response.status === 429) {  // too many watchers: poll instead
          state.index = null;
          await sleep(WAIT * 1000);
          continue;
        }
        if (!response.ok) throw new Error("the registry answered " + response.status);
        const data = await response.json();
        failures = 0;
        state.index = data.index;
        state.lastOk = new Date();
        show(data);
        if (state.online !== true) setOnline(true);
      } catch (error) {
        failures += 1;
        state.index = null;  // after a gap, ask for the list at once
        const reason = error instanceof TypeError || error.name === "TimeoutError"
          ? "The registry at " + api.host + " does not answer" : String(error.message || error);
        setOnline(false, reason);
        await sleep(Math.min(2000, 250 * 2 ** failures));
      }
      // A registry that is shutting down answers watches at once: never spin.
      await sleep(Math.max(0, 100 - (performance.now() - started)));
    }
  }

  for (const node of document.querySelectorAll(".api-url")) node.textContent = api.href;
  $("where").textContent = api.host + api.pathname;
  setInterval(tick, 1000);
  run();
})();
"""

_BODY: Final = """<div class="wrap">
<header>
  <div><h1><span class="brand">geerpc</span> registry</h1><p class="where" id="where"></p></div>
  <div id="status" class="status"><span class="dot"></span><span id="status-text">connecting</span></div>
</header>
<div id="lost" class="notice" role="alert" hidden><strong>Connection lost \u2014 retrying\u2026</strong>
  <span id="lost-detail"></span></div>
<section class="facts" aria-label="Summary">
  <div class="fact"><span class="label">Servers</span><span class="value" id="count">\u2013</span>
    <span class="sub" id="count-sub">listed and alive</span></div>
  <div class="fact"><span class="label">Timeout</span><span class="value" id="timeout">\u2013</span>
    <span class="sub" id="timeout-sub">of silence before a server is dropped</span></div>
  <div class="fact"><span class="label">Uptime</span><span class="value" id="uptime">\u2013</span>
    <span class="sub">since this registry started</span></div>
</section>
<main id="main"><div class="card">
  <table id="table" hidden>
    <thead><tr><th>Address</th><th>Services</th><th class="num">Last heartbeat</th></tr></thead>
    <tbody id="rows"></tbody>
  </table>
  <div id="empty" class="empty" hidden>
    <p class="empty-title">No servers registered yet</p>
    <p class="hint">Register with <code>server.start(registry=url)</code>, or POST
      <code>X-Geerpc-Server: tcp@host:port</code> to the URL above.</p>
  </div>
</div></main>
<footer>Updates live from the registry's JSON at <span class="api-url"></span>. A <em>late</em> server
  has missed a heartbeat; an <em>expiring</em> one is in the last tenth of the timeout.</footer>
</div>"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


# The inline style and script are allowed by hash, nothing else by default: data only
# flows from the registry's own origin, and nobody may frame the page.
CONTENT_SECURITY_POLICY: Final = (
    f"default-src 'none'; script-src {_sha256(_SCRIPT)}; style-src {_sha256(_STYLE)}; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

PAGE_HEADERS: Final[Mapping[str, str]] = MappingProxyType({
    "Content-Type": "text/html; charset=utf-8",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
})


def render_dashboard(api_path: str) -> bytes:
    """The dashboard page, reading the registry's JSON at ``api_path`` (same origin)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,"><title>geerpc registry</title>'
        f"<style>{_STYLE}</style></head>"
        f'<body data-api="{html.escape(api_path, quote=True)}">{_BODY}'
        f"<script>{_SCRIPT}</script></body></html>"
    ).encode()
