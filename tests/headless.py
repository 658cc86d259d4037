"""Drive Debian's chromium headless over the DevTools protocol (aiohttp's websocket client, which Ray
brings): open a page, wait until a JavaScript condition holds, return the page's HTML."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def page_html_when(url: str, condition: str, timeout: float = 120.0) -> str:
    """The HTML of ``url`` once ``condition`` (a JavaScript expression) is true, or when ``timeout`` passes."""
    browser = chromium()
    assert browser is not None
    # chromium's helper processes can still write to the profile while it is removed: never an error here
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                if time.monotonic() > deadline:
                    raise TimeoutError("chromium did not open its DevTools port")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            return asyncio.run(_drive(port, url, condition, timeout))
        finally:
            proc.terminate()
            proc.wait(30)


async def _drive(port: int, url: str, condition: str, timeout: float) -> str:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        pages = await _pages(session, port)
        async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            ids = iter(range(1, 1_000_000))

            async def call(method: str, **params: Any) -> Any:
                my_id = next(ids)
                await ws.send_str(json.dumps({"id": my_id, "method": method, "params": params}))
                while True:
                    message = json.loads((await ws.receive()).data)
                    if message.get("id") == my_id:
                        return message.get("result", {})

            async def evaluate(expression: str) -> Any:
                result = await call("Runtime.evaluate", expression=expression, returnByValue=True)
                return result.get("result", {}).get("value")

            await call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not await evaluate(f"Boolean({condition})"):
                await asyncio.sleep(0.2)
            html: str = await evaluate("document.documentElement.outerHTML")
            return html


async def _pages(session: Any, port: int, within: float = 60.0) -> list[dict[str, Any]]:
    """The browser's pages; asked again while it refuses (a loaded machine: the port file can come before the
    DevTools server answers, or before its first page exists)."""
    deadline, refused = time.monotonic() + within, None
    while True:
        try:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as answer:
                pages = [p for p in await answer.json() if p.get("type") == "page"]
            if pages:
                return pages
        except OSError as exc:
            refused = exc
        if time.monotonic() > deadline:
            raise TimeoutError("chromium has no page to drive") from refused
        await asyncio.sleep(0.2)
