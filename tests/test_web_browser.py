"""Headless Chromium for the report and status page tests, plus one check that pages load nothing external.

Debian's `chromium` (installed by scripts/test.sh) is driven two ways: `--dump-dom` for a file, and the
DevTools protocol over `--remote-debugging-port` (a tiny client on `websocket-client`) for clicking
through the status page. A dead proxy (127.0.0.1:9) stands for "no network": anything but loopback
and files fails. Tests skip only when Chromium is missing and `CI` is not set; in CI they must run.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--proxy-server=http://127.0.0.1:9", "--hide-scrollbars"]


def chromium() -> str:
    path = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    if not path:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (scripts/test.sh installs Debian's chromium)")
        pytest.skip("Chromium is not installed (scripts/test.sh installs it)")
    return path


def artifact(name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS / name


def run_chromium(args: list[str], tmp: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    profile = tmp / f"chromium-{time.monotonic_ns()}"
    return subprocess.run([chromium(), *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          timeout=timeout, text=True)


def dump_dom(url: str, tmp: Path) -> str:
    done = run_chromium(["--virtual-time-budget=2000", "--dump-dom", url], tmp)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Browser:
    """One headless Chromium tab over the DevTools protocol: navigate, evaluate, wait for loads, screenshot."""

    def __init__(self, tmp: Path, *, width: int = 1280, height: int = 900) -> None:
        import websocket  # websocket-client (dev dependency)
        profile = tmp / f"chromium-cdp-{time.monotonic_ns()}"
        self.proc = subprocess.Popen([chromium(), *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0",
                                      f"--window-size={width},{height}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError("Chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:  # noqa: S310
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], suppress_origin=True, timeout=30)
        self._id = 0
        self.events: list[dict[str, Any]] = []
        self.send("Page.enable")
        self.send("Network.enable")

    def _recv(self) -> dict[str, Any]:
        return json.loads(self.ws.recv())

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = self._recv()
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, msg in enumerate(self.events):
                if msg["method"] == event:
                    return self.events.pop(i)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {event} within {timeout} s")
            self.events.append(self._recv())

    def _loads(self, action: Any) -> None:
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        action()
        self.wait_for("Page.loadEventFired")

    def goto(self, url: str) -> None:
        self._loads(lambda: self.send("Page.navigate", url=url))

    def js(self, expression: str) -> Any:
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"script failed: {r['exceptionDetails'].get('text')} in {expression[:80]}")
        return r["result"].get("value")

    def click_and_wait(self, selector: str) -> None:
        """Click an element that leads to another page (link or submit button), wait for that page."""
        self._loads(lambda: self.js(f"document.querySelector({json.dumps(selector)}).click()"))

    def fill(self, selector: str, value: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}")

    def text(self, selector: str) -> str:
        return self.js(f"(document.querySelector({json.dumps(selector)}) || {{}}).innerText || ''")

    @property
    def url(self) -> str:
        return self.js("location.href")

    def screenshot(self, name: str) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path = artifact(name)
        path.write_bytes(base64.b64decode(data))
        return path

    def requested_urls(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    yield b
    b.close()


def test_the_status_page_loads_nothing_but_itself(sandboxes, tmp_path, monkeypatch, browser):
    """Every request Chromium makes for the overview, list and detail pages goes to the status server."""
    from sync.web import StatusServer
    from tests.test_ops_scenario import synced
    s = synced(sandboxes, tmp_path, monkeypatch)
    try:
        with StatusServer(s.app, listen="127.0.0.1:0") as web:
            for path in ("/", "/conflicts", "/reconciliation", "/conflicts/1"):
                browser.goto(web.url + path)
            urls = browser.requested_urls()
            assert urls and all(u.startswith(web.url + "/") for u in urls), urls
            assert browser.text("h1") == "feesync · conflict 1"
    finally:
        s.app.close()
