"""Screenshots of the dashboard (live, in JupyterLab) and of a report, in headless Chromium.

    python bench/screenshots.py                       # build/screenshots/dashboard.png
    python bench/screenshots.py --report build/report.html   # + build/screenshots/report.png

The dashboard is shown the way a person sees it: JupyterLab on 127.0.0.1 with a throwaway
token, a notebook whose one cell builds `Dashboard()` and clicks Run (on_run), then the page
is captured once the run has finished and its row is in the results table. The browser is
the system's Chromium (/usr/bin/chromium) driven by playwright; no browser is downloaded.
JupyterLab is stopped by its pid.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "build" / "screenshots"
CELL = """\
from labkit.widgets import Dashboard
d = Dashboard(hz=5)
d.io.value = "uring"
d.rate.value = 400
d.pairs.value = 4
d.duration.value = 4
d.warmup.value = 0.5
d.on_run()   # Run: the experiment runs in a background thread, the kernel stays free
d
"""


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        sys.exit("chromium is not installed: `make setup` (or apt-get install chromium)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(lab: subprocess.Popen[bytes], port: int, deadline: float) -> None:
    """Read JupyterLab's log until it says it serves on our port, then keep draining it."""
    from labkit.process import LineReader, Tail

    assert lab.stderr is not None
    reader = LineReader(lab.stderr)
    while True:
        line = reader.readline(deadline)  # TimeoutError at the deadline
        if line is None:
            raise RuntimeError(f"jupyter lab exited early (code {lab.wait()})")
        if f"127.0.0.1:{port}/" in line.decode(errors="replace"):
            Tail(lab.stderr, "jupyterlab-log")  # a full pipe would block the server
            return


def dashboard_shot(out: Path, timeout: float = 120.0) -> Path:
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="labkit-shot-"))
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": CELL, "outputs": [],
                     "execution_count": None}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (work / "dashboard.ipynb").write_text(json.dumps(nb))
    # no "would you like news?" toast over the screenshot
    (work / "cfg" / "labconfig").mkdir(parents=True)
    (work / "cfg" / "labconfig" / "page_config.json").write_text(json.dumps(
        {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JUPYTER_CONFIG_DIR=str(work / "cfg"))
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={work}", "--LabApp.expose_app_in_browser=True",
         *(["--allow-root"] if os.geteuid() == 0 else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
        start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        wait_listening(lab, port, deadline)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium(), args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1300, "height": 2400})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(f"http://127.0.0.1:{port}/doc/tree/dashboard.ipynb?token={token}")

            def step(what: str, js: str) -> None:
                left = max(1.0, deadline - time.monotonic())
                print(f"  waiting: {what}", file=sys.stderr)
                try:
                    page.wait_for_function(js, timeout=left * 1000)
                except Exception:
                    page.screenshot(path=str(out.with_suffix(".failed.png")))
                    raise

            step("JupyterLab", "!!(window.jupyterapp && window.jupyterapp.shell)")
            step("the notebook's kernel", "(() => { const w = window.jupyterapp.shell"
                 ".currentWidget; return !!(w && w.sessionContext && w.sessionContext"
                 ".session && w.sessionContext.session.kernel && w.sessionContext.session"
                 ".kernel.status === 'idle'); })()")
            page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
            step("the run to finish", "document.body.innerText.includes('done:')")
            step("the results table", "!!document.querySelector('.jp-OutputArea table')")
            page.wait_for_timeout(1000)  # bokeh's last paint after the final stream
            out.parent.mkdir(parents=True, exist_ok=True)
            for e in errors:
                print(f"  browser console error: {e}", file=sys.stderr)
            area = page.locator(".jp-Cell-outputArea").first
            area.screenshot(path=str(out))
            browser.close()
    finally:
        if lab.poll() is None:
            os.kill(lab.pid, signal.SIGTERM)
            try:
                lab.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(lab.pid, signal.SIGKILL)
                lab.wait()
        shutil.rmtree(work, ignore_errors=True)
    return out


def page_shot(html: Path, out: Path, height: int = 6000) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                        "--virtual-time-budget=5000", f"--screenshot={out}",
                        f"--window-size=1400,{height}", html.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, help="also screenshot this report HTML")
    ap.add_argument("--no-dashboard", action="store_true")
    args = ap.parse_args()
    if not args.no_dashboard:
        print(dashboard_shot(SHOTS / "dashboard.png"))
    if args.report:
        print(page_shot(args.report, SHOTS / "report.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
