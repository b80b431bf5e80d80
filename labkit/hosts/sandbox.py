"""Run a command inside a User-Mode Linux guest: a kernel with kTLS where the host has none.

    result = run_in_sandbox([sys.executable, "-m", "pytest", "tests/test_ktls.py"], timeout=600)
    result.returncode  # the guest command's exit status, not the UML kernel's
    boot_check()       # did the guest really boot here? (cached per guest and host kernel)

The guest kernel is the one `make setup` builds (labkit/hosts/guest_kernel.py: Linux 7.2
for UML, everything the lab needs built in, no modules), or $LABKIT_UML. It runs as an
ordinary host process (no KVM, no root needed beyond what the command itself needs) and
boots straight over the host's own root filesystem through hostfs, read-only, so the
project, its venv and the system Python are all there at the same paths, in under a second:

- `/proc`, `/sys`, tmpfs on `/run`, `/tmp` and `/dev/shm` (the guest's own, empty);
- the results directory (and any `writable` one) mounted read-write at its host path, so
  what the command writes there is on the host afterwards;
- `lo` up, nothing else: servers inside listen on 127.0.0.1 of the guest.

$LABKIT_UML_APPEND adds kernel command-line arguments (after labkit's own, so they win):
to try a boot option, or to break the guest on purpose (`init=/bin/false` makes init die
at once, as it does on a host the guest cannot run on).

The UML kernel exits 0 whatever happened inside, so the guest writes the command's exit
status to `sandbox.json` in the results directory and that is what is returned. The
guest's stdout and stderr arrive on the caller's stdout and stderr (or are captured);
kernel messages go to a separate console log, shown when the guest fails to report.

Measure with care: the guest is one CPU, its AES-GCM has no AES-NI and each syscall costs
a host context switch, so kTLS in UML is *slower* than userspace TLS. The sandbox proves
the kernel path works and shows syscall and copy differences; it does not show kTLS's speed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
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

from labkit.hosts import guest_kernel

DEFAULT_TIMEOUT = 600.0
DEFAULT_MEM = "1G"
# Boot and power-off on top of the command's own time limit before the host gives up.
BOOT_ALLOWANCE = 60.0
STATUS_FILE = "sandbox.json"
INSTALL_HINT = "run `make setup`, which builds it once (several minutes) and caches it"


class SandboxError(RuntimeError):
    """The sandbox could not run the command (not: the command failed). `console` holds
    the guest kernel's messages when it got as far as starting."""

    def __init__(self, message: str, console: str = "") -> None:
        super().__init__(message)
        self.console = console


class SandboxUnavailable(SandboxError):
    """There is no guest kernel (not built, or $LABKIT_UML names nothing runnable)."""


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
    boot_seconds: float  # the UML kernel started -> guest init running (host clock)
    command_seconds: float  # the command alone, measured in the guest
    wall_seconds: float  # everything, host clock
    kernel: str  # the guest kernel's release
    console: str  # the guest kernel's own messages

    def check_returncode(self) -> None:
        if self.returncode != 0:
            raise subprocess.CalledProcessError(self.returncode, self.args, self.stdout,
                                                self.stderr)


def uml_binary() -> str | None:
    """The guest kernel: $LABKIT_UML if set, else the one `make setup` built; None if none."""
    if "LABKIT_UML" in os.environ:
        given = os.environ["LABKIT_UML"]
        return given if os.access(given, os.X_OK) else None
    kernel = guest_kernel.installed()
    return str(kernel.path) if kernel is not None else None


def extra_kernel_args() -> list[str]:
    """$LABKIT_UML_APPEND, split like a shell would."""
    return shlex.split(os.environ.get("LABKIT_UML_APPEND", ""))


# Set in the environment of every command the guest runs: what must know that it runs in
# the guest (no nesting, slower start-up) asks inside_guest().
GUEST_ENV = "LABKIT_SANDBOX"


