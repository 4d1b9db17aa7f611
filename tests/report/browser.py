"""Headless Chromium over the DevTools protocol (a pipe, no extra packages): open a local page,
collect console errors, uncaught exceptions, log errors and every network request, and take a
full-page screenshot."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--mute-audio", "--hide-scrollbars"]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)     # console.error/assert, exceptions, log errors
    requests: list[str] = field(default_factory=list)   # every URL the page asked for
    title: str = ""
    body_text: str = ""
    svg_count: int = 0
    height: int = 0


class _Pipe:
    def __init__(self, proc: subprocess.Popen, to_chrome: int, from_chrome: int) -> None:
        self.proc, self.w, self.r = proc, to_chrome, from_chrome
        self.buf = b""
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 60) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self.read(timeout)
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def read(self, timeout: float) -> dict:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self.r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self.buf += chunk
        raw, self.buf = self.buf.split(b"\0", 1)
        return json.loads(raw)

    def wait_event(self, method: str, timeout: float = 60) -> dict:
        for i, e in enumerate(self.events):
            if e.get("method") == method:
                return self.events.pop(i)
        while True:
            m = self.read(timeout)
            if m.get("method") == method:
                return m
            self.events.append(m)


def _errors(events: list[dict]) -> tuple[list[str], list[str]]:
    errors, requests = [], []
    for e in events:
        m, p = e.get("method"), e.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append("exception: " + str(d.get("exception", {}).get("description") or d.get("text")))
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            errors.append("log: " + p["entry"].get("text", ""))
        elif m == "Network.requestWillBeSent":
            requests.append(p.get("request", {}).get("url", ""))
    return errors, requests


def load(html: Path, screenshot: Path | None = None, width: int = 1280, timeout: float = 90) -> PageLoad:
    """Open `html` in headless Chromium; full-page PNG to `screenshot`."""
    exe = chromium()
    if exe is None:
        raise FileNotFoundError("chromium")
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()

    def child_fds() -> None:  # Chromium's --remote-debugging-pipe reads fd 3, writes fd 4
        r, w = os.dup(to_r), os.dup(from_w)  # above 4 once 3 and 4 are taken, so neither is clobbered
        while r <= 4 or w <= 4:
            r, w = (os.dup(r) if r <= 4 else r), (os.dup(w) if w <= 4 else w)
        os.dup2(r, 3)
        os.dup2(w, 4)

    with tempfile.TemporaryDirectory() as profile, open(os.path.join(profile, "stderr.log"), "w+") as log:
        proc = subprocess.Popen([exe, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-pipe", "about:blank"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                preexec_fn=child_fds, close_fds=False)
        os.close(to_r)
        os.close(from_w)
        pipe = _Pipe(proc, to_w, from_r)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            sid = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for dom in ("Page", "Runtime", "Log", "Network"):
                pipe.send(f"{dom}.enable", session=sid)
            pipe.send("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=sid)
            pipe.send("Page.navigate", {"url": html.resolve().as_uri()}, session=sid)
            pipe.wait_event("Page.loadEventFired", timeout)
            probe = ("JSON.stringify({title: document.title, text: document.body.innerText, "
                     "svgs: document.querySelectorAll('svg').length, h: document.documentElement.scrollHeight})")
            info = json.loads(pipe.send("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                        session=sid)["result"]["value"])
            if screenshot is not None:
                shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                            "clip": {"x": 0, "y": 0, "width": width,
                                                                     "height": info["h"], "scale": 1}},
                                 session=sid, timeout=timeout)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
            time.sleep(0.2)  # late console messages
            try:
                pipe.send("Runtime.evaluate", {"expression": "1"}, session=sid)
            except Exception:
                pass
            errors, requests = _errors(pipe.events)
            try:
                pipe.send("Browser.close", timeout=10)
            except Exception:
                pass
        finally:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(to_w)
            os.close(from_r)
    return PageLoad(errors=errors, requests=requests, title=info["title"], body_text=info["text"],
                    svg_count=int(info["svgs"]), height=int(info["h"]))
