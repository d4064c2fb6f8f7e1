"""The debug page served at ``GET /debug/geerpc`` on the RPC port (GeeRPC day 5).

Pure rendering: a ``ServerSnapshot`` in, HTML out. Every name that comes from user code is
escaped. The page is static (no scripts); reload it to see new numbers.
"""

from __future__ import annotations

import html

from .service import LATENCY_WINDOW
from .snapshot import MethodStats, ServerSnapshot, percentile

__all__ = ["render_debug_page", "percentile", "duration"]

_STYLE = """
:root { color-scheme: light dark; --line: #d0d7de; --muted: #57606a; --accent: #0969da; --bad: #cf222e; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; padding: 2rem;
       max-width: 72rem; margin-inline: auto; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; } h1 span { color: var(--accent); }
.facts { color: var(--muted); margin: 0 0 2rem; display: flex; gap: 1.5rem; flex-wrap: wrap; }
.facts b { color: CanvasText; font-weight: 600; }
section { margin-bottom: 2rem; }
h2 { font-size: 1.15rem; margin: 0 0 .5rem; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
table { width: 100%; border-collapse: collapse; font-size: .92rem; table-layout: fixed; }
th:first-child { width: 38%; } th:nth-child(2) { width: 16%; }
td:first-child code { overflow-wrap: anywhere; }
th { text-align: left; font-weight: 600; color: var(--muted); border-bottom: 2px solid var(--line);
     padding: .4rem .6rem; white-space: nowrap; }
td { border-bottom: 1px solid var(--line); padding: .45rem .6rem; vertical-align: top; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: .88rem; }
.kind { font-size: .78rem; padding: .05rem .45rem; border-radius: 1rem; border: 1px solid var(--line);
        color: var(--muted); white-space: nowrap; }
.errors { color: var(--bad); font-weight: 600; }
footer { color: var(--muted); font-size: .85rem; }
"""


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.2f} ms"


def duration(seconds: float) -> str:
    """A duration as the registry dashboard shows one: "42 s", "3 min 5 s", "2 h 1 min", "1 d 4 h"."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 86400} d {s % 86400 // 3600} h"


_KINDS = {"def": "def · thread", "async inline": "async · inline", "async": "async"}


def _method_row(method: MethodStats) -> str:
    short = method.name.rpartition(".")[2]
    shown = f"{short}{method.signature if method.signature is not None else '(...)'}"
    errors = f'<span class="errors">{method.errors}</span>' if method.errors else "0"
    return (
        f"<tr><td><code>{html.escape(shown)}</code></td><td><span class=\"kind\">{_KINDS[method.kind]}</span></td>"
        f'<td class="num">{method.calls}</td><td class="num">{errors}</td>'
        f'<td class="num">{_ms(method.p50)}</td><td class="num">{_ms(method.p99)}</td></tr>'
    )


def render_debug_page(snapshot: ServerSnapshot) -> str:
    """The whole HTML page for a server's ``snapshot()``."""
    sections = []
    for service in snapshot.services:
        rows = "".join(_method_row(method) for method in service.methods)
        sections.append(
            f"<section><h2>{html.escape(service.name)}</h2><table><thead><tr><th>method</th><th>kind</th>"
            f'<th class="num">calls</th><th class="num">errors</th><th class="num">p50</th>'
            f'<th class="num">p99</th></tr></thead><tbody>{rows}</tbody></table></section>'
        )
    if not sections:
        sections.append("<p>No services are registered.</p>")
    address = html.escape(snapshot.address or "not listening")
    facts = (
        f"<span>address <b>{address}</b></span><span>up <b>{duration(snapshot.uptime)}</b></span>"
        f"<span>connections <b>{len(snapshot.connections)}</b></span>"
        f"<span>calls in flight <b>{snapshot.calls_in_flight}</b></span>"
        f"<span>protocol errors <b>{snapshot.protocol_errors}</b></span>"
    )
    return (
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>geerpc · {address}</title><style>{_STYLE}</style></head><body>"
        f"<h1><span>geerpc</span> services</h1><p class=\"facts\">{facts}</p>"
        + "".join(sections)
        + f"<footer>Calls and errors count since start; p50 and p99 cover each method's last "
        f"{LATENCY_WINDOW} calls. Reload for fresh numbers.</footer></body></html>"
    )
