"""Run a command inside a User-Mode Linux guest: a kernel with kTLS where the host has none.

    result = run_in_sandbox([sys.executable, "-m", "pytest", "tests/test_ktls.py"], timeout=600)
    result.returncode  # the guest command's exit status, not linux.uml's

Debian's `user-mode-linux` package is a Linux 6.1 kernel that runs as an ordinary host
process (no KVM, no root needed beyond what the command itself needs) and ships its
modules, `tls.ko` among them. The guest boots straight over the host's own root
filesystem through hostfs, read-only, so the project, its venv and the system Python are
all there at the same paths, in about two seconds:

- `/proc`, `/sys`, tmpfs on `/run`, `/tmp` and `/dev/shm` (the guest's own, empty);
- the results directory (and any `writable` one) mounted read-write at its host path, so
  what the command writes there is on the host afterwards;
- `lo` up, nothing else: servers inside listen on 127.0.0.1 of the guest;
- `modprobe` works: a wrapper points kmod at the UML kernel's modules (the guest's
  /lib/modules is the host's, for another kernel), for the command and for the kernel's
  own module auto-loading (gcm, ctr, ghash when tls asks for AES-GCM).

`linux.uml` exits 0 whatever happened inside, so the guest writes the command's exit
status to `sandbox.json` in the results directory and that is what is returned. The
guest's stdout and stderr arrive on the caller's stdout and stderr (or are captured);
kernel messages go to a separate console log, shown when the guest fails to report.

Measure with care: the guest is one CPU, its AES-GCM has no AES-NI and each syscall costs
a host context switch, so kTLS in UML is *slower* than userspace TLS. The sandbox proves
the kernel path works and shows syscall and copy differences; it does not show kTLS's speed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

UML_BINARY = "linux.uml"
UML_MODULES = Path("/usr/lib/uml/modules")
DEFAULT_TIMEOUT = 600.0
DEFAULT_MEM = "1G"
# Boot and power-off on top of the command's own time limit before the host gives up.
BOOT_ALLOWANCE = 60.0
STATUS_FILE = "sandbox.json"
INSTALL_HINT = (
    "install it with `apt-get install user-mode-linux kmod` (`make setup` does), "
    "or run on a host whose kernel has what you need"
)


class SandboxError(RuntimeError):
    """The sandbox could not run the command (not: the command failed)."""


class SandboxUnavailable(SandboxError):
    """user-mode-linux (or kmod) is not installed."""


class SandboxTimeout(SandboxError):
    """The guest did not finish within timeout plus the boot allowance and was killed."""


@dataclasses.dataclass
class SandboxResult:
    """Like subprocess.CompletedProcess, plus the guest's timings."""

    args: list[str]
    returncode: int
    stdout: str | None  # None unless capture_output
    stderr: str | None
    results_dir: Path
    boot_seconds: float  # linux.uml started -> guest init running (host clock)
    command_seconds: float  # the command alone, measured in the guest
    wall_seconds: float  # everything, host clock
    kernel: str  # the guest kernel's release
    console: str  # the guest kernel's own messages

    def check_returncode(self) -> None:
        if self.returncode != 0:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.stdout,
                                                self.stderr)


def uml_binary() -> str | None:
    """Path of linux.uml ($LABKIT_UML if set), or None when it is not installed."""
    if "LABKIT_UML" in os.environ:
        given = os.environ["LABKIT_UML"]
        return given if os.access(given, os.X_OK) else None
    return shutil.which(UML_BINARY) or next(
        (p for p in ("/usr/bin/linux.uml", "/usr/local/bin/linux.uml") if os.access(p, os.X_OK)),
        None,
    )


def _kmod(tool: str) -> str | None:
    return shutil.which(tool) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{tool}", os.X_OK)), None
    )


def uml_kernel_versions() -> list[str]:
    """Kernel releases whose modules the user-mode-linux package installed."""
    if not UML_MODULES.is_dir():
        return []
    return sorted(p.name for p in UML_MODULES.iterdir() if (p / "modules.dep").exists())


