"""A headless Chromium driven over the DevTools protocol, for testing pages as people see them.

No selenium: Chromium starts with ``--remote-debugging-port=0``, the port it picked is
read from ``DevToolsActivePort`` in its profile, and one page is driven over an aiohttp
websocket. ``text()`` is what a person reads (``innerText`` only covers rendered,
visible text); ``wait_for()`` polls a JavaScript condition with a deadline.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900", "--remote-debugging-port=0",
]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


_CUT_OFF = """(() => {
  const width = document.documentElement.clientWidth;
  const name = (node) => node.nodeType === Node.TEXT_NODE ? JSON.stringify(node.textContent.trim().slice(0, 40))
    : node.tagName.toLowerCase() + (node.id ? "#" + node.id : "") + (node.className ? "." + node.className : "");
  const tiny = (box) => box.clientWidth <= 1 && box.clientHeight <= 1;
  const clippers = (node) => {
    const boxes = [];
    for (let box = node.parentElement; box && box !== document.documentElement; box = box.parentElement) {
      if (getComputedStyle(box).overflowX !== "visible") boxes.push(box);
    }
    return boxes;
  };
  const problems = [];
  const check = (node, rect) => {
    if (rect.width === 0 && rect.height === 0) return;  // not rendered
    const boxes = clippers(node);
    if (boxes.some(tiny)) return;  // inside a box hidden on purpose (kept for screen readers)
    if (rect.left < -0.5 || rect.right > width + 0.5) {
      problems.push(`${name(node)} spans ${rect.left}..${rect.right}, the page ${width}`);
    }
    for (const box of boxes) {
      const outer = box.getBoundingClientRect();
      if (rect.left < outer.left - 0.5 || rect.right > outer.right + 0.5) {
        problems.push(`${name(node)} spans ${rect.left}..${rect.right}, out of ${name(box)} ${outer.left}..${outer.right}`);
      }
    }
  };
  for (const element of document.body.querySelectorAll("*")) {
    check(element, element.getBoundingClientRect());
    const style = getComputedStyle(element);
    if (style.overflowX !== "visible" && element.scrollWidth > element.clientWidth + 1
        && !tiny(element) && !clippers(element).some(tiny)) {
      problems.push(`${name(element)} clips its content: ${element.scrollWidth} > ${element.clientWidth}`);
    }
  }
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let text = walker.nextNode(); text; text = walker.nextNode()) {
    if (!text.textContent.trim()) continue;
    const range = document.createRange();
    range.selectNodeContents(text);
    for (const rect of range.getClientRects()) check(text, rect);
  }
  return problems;
})()"""


class Browser:
    """One Chromium and one page. ``extra_flags`` are added to ``CHROMIUM_FLAGS`` (such as
    ``--ignore-certificate-errors-spki-list=...`` to trust a test's own certificate)."""

    def __init__(self, executable: str, extra_flags: Sequence[str] = ()) -> None:
        self._executable = executable
        self._flags = [*CHROMIUM_FLAGS, *extra_flags]
        self._profile = tempfile.mkdtemp(prefix="geerpc-chromium-")
        self._proc: asyncio.subprocess.Process | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 20.0) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            self._executable, *self._flags, f"--user-data-dir={self._profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        active = Path(self._profile) / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (active.exists() and active.read_text().count("\n") >= 1):
            if self._proc.returncode is not None or loop.time() > deadline:
                raise RuntimeError("chromium did not open its DevTools port")
            await asyncio.sleep(0.05)
        port = int(active.read_text().splitlines()[0])
        self._http = aiohttp.ClientSession()
        while True:  # the page target appears shortly after the port
            async with self._http.get(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in await response.json() if t.get("type") == "page"]
            if pages or loop.time() > deadline:
                break
            await asyncio.sleep(0.05)
        if not pages:
            raise RuntimeError("chromium has no page target")
        self._ws = await self._http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
        self._reader = asyncio.ensure_future(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._replies.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
            else:
                self._events.put_nowait(data)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        ident = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[ident] = future
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        async with asyncio.timeout(15):
            reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def goto(self, url: str) -> None:
        """Navigate and wait for the load event."""
        while not self._events.empty():
            self._events.get_nowait()
        await self.send("Page.navigate", url=url)
        async with asyncio.timeout(15):
            while (await self._events.get()).get("method") != "Page.loadEventFired":
                pass

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    async def text(self) -> str:
        """The page's text as rendered for a reader."""
        return await self.evaluate("document.body.innerText")

    async def wait_for(self, expression: str, timeout: float = 5.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"still false after {timeout} s: {expression}")
            await asyncio.sleep(0.05)

    async def set_viewport(self, width: int, height: int = 900) -> None:
        """Lay the page out as in a window ``width`` CSS pixels wide (scroll bar included)."""
        await self.send("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=False)

    async def cut_off(self) -> list[str]:
        """What a reader cannot see whole: each rendered element or piece of text that
        reaches past the page's width or out of a box that clips it (``overflow`` not
        visible), and each clipping box whose content is wider than the box."""
        return await self.evaluate(_CUT_OFF)

    async def screenshot(self, path: str | os.PathLike[str]) -> None:
        data = await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        Path(path).write_bytes(base64.b64decode(data["data"]))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._http is not None:
            await self._http.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                async with asyncio.timeout(5):
                    await self._proc.wait()
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)
