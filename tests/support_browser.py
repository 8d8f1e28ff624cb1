"""Debian's headless Chromium, driven through the DevTools protocol (CDP) over a WebSocket.

Real time, not virtual time: the page's own WebSocket traffic goes on while the test
reads the rendered text with ``Runtime.evaluate``. One browser per test; everything it
started (the process, its profile directory) is gone afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from .support_wait import wait_until

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--window-size=1280,800")


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def chromium_or_skip() -> str:
    path = chromium()
    if path is None:
        pytest.skip("Debian's chromium is not installed (./scripts/test.sh installs it)")
    return path


class Page:
    """One page target: ``evaluate`` JavaScript, ``goto`` a URL, take a ``screenshot``."""

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.console: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for raw in self._ws:
                msg = json.loads(raw)
                if "id" in msg and msg["id"] in self._pending:
                    self._pending.pop(msg["id"]).set_result(msg)
                elif msg.get("method") == "Runtime.consoleAPICalled":
                    args = msg["params"].get("args", [])
                    self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
                elif msg.get("method") == "Runtime.exceptionThrown":
                    self.console.append("exception: " + json.dumps(msg["params"]["exceptionDetails"])[:500])

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self._ids)
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[n] = reply
        await self._ws.send(json.dumps({"id": n, "method": method, "params": params}))
        msg = await asyncio.wait_for(reply, 30)
        if "error" in msg:
            raise RuntimeError(f"{method}: {msg['error']}")
        return dict(msg.get("result", {}))

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.wait_for("document.readyState === 'complete'", 15)

    async def wait_for(self, expression: str, timeout: float = 15.0, what: str | None = None) -> Any:
        """Poll ``expression`` in the page until it is truthy; return its value."""
        return await wait_until(lambda: self.evaluate(expression), timeout, f"the page to show {what or expression!r}",
                                poll=0.05, seen=lambda: f"console {self.console[-10:]}")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png")
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        self._reader.cancel()
        await self._ws.close()


@contextlib.asynccontextmanager
async def browser(extra_flags: Sequence[str] = ()) -> AsyncIterator[Page]:
    """Headless Chromium with one blank page, driven over CDP."""
    exe = chromium_or_skip()
    profile = Path(tempfile.mkdtemp(prefix="pi-agent-chromium-"))
    proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, *extra_flags, f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    page: Page | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start (exit {proc.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = await asyncio.to_thread(_json, f"http://127.0.0.1:{port}/json/list")
        target = next(t for t in targets if t.get("type") == "page")
        ws = await connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        page = Page(ws)
        await page.call("Page.enable")
        await page.call("Runtime.enable")
        yield page
    finally:
        if page is not None:
            with contextlib.suppress(Exception):
                await page.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(profile, ignore_errors=True)


def _json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())