def available() -> tuple[bool, str]:
    """(usable, why not / what it is): the check `labkit doctor` shows."""
    binary = uml_binary()
    if binary is None:
        where = os.environ.get("LABKIT_UML", UML_BINARY)
        return False, f"{where} not found: {INSTALL_HINT}"
    versions = uml_kernel_versions()
    if not versions:
        return False, f"{binary} has no modules under {UML_MODULES}: reinstall user-mode-linux"
    if _kmod("modprobe") is None:
        return False, "kmod (modprobe) is not installed: `apt-get install kmod` (`make setup` does)"
    return True, f"{binary}, kernel {', '.join(versions)}"


def _module_root(work: Path) -> Path:
    """A directory whose lib/modules/<ver> are the UML kernel's modules (for modprobe -d)."""
    root = work / "modroot"
    (root / "lib" / "modules").mkdir(parents=True)
    for version in uml_kernel_versions():
        (root / "lib" / "modules" / version).symlink_to(UML_MODULES / version)
    return root


def _wrappers(work: Path, modroot: Path) -> Path:
    """bin/ with modprobe and modinfo that look in the UML kernel's module tree."""
    bindir = work / "bin"
    bindir.mkdir()
    for tool, flag in (("modprobe", "-d"), ("modinfo", "-b")):
        real = _kmod(tool)
        if real is None:
            continue
        path = bindir / tool
        path.write_text(f"#!/bin/sh\nexec {shlex.quote(real)} {flag} {shlex.quote(str(modroot))}"
                        ' "$@"\n')
        path.chmod(0o755)
    return bindir


# The guest mounts its own tmpfs on these: host files below them are hidden there.
GUEST_SCRATCH = ("/tmp", "/run", "/dev/shm")


def _shadowed_host_paths(cwd: str | os.PathLike[str] | None) -> list[Path]:
    """The checkout, the interpreter's prefix (the venv) and the working directory, where
    they live below a directory the guest covers with its own tmpfs (a CI clone in /tmp):
    they are mounted back at their host paths, or the guest could not run labkit."""
    wanted = [Path(__file__).resolve().parents[1], Path(sys.prefix).resolve(),
              Path(cwd if cwd is not None else os.getcwd()).resolve()]
    hidden = [p for p in dict.fromkeys(wanted)
              if any(p.is_relative_to(d) for d in GUEST_SCRATCH)]
    # a path inside another one that is mounted already needs no mount of its own
    return [p for p in hidden if not any(q != p and p.is_relative_to(q) for q in hidden)]


