"""Drive headless Chromium over the DevTools protocol, on a loopback websocket.

No new dependency: aiohttp (already ours) speaks the websocket. Clicks are real input
events at the element's position, so what is tested is what a person's click does.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--remote-debugging-port=0", "--window-size=1280,900",
)  # fmt: skip
START_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 30.0


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One Chromium with a fresh profile; `open(url)` gives a tab's session id."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Browser:
        self._profile = tempfile.TemporaryDirectory(ignore_cleanup_errors=True)
        self.process = await asyncio.create_subprocess_exec(
            self.executable, *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank",
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            port, path = await self._endpoint()
            self._session = aiohttp.ClientSession()
            self._ws = await self._session.ws_connect(
                f"ws://127.0.0.1:{port}{path}", max_msg_size=0
            )
        except BaseException:
            await self._stop()
            raise
        return self

    async def _endpoint(self) -> tuple[str, str]:
        """Chromium writes the port it chose (and the browser's path) to its profile."""
        port_file = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.returncode is None:
            with contextlib.suppress(FileNotFoundError):
                words = port_file.read_text().split()
                if len(words) >= 2:
                    return words[0], words[1]
            await asyncio.sleep(0.05)
        raise RuntimeError("chromium did not start its DevTools endpoint")

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._ws.close()
        await self._session.close()
        await self._stop()

    async def _stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)  # its renderers too: its own group
        await asyncio.wait_for(self.process.wait(), timeout=START_TIMEOUT_S)
        self._profile.cleanup()

    async def call(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        await self._ws.send_json(message)
        while True:  # events (no id) and other answers are skipped
            reply = await self._ws.receive_json(timeout=CALL_TIMEOUT_S)
            if reply.get("id") == ident:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result

    async def open(self, url: str) -> str:
        """A new tab showing `url`, loaded (its initial about:blank does not count)."""
        target = await self.call("Target.createTarget", url="about:blank")
        attached = await self.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        session: str = attached["sessionId"]
        await self.call("Page.navigate", session, url=url)
        wanted = json.dumps(url.split("#")[0])
        await self.wait_for(
            session,
            f"location.href.split('#')[0] === {wanted} && document.readyState === 'complete'",
        )
        return session

    async def reload(self, session: str) -> None:
        """Reload the tab, as F5 does, and wait for the new document to be loaded."""
        await self.evaluate(session, "window.__before_reload = true")
        await self.call("Page.reload", session)
        await self.wait_for(
            session, "!window.__before_reload && document.readyState === 'complete'"
        )

    async def wait_for(self, session: str, expression: str) -> Any:
        """Poll until `expression` is truthy; its value. Pages load and images decode on
        their own time: a fixed sleep would be either flaky or slow."""
        deadline = time.monotonic() + CALL_TIMEOUT_S
        while time.monotonic() < deadline:
            if value := await self.evaluate(session, expression):
                return value
            await asyncio.sleep(0.05)
        raise RuntimeError(f"still false after {CALL_TIMEOUT_S}s: {expression}")

    async def evaluate(self, session: str, expression: str) -> Any:
        result = await self.call(
            "Runtime.evaluate", session, expression=expression, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def click(self, session: str, selector: str) -> None:
        """A real left click (press and release) at the middle of the element."""
        box = await self.evaluate(
            session,
            f"(function () {{ var r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()",
        )
        x, y = box
        for kind in ("mousePressed", "mouseReleased"):
            await self.call(
                "Input.dispatchMouseEvent",
                session,
                type=kind,
                x=x,
                y=y,
                button="left",
                clickCount=1,
            )

    async def screenshot(self, session: str, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", session, format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

    async def choose(self, session: str, selector: str, value: str) -> None:
        """Pick `value` in a <select> as a person does with the keyboard: focus it, then
        arrow up or down to the option (a closed listbox changes, and says `change`, at
        each step), so the page sees the very events a choice makes."""
        steps = await self.evaluate(
            session,
            f"(function () {{ var s = document.querySelector({json.dumps(selector)}); s.focus();"
            f" return Array.from(s.options).findIndex(o => o.value === {json.dumps(value)})"
            " - s.selectedIndex; })()",
        )
        key, code = ("ArrowDown", 40) if steps > 0 else ("ArrowUp", 38)
        for _ in range(abs(steps)):
            for kind in ("rawKeyDown", "keyUp"):
                await self.call(
                    "Input.dispatchKeyEvent", session, type=kind, key=key, code=key,
                    windowsVirtualKeyCode=code,
                )  # fmt: skip
