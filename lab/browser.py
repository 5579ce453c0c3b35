"""`Browser`: Debian's headless Chromium driven over the DevTools protocol on loopback.

    async with browser(tmp_dir) as b:                  # BrowserMissing when chromium is not installed
        page = await b.open("http://127.0.0.1:PORT/")  # a tab, loaded
        await page.evaluate("document.title")          # a JSON value, or BrowserError (a JS exception)
        await page.screenshot(tmp_dir / "page.png")

Chromium runs as our child (lab/process.py) with a profile of its own in `directory`, no sandbox
(these machines run as root) and its DevTools port chosen by itself (`--remote-debugging-port=0`,
read back from `DevToolsActivePort`). The protocol is JSON over a WebSocket (aiohttp's client).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from lab.process import Child
from lab.wait import wait_until

CHROMIUM = "chromium"
_START_TIMEOUT = 30.0


class BrowserMissing(RuntimeError):
    """Chromium is not installed (Debian package `chromium`)."""


class BrowserError(RuntimeError):
    """The browser refused a command or the page's script raised."""


class Page:
    """One tab, its DevTools session open."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        """One command and its result (events arriving meanwhile are dropped)."""
        ident = next(self._ids)
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = await self._ws.receive(timeout=30)
            if message.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools closed the session ({message.type.name})")
            data = json.loads(message.data)
            if data.get("id") == ident:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error'].get('message')}")
                result: dict[str, Any] = data.get("result", {})
                return result

    async def evaluate(self, expression: str) -> Any:
        """The value of a JS expression (awaited if a promise), as JSON."""
        out = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in out:
            raise BrowserError(f"the page raised: {out['exceptionDetails'].get('text')}")
        return out.get("result", {}).get("value")

    async def screenshot(self, path: Path) -> Path:
        """A PNG of the whole page (not just the viewport)."""
        metrics = await self.send("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))
        return path


class Browser:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._child = Child("chromium", log_file=directory / "chromium.log", grace=5.0)
        self._base = ""
        self._session: aiohttp.ClientSession | None = None
        self._sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def start(self) -> None:
        binary = shutil.which(CHROMIUM)
        if binary is None:
            raise BrowserMissing("chromium is not installed (Debian package chromium)")
        profile = self.directory / "profile"
        profile.mkdir(parents=True, exist_ok=True)
        port_file = profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self._child.start(
            [
                binary,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={profile}",
                "--window-size=1400,900",
                "about:blank",
            ]
        )
        await self._child.wait_ready(
            "chromium's DevTools port", port_file.exists, _START_TIMEOUT, interval=0.1
        )
        port = port_file.read_text().split("\n", 1)[0].strip()
        self._base = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def open(self, url: str) -> Page:
        """A new tab on `url`, once its load event fired."""
        assert self._session is not None, "start() first"
        async with self._session.put(f"{self._base}/json/new?about:blank") as response:
            target = await response.json()
        ws = await self._session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0)
        self._sockets.append(ws)
        page = Page(ws)
        await page.send("Page.enable")
        await page.send("Page.navigate", url=url)

        async def loaded() -> bool:
            return bool(await page.evaluate("document.readyState === 'complete'"))

        await wait_until(f"{url} to load", loaded, 20, interval=0.1)
        return page

    async def stop(self) -> None:
        """Close the sessions and stop Chromium. Safe twice and before `start()`."""
        for ws in self._sockets:
            await ws.close()
        self._sockets.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._child.stop()


@asynccontextmanager
async def browser(directory: Path) -> AsyncIterator[Browser]:
    b = Browser(directory)
    try:
        await b.start()
        yield b
    finally:
        await b.stop()