def _init_script(argv: Sequence[str], *, cwd: str, env: Mapping[str, str], timeout: float,
                 mounts: Sequence[Path], bindir: Path, results: Path, work: Path) -> str:
    """The guest's /sbin/init: set the machine up, run the command, report, power off."""
    q = shlex.quote
    limit = max(1, math.ceil(timeout))  # whole seconds; timeout(1) reads 0 as "none"
    lines = [
        "#!/bin/sh",
        "# labkit sandbox guest init (generated; see labkit/sandbox.py)",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; export PATH",
        "booted=$(date +%s.%N)",  # the root is read-only: written out below
        "mount -t proc proc /proc",
        "mount -t sysfs sysfs /sys",
        # the root is the host's, read-only: the guest's scratch space is its own tmpfs
        "mount -t tmpfs -o mode=1777 tmpfs /tmp",
        "mount -t tmpfs -o mode=755 tmpfs /run",
        "mkdir -p /dev/shm && mount -t tmpfs -o mode=1777 tmpfs /dev/shm",
    ]
    # after the tmpfs mounts, so a host directory under /tmp is visible again
    for d in mounts:
        lines.append(f"mkdir -p {q(str(d))} 2>/dev/null; "
                     f"mount -t hostfs hostfs {q(str(d))} -o {q(str(d))} || "
                     f"echo 'sandbox: cannot mount {d} read-write' >&2")
    lines += [
        f"echo \"$booted\" > {q(str(work / 'booted'))}",
        "ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null || "
        "echo 'sandbox: cannot bring lo up (iproute2 missing?)' >&2",
        # the kernel's module auto-loading runs this with a module alias (gcm(aes), ...)
        f"echo {q(str(bindir / 'modprobe'))} > /proc/sys/kernel/modprobe",
        # consoles: tty1 is the command's stdout, tty2 its stderr, byte for byte
        "stty -opost -echo < /dev/tty1; stty -opost -echo < /dev/tty2",
    ]
    # The command's environment is exactly `env` (as subprocess does), applied by env(1)
    # to the command alone, so e.g. an LD_PRELOAD meant for it never reaches this script.
    child_env = {k: v for k, v in env.items() if k.isidentifier()}
    child_env["PATH"] = f"{bindir}:{env.get('PATH', '/usr/local/bin:/usr/bin:/bin')}"
    child_env |= {"LABKIT_SANDBOX": "1", "LABKIT_SANDBOX_RESULTS": str(results)}
    assignments = " ".join(q(f"{k}={v}") for k, v in child_env.items())
    lines += [
        f"cd {q(cwd)} || cd /",
        "start=$(date +%s.%N)",
        f"timeout -k 5 {limit} env -i {assignments} {' '.join(q(a) for a in argv)} "
        "</dev/null >/dev/tty1 2>/dev/tty2",
        "status=$?",
        "end=$(date +%s.%N)",
        '[ $status -eq 124 ] && echo "sandbox: the command ran out of time '
        f'({limit} s) and was stopped" > /dev/tty2',
        f"printf '{{\"exit_status\": %d, \"command_start\": %s, \"command_end\": %s, "
        f"\"kernel\": \"%s\"}}\\n' \"$status\" \"$start\" \"$end\" \"$(uname -r)\" "
        f"> {q(str(results / STATUS_FILE))}",
        "sync",
        "echo o > /proc/sysrq-trigger",  # power off now: init must never exit (panic)
        "sleep 60",
    ]
    return "\n".join(lines) + "\n"


