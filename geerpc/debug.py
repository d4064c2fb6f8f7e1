"""The debug page served at ``GET /debug/geerpc`` on the RPC port (GeeRPC day 5).

Pure rendering: server state in, HTML out. Every name that comes from user code is
escaped. The page is static (no scripts); reload it to see new numbers.
"""

from __future__ import annotations

import html
import time
from typing import TYPE_CHECKING

from .service import LATENCY_WINDOW, Method

if TYPE_CHECKING:
    from .server import Server

__all__ = ["render_debug_page", "percentile"]

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


def percentile(values: list[float], fraction: float) -> float | None:
    """The value at ``fraction`` (0..1) of the sorted values; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, int(fraction * len(ordered)))
    return ordered[index]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f} µs"
    return f"{seconds * 1e3:.2f} ms"


def _kind(method: Method) -> str:
    if not method.is_async:
        return "def · thread"
    return "async · inline" if method.inline else "async"


def _method_row(name: str, method: Method) -> str:
    signature = method.signature
    shown = f"{name}{signature}" if signature is not None else f"{name}(...)"
    latencies = list(method.latencies)
    errors = f'<span class="errors">{method.errors}</span>' if method.errors else "0"
    return (
        f"<tr><td><code>{html.escape(shown)}</code></td><td><span class=\"kind\">{_kind(method)}</span></td>"
        f'<td class="num">{method.calls}</td><td class="num">{errors}</td>'
        f'<td class="num">{_ms(percentile(latencies, 0.5))}</td><td class="num">{_ms(percentile(latencies, 0.99))}</td></tr>'
    )


def render_debug_page(server: Server) -> str:
    """The whole HTML page for ``server``."""
    sections = []
    for service_name in sorted(server._services):
        service = server._services[service_name]
        rows = "".join(_method_row(name, service.methods[name]) for name in sorted(service.methods))
        sections.append(
            f"<section><h2>{html.escape(service_name)}</h2><table><thead><tr><th>method</th><th>kind</th>"
            f'<th class="num">calls</th><th class="num">errors</th><th class="num">p50</th>'
            f'<th class="num">p99</th></tr></thead><tbody>{rows}</tbody></table></section>'
        )
    if not sections:
        sections.append("<p>No services are registered.</p>")
    uptime = time.monotonic() - server.started_at if server.started_at else 0.0
    address = html.escape(server.address or "not listening")
    facts = (
        f"<span>address <b>{address}</b></span><span>up <b>{uptime:.0f} s</b></span>"
        f"<span>connections <b>{len(server._connections)}</b></span>"
        f"<span>calls in flight <b>{sum(c.in_flight for c in server._connections)}</b></span>"
        f"<span>protocol errors <b>{server.protocol_errors}</b></span>"
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
