"""A real headless Chromium, driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`:
JSON messages ending in NUL on file descriptors 3 and 4), so the tests need no websocket client and no
browser download: Debian's `chromium` package is the browser.

`load_page` opens a file, waits for its load event, runs one expression in the page and takes a
full-page screenshot, and returns them with every console error, uncaught exception, failed or
non-file request and log error the page produced.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """`$UVERIFY_CHROMIUM`, else the first Chromium on PATH."""
    given = os.environ.get("UVERIFY_CHROMIUM")
    if given:
        return given if shutil.which(given) else None
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


@dataclass
class PageResult:
    value: Any  # what the expression returned (by value)
    screenshot: bytes  # PNG
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for beyond itself


class _Pipe:
    def __init__(self, proc: subprocess.Popen[bytes], write_fd: int, read_fd: int) -> None:
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> int:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        return self.next_id

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = os.read(self.read_fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit code {self.proc.poll()})")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        wanted = self.send(method, params, session)
        deadline = time.monotonic() + 60
        while True:
            message = self._read_message(deadline)
            if message.get("id") == wanted:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("method") == method:
                return message
            self.events.append(message)


def load_page(browser: str, page: Path, expression: str, width: int = 1280) -> PageResult:
    """Open `page` in a fresh headless Chromium, evaluate `expression` once the load event fired (and
    every image decoded), and screenshot the whole page."""
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()
    # above 4, so that placing them at 3 and 4 in the child never overwrites one with the other
    child_read, child_write = (
        fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10),
        fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10),
    )
    os.close(to_browser_r)
    os.close(from_browser_w)

    def child_fds() -> None:  # the protocol's fixed numbers: the browser reads fd 3 and writes fd 4
        os.dup2(child_read, 3)
        os.dup2(child_write, 4)

    with tempfile.TemporaryDirectory() as profile:
        args = [
            browser,
            "--headless",
            "--no-sandbox",  # CI containers run as root, where the sandbox refuses to start
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=child_fds, pass_fds=(3, 4),  # kept open after preexec_fn placed them
        )  # fmt: skip
        os.close(child_read)
        os.close(child_write)
        pipe = _Pipe(proc, to_browser_w, from_browser_r)
        try:
            return _drive(pipe, page, expression, width)
        finally:
            try:
                pipe.send("Browser.close")
                proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            os.close(to_browser_w)
            os.close(from_browser_r)


def _drive(pipe: _Pipe, page: Path, expression: str, width: int) -> PageResult:
    target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.call(f"{domain}.enable", session=session)
    pipe.call(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=session,
    )
    url = page.resolve().as_uri()
    pipe.call("Page.navigate", {"url": url}, session=session)
    pipe.wait_event("Page.loadEventFired")
    decoded = pipe.call(
        "Runtime.evaluate",
        {
            "expression": "Promise.all([...document.images].map(i => i.decode().then(() => true, () => false)))",
            "awaitPromise": True,
            "returnByValue": True,
        },
        session=session,
    )
    value = pipe.call(
        "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, session=session
    )
    if "exceptionDetails" in value:
        raise RuntimeError(f"the test's expression failed: {value['exceptionDetails']}")
    metrics = pipe.call("Page.getLayoutMetrics", session=session)
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = pipe.call(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
        },
        session=session,
    )
    result = PageResult(value["result"].get("value"), base64.b64decode(shot["data"]))
    if decoded["result"].get("value") is not None and not all(decoded["result"]["value"]):
        result.errors.append("an image failed to decode")
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            result.errors.append(
                "console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            result.errors.append("exception: " + str(params.get("exceptionDetails", {}).get("text")))
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            result.errors.append("log: " + str(params["entry"].get("text")))
        elif method == "Network.loadingFailed":
            result.errors.append("network: " + str(params.get("errorText")))
        elif method == "Network.requestWillBeSent":
            asked = str(params.get("request", {}).get("url", ""))
            if asked != url and not asked.startswith("data:"):
                result.requests.append(asked)
    return result