def run_in_sandbox(
    argv: Sequence[str],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    results_dir: str | os.PathLike[str] | None = None,
    writable: Sequence[str | os.PathLike[str]] = (),
    capture_output: bool = False,
    mem: str = DEFAULT_MEM,
) -> SandboxResult:
    """Run argv in a UML guest and return its exit status and output.

    timeout bounds the command (it gets SIGTERM, then SIGKILL; exit status 124); the
    guest as a whole gets BOOT_ALLOWANCE more before the host kills it (SandboxTimeout).
    results_dir (default: a fresh temporary directory, kept) and `writable` are mounted
    read-write at their host paths; everything else is the host's files, read-only.
    env defaults to this process's environment. Raises SandboxUnavailable when
    user-mode-linux or kmod is missing, SandboxError when the guest did not report.
    """
    if not argv:
        raise ValueError("run_in_sandbox needs a command")
    ok, why = available()
    if not ok:
        raise SandboxUnavailable(f"the sandbox needs user-mode-linux: {why}")
    binary = uml_binary()
    assert binary is not None
    results = Path(results_dir) if results_dir is not None else Path(
        tempfile.mkdtemp(prefix="labkit-sandbox-results-"))
    results = results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    (results / STATUS_FILE).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="labkit-sandbox-")).resolve()
    try:
        modroot = _module_root(work)
        bindir = _wrappers(work, modroot)
        mounts = [*_shadowed_host_paths(cwd), work, results,
                  *(Path(w).resolve() for w in writable)]
        init = work / "init"
        init.write_text(_init_script(
            list(argv), cwd=os.fspath(cwd if cwd is not None else os.getcwd()),
            env=dict(os.environ if env is None else env), timeout=timeout, mounts=mounts,
            bindir=bindir, results=results, work=work))
        init.chmod(0o755)
        (work / "uml").mkdir()
        console_path = work / "console.log"
        cmdline = [
            binary, f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={init}", f"uml_dir={work / 'uml'}", "con=null", "con0=null,fd:{console}",
            "con1=null,fd:1", "con2=null,fd:2", "quiet",
        ]
        return _boot(cmdline, list(argv), timeout, capture_output, results, work, console_path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _boot(cmdline: list[str], argv: list[str], timeout: float, capture: bool, results: Path,
          work: Path, console_path: Path) -> SandboxResult:
    out = subprocess.PIPE if capture else None
    started_wall = time.time()
    started = time.monotonic()
    with open(console_path, "wb") as console:
        # the kernel console writes to this descriptor (same number in the child); the
        # child leads its own process group, so a timeout can stop linux.uml and every
        # host process it made, by that id
        fd = console.fileno()
        proc = subprocess.Popen(
            [a.replace("{console}", str(fd)) for a in cmdline], stdin=subprocess.DEVNULL,
            stdout=out, stderr=out, pass_fds=(fd,), start_new_session=True, cwd=work,
        )
    captured: dict[str, bytes] = {}
    readers = [
        threading.Thread(target=lambda n=name, s=stream: captured.__setitem__(n, s.read()),
                         daemon=True)
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)) if stream
    ]
    for t in readers:
        t.start()
    try:
        proc.wait(timeout=timeout + BOOT_ALLOWANCE)
    except BaseException as e:  # the time is up, or the caller was interrupted
        _kill_group(proc)
        if isinstance(e, subprocess.TimeoutExpired):
            raise SandboxTimeout(
                f"the sandbox did not finish within {timeout + BOOT_ALLOWANCE:.0f} s and was "
                f"killed; kernel console tail:\n{_tail(console_path)}") from None
        raise
    finally:
        for t in readers:
            t.join()
    wall = time.monotonic() - started
    console_text = console_path.read_text(errors="replace")
    try:
        status = json.loads((results / STATUS_FILE).read_text())
    except (OSError, ValueError):
        raise SandboxError(
            f"the guest did not report an exit status (linux.uml exit code {proc.returncode});"
            f" kernel console tail:\n{_tail(console_path)}") from None
    try:
        booted = float((work / "booted").read_text())
    except (OSError, ValueError):
        booted = started_wall
    return SandboxResult(
        args=argv,
        returncode=int(status["exit_status"]),
        stdout=captured.get("stdout", b"").decode(errors="replace") if capture else None,
        stderr=captured.get("stderr", b"").decode(errors="replace") if capture else None,
        results_dir=results,
        boot_seconds=max(0.0, booted - started_wall),
        command_seconds=float(status["command_end"]) - float(status["command_start"]),
        wall_seconds=wall,
        kernel=str(status.get("kernel", "")),
        console=console_text,
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group we created for linux.uml (by its id, never by name):
    the UML kernel and the host processes it runs guest address spaces in. Called only
    while the leader is unreaped, so the id cannot have been reused."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no console log)"
    return "\n".join(text[-lines:]) or "(empty)"


def main(argv: list[str], timeout: float, results_dir: str | None, mem: str,
         quiet: bool) -> int:
    """`labkit sandbox`: relay the guest's output, print timings, return its exit status."""
    try:
        result = run_in_sandbox(argv, timeout, results_dir=results_dir, mem=mem)
    except SandboxUnavailable as e:
        print(f"labkit sandbox: {e}", file=sys.stderr)
        return 127
    except SandboxError as e:
        print(f"labkit sandbox: {e}", file=sys.stderr)
        return 125
    if not quiet:
        print(f"labkit sandbox: UML kernel {result.kernel} booted in {result.boot_seconds:.2f} s;"
              f" command exit status {result.returncode} after {result.command_seconds:.2f} s;"
              f" {result.wall_seconds:.2f} s in all; results in {result.results_dir}",
              file=sys.stderr)
    return result.returncode
