"""A screenshot of a web page in headless Chromium, taken once the page has drawn something: for the rerun
web viewer that ``nodes/viewer`` serves (``SO101_VIEW_MODE=serve``) on a headless robot computer.

Chromium is driven over its DevTools pipe (``--remote-debugging-pipe``: JSON messages separated by NUL on
file descriptors 3 and 4; no websocket library needed), WebGL through its software rasteriser (SwiftShader).
A screenshot is taken every ``poll_s`` until it holds at least ``min_colours`` distinct colours (a page
still loading is a few flat colours; the viewer with a camera image, a depth map and plots has
thousands), or ``timeout_s`` passes.

    python -m so101_deploy.tools.web_shot URL OUT.png [--size 1600x1000] [--timeout 90]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


class ShotError(RuntimeError):
    """No browser, a browser that died, or a page that never drew."""


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def distinct_colours(png: bytes) -> int:
    img = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ShotError("the browser returned an image that does not decode as PNG")
    return int(len(np.unique(img.reshape(-1, 3), axis=0)))


class _Pipe:
    def __init__(self, write_fd: int, read_fd: int):
        self._w, self._r = write_fd, read_fd
        self._buf = b""
        self._id = 0

    def call(self, method: str, deadline: float, session: str | None = None, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                if time.monotonic() > deadline:
                    raise ShotError(f"no answer from the browser to {method} in time")
                chunk = os.read(self._r, 1 << 20)
                if not chunk:
                    raise ShotError(f"the browser closed its DevTools pipe (during {method})")
                self._buf += chunk
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise ShotError(f"{method}: {reply['error'].get('message', reply['error'])}")
                return reply.get("result", {})


def screenshot(url: str, out: str | Path, width: int = 1600, height: int = 1000, timeout_s: float = 90.0,
               min_colours: int = 5000, poll_s: float = 1.0, chromium: str | None = None, settle_s: float = 0.0) -> int:
    """Write the page at ``url`` to ``out`` (PNG) once it has ``min_colours`` distinct colours and was open
    ``settle_s`` (a live page keeps filling: e.g. a minute of a running graph); returns the colours."""
    exe = chromium or find_chromium()
    if exe is None:
        raise ShotError(f"no Chromium found (looked for {', '.join(CHROMIUM_NAMES)}); on Debian: apt-get install chromium")
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    profile = tempfile.mkdtemp(prefix="so101-shot-")

    def fds() -> None:  # the DevTools pipe is fd 3 (commands in) and fd 4 (replies out) in the browser
        a, b = os.dup(to_child_r), os.dup(from_child_w)  # first out of the way of 3 and 4
        os.dup2(a, 3)  # dup2 leaves 3 and 4 inheritable; the pipes' own fds are close-on-exec
        os.dup2(b, 4)

    cmd = [exe, "--headless=new", "--no-sandbox", "--remote-debugging-pipe", "--use-angle=swiftshader",
           "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", f"--window-size={width},{height}", url]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=fds, close_fds=False, start_new_session=True)  # close_fds would close 3, 4
    os.close(to_child_r)
    os.close(from_child_w)
    pipe = _Pipe(to_child_w, from_child_r)
    opened = time.monotonic()
    deadline = opened + max(timeout_s, settle_s + poll_s)
    best = 0
    try:
        targets = pipe.call("Target.getTargets", deadline)["targetInfos"]
        page = next((t for t in targets if t.get("type") == "page"), None)
        if page is None:
            raise ShotError(f"the browser opened no page for {url}")
        session = pipe.call("Target.attachToTarget", deadline, targetId=page["targetId"], flatten=True)["sessionId"]
        pipe.call("Emulation.setDeviceMetricsOverride", deadline, session, width=width, height=height,
                  deviceScaleFactor=1, mobile=False)
        while True:
            png = base64.b64decode(pipe.call("Page.captureScreenshot", deadline, session, format="png")["data"])
            best = distinct_colours(png)
            if best >= min_colours and time.monotonic() - opened >= settle_s:
                Path(out).parent.mkdir(parents=True, exist_ok=True)
                Path(out).write_bytes(png)
                return best
            if time.monotonic() + poll_s > deadline:
                raise ShotError(f"{url} drew only {best} distinct colours in {timeout_s:.0f} s (want {min_colours}): "
                                f"still loading, or no WebGL in this browser")
            time.sleep(poll_s)
    finally:
        os.close(to_child_w)
        os.close(from_child_r)
        try:
            os.killpg(proc.pid, 9)  # the browser's own process group (start_new_session)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m so101_deploy.tools.web_shot", description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("out")
    p.add_argument("--size", default="1600x1000", help="WIDTHxHEIGHT of the window (default 1600x1000)")
    p.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for the page to draw")
    p.add_argument("--min-colours", type=int, default=5000)
    p.add_argument("--settle", type=float, default=0.0, help="keep the page open at least this long (s) first")
    args = p.parse_args(argv)
    try:
        w, h = (int(x) for x in args.size.lower().split("x"))
        n = screenshot(args.url, args.out, w, h, args.timeout, args.min_colours, settle_s=args.settle)
    except (ShotError, ValueError) as e:
        print(f"web_shot: error: {e}")
        return 1
    print(f"web_shot: {args.out} ({n} distinct colours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