def inside_guest() -> bool:
    """True in a process that run_in_sandbox started inside the guest."""
    return os.environ.get(GUEST_ENV) == "1"


def available() -> tuple[bool, str]:
    """(a guest kernel is there to boot, what it is / why not). Whether it *boots* on this
    host is boot_check()'s question."""
    binary = uml_binary()
    if binary is None:
        if "LABKIT_UML" in os.environ:
            return False, (f"LABKIT_UML={os.environ['LABKIT_UML']} is not an executable "
                           "file: point it at a UML kernel, or unset it to use the guest "
                           "kernel `make setup` builds")
        return False, f"no guest kernel built for the sandbox: {INSTALL_HINT}"
    if "LABKIT_UML" in os.environ:
        return True, f"guest kernel {binary} (from LABKIT_UML)"
    kernel = guest_kernel.installed()
    assert kernel is not None
    return True, kernel.describe()


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
                 mounts: Sequence[Path], results: Path, work: Path) -> str:
    """The guest's /sbin/init: set the machine up, run the command, report, power off."""
    q = shlex.quote
    limit = max(1, math.ceil(timeout))  # whole seconds; timeout(1) reads 0 as "none"
    lines = [
        "#!/bin/sh",
        "# labkit sandbox guest init (generated; see labkit/hosts/sandbox.py)",
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
        # consoles: tty1 is the command's stdout, tty2 its stderr, byte for byte
        "stty -opost -echo < /dev/tty1; stty -opost -echo < /dev/tty2",
    ]
    # The command's environment is exactly `env` (as subprocess does), applied by env(1)
    # to the command alone, so e.g. an LD_PRELOAD meant for it never reaches this script.
    child_env = {k: v for k, v in env.items() if k.isidentifier()}
    child_env["PATH"] = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    child_env |= {GUEST_ENV: "1", "LABKIT_SANDBOX_RESULTS": str(results)}
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
    env defaults to this process's environment. Raises SandboxUnavailable when there is
    no guest kernel, SandboxError when the guest did not report (it did not boot, or died).
    """
    if not argv:
        raise ValueError("run_in_sandbox needs a command")
    ok, why = available()
    if not ok:
        raise SandboxUnavailable(f"the sandbox needs its guest kernel: {why}")
    binary = uml_binary()
    assert binary is not None
    results = Path(results_dir) if results_dir is not None else Path(
        tempfile.mkdtemp(prefix="labkit-sandbox-results-"))
    results = results.resolve()
    results.mkdir(parents=True, exist_ok=True)
    (results / STATUS_FILE).unlink(missing_ok=True)
    work = Path(tempfile.mkdtemp(prefix="labkit-sandbox-")).resolve()
    try:
        mounts = [*_shadowed_host_paths(cwd), work, results,
                  *(Path(w).resolve() for w in writable)]
        init = work / "init"
        init.write_text(_init_script(
            list(argv), cwd=os.fspath(cwd if cwd is not None else os.getcwd()),
            env=dict(os.environ if env is None else env), timeout=timeout, mounts=mounts,
            results=results, work=work))
        init.chmod(0o755)
        (work / "uml").mkdir()
        console_path = work / "console.log"
        cmdline = [
            binary, f"mem={mem}", "root=/dev/root", "rootfstype=hostfs", "rootflags=/", "ro",
            f"init={init}", f"uml_dir={work / 'uml'}", "con=null", "con0=null,fd:{console}",
            "con1=null,fd:1", "con2=null,fd:2", "quiet", *extra_kernel_args(),
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
            f"the guest did not report an exit status (UML kernel exit code "
            f"{proc.returncode}): {explain(console_text)}; kernel console tail:\n"
            f"{_tail(console_path)}", console=console_text) from None
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


# Console lines that say why a guest died, most telling first: a failed host call of the
# UML kernel itself (the AMX failure is "ptrace set fp regs failed, errno = 14"), then the
# panic, then anything that failed.
_EXPLAINING = (re.compile(r"failed, errno = -?\d+"), re.compile(r"Kernel panic"),
               re.compile(r"\b(failed|error|cannot|unable)\b", re.IGNORECASE))


def explain(console: str) -> str:
    """The console lines that explain a failed boot, joined by ' -> '."""
    lines = [line.strip() for line in console.splitlines() if line.strip()]
    found = []
    for pattern in _EXPLAINING:
        line = next((x for x in lines if pattern.search(x)), None)
        if line is not None and line not in found:
            found.append(line)
        if len(found) == 2:
            break
    return " -> ".join(found) or "the console says nothing (see the console tail)"


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


# ---- does the guest boot here? ----------------------------------------------------------

BOOT_CHECK_TIMEOUT = 60.0
# Run in the guest by boot_check(): the venv's labkit over hostfs, loopback TCP and the
# tls ULP with both key directions, the three things every sandbox user needs.
_BOOT_CHECK_CODE = ("from labkit import caps; ok, why = caps.ktls_probe(); "
                    "print('ktls', 'yes' if ok else 'no: ' + why)")


@dataclasses.dataclass(frozen=True)
class BootCheck:
    """What happened when the guest was booted on this host."""

    ok: bool
    detail: str  # one line: what booted and how fast, or why it did not
    console_line: str  # the console line(s) that explain a failure; "" when ok
    boot_seconds: float
    kernel: str  # the guest's release ("" when it did not boot)
    host_kernel: str
    checked: str  # UTC date and time of the boot
    cached: bool = False  # read from the cache rather than booted now


def _guest_identity(binary: str) -> str:
    """The guest kernel's content hash, the host kernel and the extra arguments: a boot
    check holds for exactly these."""
    digest = hashlib.sha256()
    with open(binary, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return "|".join((digest.hexdigest()[:20], platform.release(), *extra_kernel_args()))


def _boot_cache() -> Path:
    return guest_kernel.cache_root() / "boot-checks.json"


def boot_check(fresh: bool = False) -> BootCheck:
    """Boot the guest once and run a kTLS probe in it; cached per guest kernel (by content)
    and host kernel, so `labkit doctor` reports a real boot without paying for one each
    time. fresh=True boots again."""
    ok, why = available()
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if not ok:
        return BootCheck(False, why, "", 0.0, "", platform.release(), now)
    binary = uml_binary()
    assert binary is not None
    key = _guest_identity(binary)
    cache = _boot_cache()
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if not fresh and key in known:
        return BootCheck(**(known[key] | {"cached": True}))
    check = _boot_once(now)
    known[key] = dataclasses.asdict(check)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}")
    tmp.write_text(json.dumps(known, indent=1) + "\n")
    os.replace(tmp, cache)
    return check


def _boot_once(now: str) -> BootCheck:
    host = platform.release()
    try:
        with tempfile.TemporaryDirectory(prefix="labkit-boot-check-") as results:
            r = run_in_sandbox([sys.executable, "-c", _BOOT_CHECK_CODE], BOOT_CHECK_TIMEOUT,
                               capture_output=True, cwd="/", results_dir=results)
    except SandboxError as e:
        line = explain(e.console)
        return BootCheck(False, f"the guest did not boot on this host (Linux {host}): {line}",
                         line, 0.0, "", host, now)
    passed = r.returncode == 0 and (r.stdout or "").startswith("ktls yes")
    said = (r.stdout or "").strip() or (r.stderr or "").strip()[-300:]
    if not passed:
        return BootCheck(False, f"the guest booted (Linux {r.kernel}, {r.boot_seconds:.2f} s) "
                         f"but its check failed (exit {r.returncode}): {said}", said,
                         r.boot_seconds, r.kernel, host, now)
    return BootCheck(True, f"booted Linux {r.kernel} here in {r.boot_seconds:.2f} s "
                     f"({r.wall_seconds:.2f} s with the check); kTLS works in the guest", "",
                     r.boot_seconds, r.kernel, host, now)
