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
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the JupyterLab + Chromium pieces the tests use

from browser_helpers import (  # noqa: E402
    CHROMIUM_ARGS,
    JS_APP_READY,
    JS_KERNEL_IDLE,
    JS_RUN_ALL,
    JupyterLab,
    browser,
    chromium_path,
    wait_for,
)

SHOTS = ROOT / "build" / "screenshots"
CELL = """\
from labkit.views.dashboard import Dashboard
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
    path = chromium_path()
    if path is None:
        sys.exit("chromium is not installed: `make setup` (or apt-get install chromium)")
    return path


def dashboard_shot(out: Path, timeout: float = 120.0) -> Path:
    work = Path(tempfile.mkdtemp(prefix="labkit-shot-"))
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": CELL, "outputs": [],
                     "execution_count": None}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                      "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (work / "dashboard.ipynb").write_text(json.dumps(nb))
    try:
        deadline = time.monotonic() + timeout
        with JupyterLab(work, timeout=timeout) as lab, browser(chromium()) as b:
            page = b.new_page(viewport={"width": 1300, "height": 2400})
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.goto(lab.url("doc/tree/dashboard.ipynb"))

            def step(what: str, js: str) -> None:
                print(f"  waiting: {what}", file=sys.stderr)
                wait_for(page, what, js, deadline, out)

            step("JupyterLab", JS_APP_READY)
            step("the notebook's kernel", JS_KERNEL_IDLE)
            page.evaluate(JS_RUN_ALL)
            step("the run to finish", "document.body.innerText.includes('done:')")
            step("the results table", "!!document.querySelector('.jp-OutputArea table')")
            page.wait_for_timeout(1000)  # bokeh's last paint after the final stream
            out.parent.mkdir(parents=True, exist_ok=True)
            for e in errors:
                print(f"  browser console error: {e}", file=sys.stderr)
            area = page.locator(".jp-Cell-outputArea").first
            area.screenshot(path=str(out))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def page_shot(html: Path, out: Path, height: int = 6000) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", *CHROMIUM_ARGS, f"--user-data-dir={profile}",
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
