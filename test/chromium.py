"""A headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: no port,
no extra package), for tests that look at a page as a browser shows it."""
from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path

# Flags that work in containers and offline CI (root: no sandbox; no network chatter, no GPU).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-pipe")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(RuntimeError):
    pass


class Chromium:
    """One browser process; :meth:`open` loads a page and returns what happened while loading."""

    def __init__(self, executable: str, user_data_dir: Path, timeout_s: float = 60.0):
        self.timeout_s = timeout_s
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # the protocol's fixed descriptors: the browser reads fd 3, writes fd 4
            a, b = os.dup(to_browser_r), os.dup(from_browser_w)   # above 4 whatever the originals were
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen([executable, *FLAGS, f"--user-data-dir={user_data_dir}", "about:blank"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, preexec_fn=wire_fds,
                                     close_fds=False)   # Python's own descriptors are not inheritable
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(
            line.decode(errors="replace") for line in self.proc.stderr), daemon=True).start()

    # --- protocol ------------------------------------------------------------------------------------
    def _read(self) -> None:
        buf = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                self._inbox.put(None)
                return
            buf += chunk
            *messages, buf = buf.split(b"\0")
            for m in messages:
                self._inbox.put(json.loads(m))

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        msg = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._get()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise CdpError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _get(self, deadline: float | None = None) -> dict:
        deadline = deadline or time.monotonic() + self.timeout_s
        try:
            msg = self._inbox.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise CdpError(f"no answer from chromium in {self.timeout_s:g} s") from None
        if msg is None:
            raise CdpError("chromium exited: " + "".join(self._stderr[-20:]))
        if "method" in msg:
            self.events.append(msg)
        return msg

    def wait_event(self, method: str, session: str) -> dict:
        for ev in self.events:
            if ev["method"] == method and ev.get("sessionId") == session:
                return ev
        deadline = time.monotonic() + self.timeout_s
        while True:
            msg = self._get(deadline)
            if msg.get("method") == method and msg.get("sessionId") == session:
                return msg

    # --- pages ---------------------------------------------------------------------------------------
    def open(self, url: str, width: int = 1200, height: int = 900) -> str:
        """Load ``url`` in a new tab of ``width`` x ``height`` CSS px; returns the tab's session id once its
        load event (all images loaded or failed) has fired."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable", session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        self.events.clear()
        self.send("Page.navigate", {"url": url}, session)
        self.wait_event("Page.loadEventFired", session)
        return session

    def evaluate(self, expression: str, session: str):
        res = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        if "exceptionDetails" in res:
            raise CdpError(f"{expression[:60]}...: {res['exceptionDetails']}")
        return res["result"].get("value")

    def screenshot(self, session: str, width: int, height: int) -> bytes:
        """PNG of the whole page (``width`` x ``height`` CSS px from the top left)."""
        import base64

        data = self.send("Page.captureScreenshot",
                         {"format": "png", "captureBeyondViewport": True,
                          "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}}, session)["data"]
        return base64.b64decode(data)

    def problems(self, session: str) -> list[str]:
        """Console errors, uncaught exceptions, error log entries and failed loads seen in the tab."""
        out = []
        for ev in self.events:
            if ev.get("sessionId") != session:
                continue
            m, p = ev["method"], ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
            elif m == "Runtime.exceptionThrown":
                out.append("exception: " + p["exceptionDetails"].get("text", ""))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')} ({p.get('type')})")
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except CdpError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
