"""The report as a browser shows it: headless Chromium opens the page written by the real
`kiln report` command, with every request and console message watched over the DevTools protocol
(on a pipe, so no port and no websocket library), and takes a screenshot."""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kiln.report import SECTION_IDS

CHROMIUM = shutil.which("chromium")
# CI installs Debian's chromium (.ci/run); elsewhere the test says why it did not run
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="needs Debian's `chromium` on PATH (apt-get install chromium)")
WIDTH, HEIGHT = 1280, 4000
# Starts argv[3:] with the pipe ends argv[1] and argv[2] as its fds 3 and 4, as
# --remote-debugging-pipe wants them (moved above 9 first, so neither overwrites the other).
ON_FDS_3_AND_4 = """
import fcntl, os, sys
ends = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for fd in sys.argv[1:3]:
    os.close(int(fd))
for target, fd in zip((3, 4), ends):
    os.dup2(fd, target)
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""

# Run in the page once it has loaded: which sections are there, whether each image decoded.
INSPECT = """(async () => {
  const images = Array.from(document.images);
  const decoded = await Promise.all(images.map(i => i.decode().then(() => true, () => false)));
  return {
    sections: IDS.filter(id => document.getElementById(id) !== null),
    text: Object.fromEntries(
      IDS.map(id => [id, (document.getElementById(id) || {}).innerText || ""])),
    images: images.map((i, n) => ({alt: i.alt, decoded: decoded[n], complete: i.complete,
                                   width: i.naturalWidth, height: i.naturalHeight})),
  };
})()"""


class DevTools:
    """A Chromium started with --remote-debugging-pipe: commands go to its fd 3 and replies and
    events come from its fd 4, each a JSON message ended by a NUL byte."""

    def __init__(self, profile: Path, log: Path) -> None:
        to_browser, self._commands = os.pipe()
        self._replies, from_browser = os.pipe()
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
                 "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 f"--user-data-dir={profile}", f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        with open(log, "wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-c", ON_FDS_3_AND_4, str(to_browser), str(from_browser),
                 str(CHROMIUM), *flags],
                pass_fds=(to_browser, from_browser), stdout=stderr, stderr=stderr)
        os.close(to_browser)
        os.close(from_browser)
        self.events: list[dict[str, Any]] = []
        self._buffer = b""
        self._id = 0

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout_s: float = 60) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self._read_until(lambda m: m.get("id") == message["id"], timeout_s)
        assert "error" not in reply, f"{method}: {reply['error']}"
        return dict(reply.get("result", {}))

    def wait_for(self, event: str, timeout_s: float = 60) -> dict[str, Any]:
        seen = [e for e in self.events if e.get("method") == event]
        return seen[0] if seen else self._read_until(lambda m: m.get("method") == event,
                                                     timeout_s)

    def _read_until(self, match: Callable[[dict[str, Any]], bool],
                    timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if match(message):
                    return dict(message)
            left = deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            if select.select([self._replies], [], [], left)[0]:
                chunk = os.read(self._replies, 1 << 20)
                assert chunk, f"Chromium exited (code {self.process.poll()})"
                self._buffer += chunk

    def close(self) -> None:
        try:
            os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode()
                     + b"\0")
            self.process.wait(timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._commands)
            os.close(self._replies)


def console_errors(events: list[dict[str, Any]]) -> list[str]:
    """Every error the page logged or threw."""
    errors = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif e["method"] == "Runtime.exceptionThrown":
            errors.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
            errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
    return errors


def requested_urls(events: list[dict[str, Any]]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events
            if e["method"] == "Network.requestWillBeSent"]


def open_page(browser: DevTools, url: str) -> str:
    """A new tab, watched (console, log, network), navigated to ``url``; returns its session."""
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = str(browser.call("Target.attachToTarget",
                               {"targetId": target, "flatten": True})["sessionId"])
    for domain in ("Page", "Runtime", "Log", "Network"):
        browser.call(f"{domain}.enable", session=session)
    browser.call("Emulation.setDeviceMetricsOverride", {
        "width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
        session=session)
    browser.events.clear()
    browser.call("Page.navigate", {"url": url}, session=session)
    browser.wait_for("Page.loadEventFired")
    return session


@pytest.mark.slow
@needs_chromium
def test_the_report_renders_in_chromium(benched_run: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None, "CI=true: chromium must be on PATH (.ci/run installs it)"
    run = tmp_path / "run"
    shutil.copytree(benched_run, run)
    written = subprocess.run([sys.executable, "-m", "kiln", "report", str(run)],
                             capture_output=True, text=True, timeout=300)
    assert written.returncode == 0, written.stderr
    url = (run / "report.html").resolve().as_uri()
    assert url in written.stdout

    browser = DevTools(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        session = open_page(browser, url)
        found = browser.call("Runtime.evaluate", {
            "expression": f"const IDS = {json.dumps(SECTION_IDS)};\n{INSPECT}",
            "awaitPromise": True, "returnByValue": True}, session=session)
        assert "exceptionDetails" not in found, found
        page = found["result"]["value"]
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)
        time.sleep(0.2)  # let late console messages arrive before they are counted
        browser.call("Runtime.evaluate", {"expression": "1"}, session=session)
    finally:
        browser.close()

    assert page["sections"] == list(SECTION_IDS)
    assert all(page["text"][s].strip() for s in SECTION_IDS)
    assert len(page["images"]) == 7
    for image in page["images"]:
        assert image["decoded"] and image["complete"] and image["width"] > 0, image
    assert console_errors(browser.events) == []
    assert [u for u in requested_urls(browser.events) if u != url
            and not u.startswith("data:")] == []  # nothing fetched: no network, no other file

    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == (WIDTH, HEIGHT)
    assert len(png) > 100_000  # tables, curves and bars, not a blank page
