"""`labkit sandbox`: a command runs in a UML guest over the host's files (read-only), its
exit status and output come back, results land in the host directory, time is bounded;
the guest kernel sizes its FP state from the host (so it boots on AVX-512/AMX hosts), and
`labkit doctor` reports the sandbox from a real boot, failures included.

Each test boots a guest (under a second). They skip, with the reason, where no guest
kernel is built (`make setup` builds it).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from labkit.hosts import sandbox

OK, WHY = sandbox.available()
needs_uml = pytest.mark.skipif(not OK or sandbox.inside_guest(),
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


@needs_uml
def test_guest_sizes_its_fp_state_from_the_host(tmp_path: Path) -> None:
    """The AMX failure's mechanism, checked on any CPU: the guest's FP register buffer is
    exactly as large as the XSAVE state this host's ptrace hands out and takes back (Debian's
    6.1/6.12 UML kernels compile a size in, and PTRACE_SETREGSET refuses any other)."""
    helper = tmp_path / "xstate_size"
    subprocess.run(["gcc", "-O1", "-Wall", "-Wextra", "-Werror", "-o", str(helper),
                    str(Path(__file__).parent / "helpers" / "xstate_size.c")], check=True)
    host = int(subprocess.run([str(helper), "ptrace"], capture_output=True, text=True,
                              check=True).stdout)
    r = sandbox.run_in_sandbox([str(helper), "signal"], 60, results_dir=tmp_path,
                               capture_output=True)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) == host, f"guest FP state {r.stdout.strip()} B, host XSAVE {host} B"
    print(f"host XSAVE state {host} B = the guest's FP buffer (Linux {r.kernel})")


@pytest.mark.parametrize("missing", ["LABKIT_UML", "cache"])
def test_missing_guest_kernel_is_a_clear_error(missing: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    if missing == "LABKIT_UML":
        monkeypatch.setenv("LABKIT_UML", "/nonexistent/linux")
    else:  # nothing built in an empty cache
        monkeypatch.delenv("LABKIT_UML", raising=False)
        monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    with pytest.raises(sandbox.SandboxUnavailable, match="make setup"):
        sandbox.run_in_sandbox(["true"], 10)
    p = subprocess.run([sys.executable, "-m", "labkit", "sandbox", "--", "true"],
                       capture_output=True, text=True, timeout=60, env=dict(os.environ))
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
    from labkit.lab import store

    runs = store.load(tmp_path)
    assert len(runs) == 1 and runs.iloc[0]["status"] == "ok"
    assert runs.iloc[0]["tls"] == "ktls" and runs.iloc[0]["loss_pct"] < 1


@needs_uml
def test_doctor_reports_the_sandbox_from_a_real_boot() -> None:
    from labkit import caps

    fresh = caps.check_sandbox(fresh=True)
    assert fresh.ok is True, fresh
    assert "booted Linux" in fresh.detail and "kTLS works in the guest" in fresh.detail
    assert "just now" in fresh.detail and "AMX" in fresh.detail  # why this kernel
    again = caps.check_sandbox()
    assert again.ok is True and "cached" in again.detail


@needs_uml
def test_doctor_reports_a_guest_that_cannot_boot(monkeypatch: pytest.MonkeyPatch) -> None:
    """init dies at once, as on a host the guest cannot run on: doctor says NO, quotes the
    console line, says what to do, and the working guest's cached check is untouched."""
    from labkit import caps

    monkeypatch.setenv("LABKIT_UML_APPEND", "init=/bin/false")
    broken = caps.check_sandbox(fresh=True)
    assert broken.ok is False
    assert "did not boot" in broken.detail and "Kernel panic" in broken.detail
    assert "labkit sandbox -- uname -a" in broken.todo and "recorded" in broken.todo
    with pytest.raises(sandbox.SandboxError, match="Attempted to kill init"):
        sandbox.run_in_sandbox(["true"], 10)
    monkeypatch.delenv("LABKIT_UML_APPEND")
    assert caps.check_sandbox().ok is True
