"""JupyterLab + the system's Chromium, driven by Playwright: what the browser test and
bench/screenshots.py share.

    with JupyterLab(root_dir) as lab, browser() as b:
        page = b.new_page(viewport={"width": 1300, "height": 2000})
        page.goto(lab.url("lab/tree/notebook.ipynb"))

JupyterLab listens on 127.0.0.1 only, on a free port, with a fresh random token and its
own config directory (no news toast, no workspace of a previous run); it is stopped by its
pid (SIGTERM, then SIGKILL after a grace period). The browser is Debian's /usr/bin/chromium
launched through `executable_path`: Playwright never downloads a browser here.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL for JupyterLab


def chromium_path() -> str | None:
    """Debian's chromium (or one on PATH), None when there is none."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(lab: subprocess.Popen[bytes], port: int, deadline: float) -> None:
    """Read JupyterLab's log until it says it serves on our port, then keep draining it
    (a full pipe would block the server)."""
    sys.path.insert(0, str(ROOT))
    from labkit.procs.child import LineReader, Tail

    assert lab.stderr is not None
    reader = LineReader(lab.stderr)
    while True:
        line = reader.readline(deadline)  # TimeoutError at the deadline
        if line is None:
            raise RuntimeError(f"jupyter lab exited early (code {lab.wait()})")
        if f"127.0.0.1:{port}/" in line.decode(errors="replace"):
            Tail(lab.stderr, "jupyterlab-log")
            return


class JupyterLab:
    """A JupyterLab server over `root_dir` for one test or script (a context manager)."""

    def __init__(self, root_dir: str | os.PathLike[str], *, timeout: float = 120.0,
                 env: dict[str, str] | None = None) -> None:
        self.root_dir = Path(root_dir)
        self.timeout = timeout
        self.extra_env = env or {}
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self._config = Path(tempfile.mkdtemp(prefix="labkit-lab-config-"))

    def url(self, path: str = "lab") -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def start(self) -> JupyterLab:
        labconfig = self._config / "labconfig"
        labconfig.mkdir(parents=True)
        # no "would you like news?" toast over the page
        (labconfig / "page_config.json").write_text(json.dumps(
            {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
        pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                     if p)
        env = dict(os.environ, PYTHONPATH=pythonpath, JUPYTER_CONFIG_DIR=str(self._config),
                   **self.extra_env)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={self.port}",
             "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
             f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root_dir}",
             "--LabApp.expose_app_in_browser=True",
             f"--LabApp.workspaces_dir={self._config / 'workspaces'}",
             *(["--allow-root"] if os.geteuid() == 0 else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
            start_new_session=True)
        try:
            wait_listening(self.proc, self.port, time.monotonic() + self.timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int | None:
        """SIGTERM JupyterLab by pid (its kernels go with it), SIGKILL after the grace."""
        proc, self.proc = self.proc, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, 15)
                try:
                    code = proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, 9)
                    code = proc.wait()
            else:
                code = proc.returncode
        shutil.rmtree(self._config, ignore_errors=True)
        return code

    def __enter__(self) -> JupyterLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def browser(executable: str | None = None) -> Iterator[Any]:
    """A headless Chromium (the system's) under Playwright, closed on exit."""
    from playwright.sync_api import sync_playwright

    path = executable or chromium_path()
    if path is None:
        raise RuntimeError("chromium is not installed: `make setup` (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# JavaScript predicates on a JupyterLab page (expose_app_in_browser gives window.jupyterapp)
JS_APP_READY = "!!(window.jupyterapp && window.jupyterapp.shell)"
JS_KERNEL_IDLE = (
    "(() => { const w = window.jupyterapp.shell.currentWidget;"
    " const k = w && w.sessionContext && w.sessionContext.session"
    " && w.sessionContext.session.kernel; return !!(k && k.status === 'idle'); })()")
JS_RUN_ALL = "window.jupyterapp.commands.execute('notebook:run-all-cells')"
JS_SAVE = "window.jupyterapp.commands.execute('docmanager:save')"
# Every cell has run: no busy "[*]" prompt, and each code cell has an execution count.
JS_ALL_EXECUTED = (
    "(() => { const w = window.jupyterapp.shell.currentWidget; if (!w || !w.content)"
    " return false; const cells = w.content.widgets.filter(c => c.model.type === 'code');"
    " return cells.length > 0 && cells.every(c => c.model.executionCount !== null)"
    " && w.sessionContext.session.kernel.status === 'idle'; })()")


def wait_for(page: Any, what: str, js: str, deadline: float, shot: Path | None = None,
             arg: Any = None) -> Any:
    """page.wait_for_function(js) until the deadline; on failure, a screenshot beside
    `shot` (name.failed.png) and an error naming what was awaited."""
    left = max(1.0, deadline - time.monotonic())
    try:
        return page.wait_for_function(js, arg=arg, timeout=left * 1000)
    except Exception as e:
        if shot is not None:
            shot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(shot.with_suffix(".failed.png")), full_page=True)
        raise AssertionError(f"timed out waiting for {what}") from e
