"""Screenshots of the dashboard (live, in JupyterLab) and of a report, in headless Chromium.

    python bench/screenshots.py                       # build/screenshots/dashboard.png
    python bench/screenshots.py --report build/report.html   # + build/screenshots/report.png
    python bench/screenshots.py --no-dashboard --live --efficiency
        # + build/screenshots/live-panel.png (the live panel over an epoll and an io_uring
        #   run, in JupyterLab) and efficiency.png (the efficiency curve of a fresh sweep)

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


# The live panel over two runs, the way notebook 02 shows it (the sweep blocks the kernel's
# main thread; run() pumps the panel's updates between its waits)
LIVE_CELL = """\
from IPython.display import display
from labkit.lab import experiment
from labkit.procs.load import LoadConfig
from labkit.views import plots
panel = plots.LivePanel(height=150)
display(panel.widget())
experiment.sweep({"io": ["epoll", "uring"]}, repeats=1, duration=3, warmup=1,
                 load=LoadConfig(pairs=4, size=1400, rate_mbps=2000), store=False,
                 live=panel, progress=False)
print("two runs done")
"""


def chromium() -> str:
    path = chromium_path()
    if path is None:
        sys.exit("chromium is not installed: `make setup` (or apt-get install chromium)")
    return path


def dashboard_shot(out: Path, timeout: float = 120.0, cell: str = CELL,
                   done: str = "document.body.innerText.includes('done:')",
                   table: bool = True) -> Path:
    """Run `cell` in JupyterLab, wait until `done` holds in the page (and, with `table`, a
    results table is shown), and capture the cell's output area."""
    work = Path(tempfile.mkdtemp(prefix="labkit-shot-"))
    nb = {"cells": [{"cell_type": "code", "metadata": {}, "source": cell, "outputs": [],
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
            step("the run to finish", done)
            if table:
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


def page_shot(html: Path, out: Path, height: int = 6000, width: int = 1400) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium(), "--headless", *CHROMIUM_ARGS, f"--user-data-dir={profile}",
                        "--virtual-time-budget=5000", f"--screenshot={out}",
                        f"--window-size={width},{height}", html.resolve().as_uri()],
                       capture_output=True, timeout=120, check=True)
    return out


def efficiency_shot(out: Path) -> Path:
    """A fresh efficiency-curve sweep (epoll, epoll + coalesce, io_uring across paced and
    unpaced loads), drawn with its computed caption, captured from a static page."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    from labkit.lab import experiment
    from labkit.procs.load import LoadConfig
    from labkit.views import captions, plots

    modes = {"epoll": dict(io="epoll", coalesce=False),
             "epoll + coalesce": dict(io="epoll", coalesce=True), "io_uring": dict(io="uring")}
    runs = experiment.sweep([cfg | {"rate_mbps": r} for r in (250, 1000, 3000, None)
                             for cfg in modes.values()], repeats=3, duration=1.5, warmup=0.5,
                            load=LoadConfig(pairs=4, size=1400), store=False,
                            name="shot-efficiency").runs
    runs["mode"] = ["io_uring" if io == "uring" else "epoll + coalesce" if c in (True, 1)
                    else "epoll" for io, c in zip(runs["io"], runs["coalesce"], strict=True)]
    said = captions.pays_from(runs, "epoll", "io_uring", factor="mode")
    print(said, file=sys.stderr)
    fig = plots.efficiency_curve(runs, group="mode", order=list(modes),
                                 caption=f"LIVE on {_machine()}. Measured: {said}")
    work = Path(tempfile.mkdtemp(prefix="labkit-shot-"))
    page = work / "efficiency.html"
    page.write_text(file_html(fig, resources=INLINE, title="efficiency curve"))
    try:
        return page_shot(page, out, height=640, width=860)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _machine() -> str:
    from labkit.lab import store

    m = store.machine()
    return f"{m.get('cpu_model')}, {m.get('cores')} cores, Linux {m.get('kernel')}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, help="also screenshot this report HTML")
    ap.add_argument("--no-dashboard", action="store_true")
    ap.add_argument("--live", action="store_true", help="the live panel over two runs")
    ap.add_argument("--efficiency", action="store_true", help="the efficiency curve")
    args = ap.parse_args()
    if not args.no_dashboard:
        print(dashboard_shot(SHOTS / "dashboard.png"))
    if args.live:
        print(dashboard_shot(SHOTS / "live-panel.png", timeout=180, cell=LIVE_CELL,
                             done="document.body.innerText.includes('two runs done')",
                             table=False))
    if args.efficiency:
        print(efficiency_shot(SHOTS / "efficiency.png"))
    if args.report:
        print(page_shot(args.report, SHOTS / "report.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
