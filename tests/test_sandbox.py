"""`labkit sandbox`: a command runs in a UML guest over the host's files (read-only), its
exit status and output come back, results land in the host directory, time is bounded.

Each test boots a guest (about 2 s). They skip, with the reason, where user-mode-linux is
not installed (`make setup` installs it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit import sandbox

OK, WHY = sandbox.available()
needs_uml = pytest.mark.skipif(not OK or os.environ.get("LABKIT_SANDBOX") == "1",
                               reason=WHY if not OK else "already inside the sandbox")


@needs_uml
def test_exit_status_output_and_results_come_back(tmp_path: Path) -> None:
    script = ('echo out; echo err >&2; uname -r > "$LABKIT_SANDBOX_RESULTS/kernel"; '
              "[ -w /usr ] && echo root-writable; exit 7")
    r = sandbox.run_in_sandbox(["sh", "-c", script], 60, results_dir=tmp_path,
                               capture_output=True)
    assert r.returncode == 7  # the guest command's, although linux.uml itself exits 0
    assert r.stdout == "out\n" and r.stderr == "err\n"  # separate streams, byte for byte
    assert (tmp_path / "kernel").read_text().strip() == r.kernel != os.uname().release
    assert 0 < r.boot_seconds < 30 and r.command_seconds < r.wall_seconds
    print(f"UML {r.kernel}: boot {r.boot_seconds:.2f} s, {r.wall_seconds:.2f} s in all")


@needs_uml
def test_guest_has_the_venv_tls_module_and_loopback(tmp_path: Path) -> None:
    code = ("import socket, ssl, labkit; from labkit import caps; "
            "s = socket.create_server(('127.0.0.1', 0)); print(caps.ktls_probe()[0])")
    r = sandbox.run_in_sandbox([sys.executable, "-c", code], 60, results_dir=tmp_path,
                               capture_output=True)
    assert (r.returncode, r.stdout) == (0, "True\n"), r.stderr


@needs_uml
def test_command_time_is_bounded(tmp_path: Path) -> None:
    r = sandbox.run_in_sandbox(["sleep", "30"], 1, results_dir=tmp_path, capture_output=True)
    assert r.returncode == 124 and "ran out of time (1 s)" in (r.stderr or "")
    assert r.command_seconds < 10


@needs_uml
def test_cli_propagates_the_exit_status(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "labkit", "sandbox", "--quiet", "--results",
                        str(tmp_path), "--", "sh", "-c", "echo hi; exit 3"],
                       capture_output=True, text=True, timeout=120)
    assert (p.returncode, p.stdout) == (3, "hi\n"), p.stderr


def test_missing_user_mode_linux_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABKIT_UML", "/nonexistent/linux.uml")
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install user-mode-linux"):
        sandbox.run_in_sandbox(["true"], 10)
    p = subprocess.run([sys.executable, "-m", "labkit", "sandbox", "--", "true"],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, LABKIT_UML="/nonexistent/linux.uml"))
    assert p.returncode == 127 and "make setup" in p.stderr


@needs_uml
def test_run_sandbox_does_a_real_ktls_run_and_stores_it_on_the_host(tmp_path: Path) -> None:
    """`labkit run --tls ktls --sandbox`: the run happens in the guest (which has kTLS),
    its run file lands in the host's store."""
    p = subprocess.run([sys.executable, "-m", "labkit", "run", "--tls", "ktls", "--sandbox",
                        "--duration", "1", "--warmup", "0.3", "--rate", "20", "--pairs", "2",
                        "--perf", "off", "--no-progress", "--store", str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "UML sandbox" in p.stderr
    from labkit import store

    runs = store.load(tmp_path)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "ok"
    assert runs.iloc[0]["tls"] == "ktls" and runs.iloc[0]["loss_pct"] < 1
