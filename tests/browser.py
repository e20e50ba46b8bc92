"""Real headless Chromium, driven through the DevTools protocol, for tests of the HTML report.

The ``chromium`` fixture skips with a reason where Chromium (Debian ``chromium``) or the
``websocket-client`` package is missing; CI installs both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest


def _chromium() -> str | None:
    for name in ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class DevTools:
    """A minimal DevTools-protocol client over one page target's websocket."""

    def __init__(self, ws_url: str):
        import websocket  # websocket-client (dev dependency)

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.events: list[dict] = []
        self._id = 0

    def send(self, method: str, **params) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            message = json.loads(self.ws.recv())
            self.events.append(message)
            if message.get("method") == method:
                return message
        raise TimeoutError(method)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(result["exceptionDetails"])
        return result["result"].get("value")

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[DevTools]:
    binary = _chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install -y chromium)")
    pytest.importorskip("websocket", reason="websocket-client is not installed (dev extra)")
    profile = tmp_path / "chromium-profile"
    command = [
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--remote-debugging-port=0",
        "--remote-allow-origins=*", "--window-size=1280,1000", "about:blank",
    ]  # fmt: skip
    log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115 - closed in the finally
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    client = None
    try:
        port_file = profile / "DevToolsActivePort"  # port 0: Chromium picks one and writes it
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not start:\n{(tmp_path / 'chromium.log').read_text()}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        client = DevTools(page["webSocketDebuggerUrl"])
        yield client
    finally:
        if client is not None:
            client.close()
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def page_errors(events: list[dict]) -> list[dict]:
    """Console errors, uncaught exceptions and error log entries among DevTools events."""
    return [
        e
        for e in events
        if e.get("method") == "Runtime.exceptionThrown"
        or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] == "error")
        or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")
    ]


def open_page(chromium: DevTools, path: Path) -> None:
    for domain in ("Page", "Runtime", "Log", "Network"):
        chromium.send(f"{domain}.enable")
    chromium.send("Page.navigate", url=path.resolve().as_uri())
    chromium.wait_for("Page.loadEventFired")


def screenshot(chromium: DevTools, max_height: int = 16000) -> bytes:
    """A full-page PNG."""
    import base64

    height = chromium.evaluate("document.documentElement.scrollHeight")
    chromium.send(
        "Emulation.setDeviceMetricsOverride",
        width=1280,
        height=min(int(height), max_height),
        deviceScaleFactor=1,
        mobile=False,
    )
    return base64.b64decode(chromium.send("Page.captureScreenshot", format="png")["data"])
