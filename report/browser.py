"""Drive a headless Chromium over the DevTools protocol: open a report, read values from the page,
collect JavaScript errors, take a screenshot. Used by the tests, the size/speed bench and

    python -m report.browser screenshot RUN_DIR/report.html shot.png [--full-page]
    python -m report.browser measure RUN_DIR/report.html

Needs a Chromium (Debian: apt-get install chromium; or set CHROMIUM=/path/to/chrome) and the
`websockets` package (its sync client). Nothing here touches the network: the page is a file.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.errors import BrowserError

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """The browser to use: $CHROMIUM, else the first of CANDIDATES on PATH; None when there is none."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).is_file() else shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def missing() -> str | None:
    """Why a browser session cannot start here (for a test's skip reason), or None when it can."""
    if find_chromium() is None:
        return "no Chromium on PATH (apt-get install chromium, or set CHROMIUM=/path/to/chrome)"
    try:
        import websockets.sync.client  # noqa: F401  # lazy: optional dependency (the test extra)
    except ImportError:
        return "the websockets package (>=13, its sync client) is not installed: pip install websockets"
    return None


class Browser:
    """One headless Chromium with one page, driven through the DevTools protocol (flat sessions).

    with Browser() as b:
        b.open(Path("report.html"))
        b.wait_for("window.REPORT_COUNTS.rendered")
        print(b.evaluate("window.REPORT_COUNTS"), b.errors())
        b.screenshot("shot.png")
    """

    def __init__(self, width: int = 1400, height: int = 1000, timeout: float = 60.0, executable: str | None = None):
        self.width, self.height, self.timeout = width, height, timeout
        self.executable = executable or find_chromium()
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.session: str | None = None
        self.events: list[dict] = []
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------------------- lifecycle
    def __enter__(self) -> Browser:
        why = missing() if self.executable is None or not Path(self.executable).exists() else None
        if self.executable is None or why:
            raise BrowserError(why or "no Chromium found")
        from websockets.sync.client import connect  # lazy: optional dependency (the test extra)

        self.profile = tempfile.mkdtemp(prefix="report-chromium-")
        cmd = [self.executable, "--headless=new", "--no-sandbox", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-background-networking", "--disable-sync", "--mute-audio",
               # software WebGL, so a large run's WebGL map draws without a GPU
               "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
               "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
               f"--window-size={self.width},{self.height}", "about:blank"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None:
                self._cleanup()
                raise BrowserError(f"{self.executable} exited with status {self.proc.returncode} on start")
            if time.monotonic() > deadline:
                self._cleanup()
                raise BrowserError(f"{self.executable} did not open its DevTools port in {self.timeout:.0f} s")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self._stack = contextlib.ExitStack()
        self.ws = self._stack.enter_context(connect(f"ws://127.0.0.1:{port}{path}", max_size=None, open_timeout=self.timeout))
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.send("Browser.close", session=False, timeout=5)
            except Exception:  # noqa: BLE001 - closing is best effort; the process is ended below
                pass
            try:
                self._stack.close()
            except Exception:  # noqa: BLE001
                pass
            self.ws = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the process group this object started
                self.proc.wait(timeout=5)
            self.proc = None
        shutil.rmtree(getattr(self, "profile", ""), ignore_errors=True)

    # ----------------------------------------------------------------------------- protocol
    def send(self, method: str, params: dict | None = None, session: bool = True, timeout: float | None = None) -> dict:
        msg_id = next(self._ids)
        msg = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError(f"no answer to {method} in {timeout or self.timeout:.0f} s")
            reply = json.loads(self.ws.recv(timeout=left))
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def _drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                self.events.append(json.loads(self.ws.recv(timeout=left)))
            except TimeoutError:
                return

    # ----------------------------------------------------------------------------- the page
    def open(self, path: str | Path) -> float:
        """Load a file and wait for its load event; the seconds it took."""
        url = Path(path).resolve().as_uri()
        t0 = time.perf_counter()
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        deadline = time.monotonic() + self.timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise BrowserError(f"{url} did not finish loading in {self.timeout:.0f} s")
            self._drain(0.05)
        return time.perf_counter() - t0

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited), as JSON."""
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in r:
            raise BrowserError(f"{expression!r} threw: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r.get("result", {}).get("value")

    def wait_for(self, expression: str, timeout: float | None = None) -> float:
        """Poll until `expression` is truthy; the seconds waited."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.evaluate(f"!!({expression})"):
            if time.monotonic() > deadline:
                raise BrowserError(f"{expression!r} still false after {timeout or self.timeout:.0f} s")
            self._drain(0.05)
        return time.perf_counter() - t0

    def hover(self, x: float, y: float) -> None:
        """Move the mouse to viewport pixel (x, y), as a user's pointer would."""
        self.send("Input.dispatchMouseEvent", {"type": "mouseMoved", "x": x, "y": y})

    def errors(self) -> list[str]:
        """JavaScript errors so far: uncaught exceptions, console.error calls, error log entries."""
        self._drain(0.1)
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                out.append(p["entry"].get("text", ""))
        return out

    def screenshot(self, path: str | Path, full_page: bool = False) -> Path:
        params = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1})
        data = self.send("Page.captureScreenshot", params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path


def load_report(path: str | Path, shot: str | Path | None = None, full_page: bool = False, timeout: float = 120.0,
                width: int = 1400, height: int = 1000) -> dict:
    """Open a report, wait until it has drawn, and return its counts, errors and timings (and write a
    screenshot when `shot` is given)."""
    with Browser(width=width, height=height, timeout=timeout) as b:
        load_s = b.open(path)
        b.wait_for("window.REPORT_COUNTS && (window.REPORT_COUNTS.rendered || window.REPORT_COUNTS.errors.length)", timeout)
        counts = b.evaluate("window.REPORT_COUNTS")
        out = {"load_event_s": load_s, "counts": counts, "errors": b.errors() + list(counts.get("errors", [])),
               "render_s": (counts.get("render_ms") or 0) / 1000}
        if shot is not None:
            out["screenshot"] = str(b.screenshot(shot, full_page=full_page))
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m report.browser", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("screenshot", help="a PNG of a report, once it has drawn")
    s.add_argument("report")
    s.add_argument("png")
    s.add_argument("--full-page", action="store_true", help="the whole page, not only the first screen")
    s.add_argument("--width", type=int, default=1400)
    s.add_argument("--height", type=int, default=1000)
    m = sub.add_parser("measure", help="load time, counts and JavaScript errors of a report")
    m.add_argument("report")
    args = p.parse_args(argv)
    why = missing()
    if why:
        print(f"error: {why}", file=sys.stderr)
        return 2
    if not Path(args.report).is_file():
        print(f"error: no report at {args.report}; write one with `python run.py report RUN_DIR`", file=sys.stderr)
        return 2
    try:
        if args.cmd == "screenshot":
            r = load_report(args.report, args.png, args.full_page, width=args.width, height=args.height)
            print(f"wrote {args.png} ({r['render_s']:.1f} s to draw)")
        else:
            r = load_report(args.report)
            print(json.dumps({k: r[k] for k in ("load_event_s", "render_s", "errors", "counts")}, indent=1))
    except BrowserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 1 if r["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
