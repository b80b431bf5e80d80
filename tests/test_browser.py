"""The playground in a real browser: JupyterLab + Debian's Chromium, driven by Playwright.

What an attendee does: open notebooks/99-playground.ipynb, run it, pick io_uring, press
Run. The test asserts what they should see: the live figure's data grows while the run
goes, and when it ends the results table has a row for an io_uring run. Then what a
workshop does to a lab: save, reload the page on the still-running kernel, press Run
again: the live figure renders again (no BokehJS error) and grows. The page is saved to
build/screenshots/browser-playground.png (the test's artefact).

The notebook is copied to a temporary directory first, so JupyterLab's autosave can never
write outputs into the committed one. JupyterLab listens on 127.0.0.1 with a random token
and is stopped by pid (tests/browser_helpers.py). Skipped, with the reason, only where no
chromium is installed (`make setup` installs it on Debian).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from browser_helpers import (
    JS_ALL_EXECUTED,
    JS_APP_READY,
    JS_KERNEL_IDLE,
    JS_RUN_ALL,
    JS_SAVE,
    JupyterLab,
    browser,
    chromium_path,
    wait_for,
)

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "99-playground.ipynb"
SHOT = ROOT / "build" / "screenshots" / "browser-playground.png"
TIMEOUT = 300.0  # the whole test: lab start, kernel, run-all, two 3.5 s runs, a reload

pytestmark = [
    pytest.mark.skipif(chromium_path() is None,
                       reason="no chromium: /usr/bin/chromium is absent (`make setup` "
                              "installs it on Debian; Ubuntu's is a snap)"),
    pytest.mark.timeout(TIMEOUT + 60),
]

# Rows of the live panel's ColumnDataSource (the one with a syscalls_per_s column), read
# from BokehJS's documents in the page; -1 while no such source is rendered.
JS_LIVE_ROWS = """() => {
  const docs = (window.Bokeh && window.Bokeh.documents) || [];
  let rows = -1;
  for (const doc of docs) {
    for (const m of doc.all_models || []) {
      const data = m.data;
      if (!data || typeof data !== "object") continue;
      const get = (k) => (data instanceof Map ? data.get(k) : data[k]);
      const x = get("x");
      if (get("syscalls_per_s") !== undefined && x !== undefined) rows = Math.max(rows, x.length);
    }
  }
  return rows;
}"""
JS_TABLE_ROWS = "() => document.querySelectorAll('table.labkit-results tbody tr').length"


def _live_rows(page: Any) -> int:
    return int(page.evaluate(JS_LIVE_ROWS))


def test_playground_run_in_a_real_browser(tmp_path: Path) -> None:
    pytest.importorskip("playwright.sync_api")
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    deadline = time.monotonic() + TIMEOUT
    console: list[str] = []
    with JupyterLab(tmp_path, timeout=120) as lab, browser() as b:
        page = b.new_page(viewport={"width": 1300, "height": 2200})
        page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
        page.goto(lab.url(f"lab/tree/{NOTEBOOK.name}"))
        wait_for(page, "JupyterLab", JS_APP_READY, deadline, SHOT)
        wait_for(page, "the notebook's kernel", JS_KERNEL_IDLE, deadline, SHOT)

        # run it: every cell, including the notebook's own check of the panel
        page.evaluate(JS_RUN_ALL)
        wait_for(page, "every cell to run", JS_ALL_EXECUTED, deadline, SHOT)
        errors = page.locator(".jp-OutputArea-output[data-mime-type="
                              "'application/vnd.jupyter.stderr']").all_inner_texts()
        assert not any("Error" in e for e in errors), errors
        out = page.locator(".jp-Cell-outputArea").first
        run = out.locator("button.widget-button", has_text=re.compile(r"^\s*Run\s*$"))
        run.wait_for(timeout=30_000)
        wait_for(page, "the live figure", f"({JS_LIVE_ROWS})() >= 0", deadline, SHOT)
        assert page.evaluate(JS_TABLE_ROWS) == 0, "a results row before any run"
        rows_before = _live_rows(page)

        # toggle io_uring: the io_uring-only switches unlock, batch is on by default
        uring = out.locator("button.widget-toggle-button", has_text="io_uring")
        assert uring.is_enabled(), "io_uring is disabled on this machine"
        uring.click()
        page.wait_for_function(
            "(el) => el.classList.contains('mod-active')", arg=uring.element_handle(),
            timeout=10_000)
        batch = out.locator(".widget-checkbox", has_text="batch").locator("input")
        page.wait_for_function("(el) => !el.disabled && el.checked",
                               arg=batch.element_handle(), timeout=10_000)

        # press Run: the live figure's data grows while it runs, then the table gets a row
        run.click()
        wait_for(page, "the live figure to grow", f"({JS_LIVE_ROWS})() > {rows_before + 3}",
                 deadline, SHOT)
        mid = _live_rows(page)
        wait_for(page, "a results row", f"({JS_TABLE_ROWS})() >= 1", deadline, SHOT)
        wait_for(page, "the run's status", "document.body.innerText.includes('done:')",
                 deadline, SHOT)
        final = _live_rows(page)
        row = page.locator("table.labkit-results tbody tr").first.inner_text()

        # save, reload on the running kernel: the widgets come back from the kernel and
        # the live figure must render and grow again
        page.evaluate(JS_SAVE)
        page.wait_for_timeout(1000)
        page.reload()
        wait_for(page, "JupyterLab after the reload", JS_APP_READY, deadline, SHOT)
        wait_for(page, "the kernel after the reload", JS_KERNEL_IDLE, deadline, SHOT)
        wait_for(page, "the live figure after the reload", f"({JS_LIVE_ROWS})() >= 0",
                 deadline, SHOT)
        reloaded = _live_rows(page)
        out = page.locator(".jp-Cell-outputArea").first
        out.locator("button.widget-button", has_text=re.compile(r"^\s*Run\s*$")).click()
        wait_for(page, "the live figure to grow after the reload",
                 f"({JS_LIVE_ROWS})() > {reloaded + 3}", deadline, SHOT)
        wait_for(page, "a second results row", f"({JS_TABLE_ROWS})() >= 2", deadline, SHOT)
        after = _live_rows(page)
        page.wait_for_timeout(500)  # bokeh's paint of the last stream, for the screenshot
        SHOT.parent.mkdir(parents=True, exist_ok=True)
        out.screenshot(path=str(SHOT))

    assert final > mid > rows_before + 3, (rows_before, mid, final)
    assert page_row_ok(row), row
    # the reloaded view starts from the kernel's snapshot (at most a few seconds old)
    assert reloaded > rows_before and after > reloaded + 3, (final, reloaded, after)
    bad = [c for c in console if "bokeh" in c.lower() or "widget" in c.lower()]
    assert not bad, bad


def page_row_ok(row: str) -> bool:
    """The table row is an io_uring run that finished ok."""
    cells = row.split("\t")
    return "ok" in cells and "uring" in cells
