"""A headless Chromium driven over the DevTools protocol, for the browser tests of the HTML report.

Chromium comes from the system (Debian's ``chromium`` package); the protocol runs over a websocket
on 127.0.0.1 only (``websocket-client``). :func:`chromium_or_skip` skips a test, saying why, where
either is missing.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Chromium", "chromium_or_skip"]


def chromium_or_skip() -> str:
    """The Chromium executable, or skip the calling test with the reason."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("chromium not found (apt-get install -y chromium; .ci/run installs it)")
    pytest.importorskip("websocket", reason="websocket-client not installed (pip install -e '.[test]')")
    return exe


class Chromium:
    """One headless Chromium with one page; a context manager.

    Attributes:
        errors: console errors, uncaught exceptions, error log entries (e.g. a Content-Security-Policy
            violation or a failed load) and dialogs (an ``alert``), as text, gathered while waiting for replies.
    """

    def __init__(self, exe: str, profile: Path, width: int = 1280, height: int = 900, timeout: float = 30.0) -> None:
        self.timeout, self.errors, self._id = timeout, [], 0
        self._events: list[dict[str, Any]] = []
        # Port 0: Chromium picks a free port and writes it into DevToolsActivePort (no race on a port we chose).
        self.proc = subprocess.Popen(
            [exe, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file, deadline = profile / "DevToolsActivePort", time.time() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        import websocket

        # no Origin header: Chromium refuses DevTools websockets from origins it was not told to allow
        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable")

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """End the browser (the process this object started)."""
        if getattr(self, "ws", None) is not None:
            self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def _note(self, msg: dict[str, Any]) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.exceptionThrown":
            d = params["exceptionDetails"]
            self.errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(params["entry"].get("text", ""))
        elif method == "Page.javascriptDialogOpening":
            self.errors.append(f"dialog: {params.get('message')}")
        self._events.append(msg)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send a command and return its result, noting the events that come before it."""
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._note(msg)

    def wait_event(self, method: str) -> dict[str, Any]:
        """Wait for the event ``method`` (or return it if it already came)."""
        for i, msg in enumerate(self._events):
            if msg.get("method") == method:
                return self._events.pop(i)
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            msg = json.loads(self.ws.recv())
            self._note(msg)
            if msg.get("method") == method:
                return self._events.pop()
        raise TimeoutError(method)

    def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self._events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str) -> Any:
        """The value of a JavaScript expression on the page."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed and released) in the middle of the first element matching ``selector``."""
        box = self.eval(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.scrollIntoView("
                        "{block: 'center'}); const r = e.getBoundingClientRect(); "
                        "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        """The visible page as a PNG."""
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))
        return path
