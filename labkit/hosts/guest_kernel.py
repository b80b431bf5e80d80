"""The sandbox's guest kernel: a small User-Mode Linux built from a Debian kernel-source package.

    python -m labkit.hosts.guest_kernel ensure    # make setup runs this: build once, then cached
    python -m labkit.hosts.guest_kernel info      # what is installed, as JSON

Why build one rather than install Debian's `user-mode-linux`: the packaged UML kernels of
Debian 12 (6.1) and Debian 13 (6.12) compile the size of the x86 XSTATE register set in,
and the host kernel accepts PTRACE_SETREGSET of that set only at its own full XSAVE size.
On a host whose XSAVE area is larger (Intel Xeon with AVX-512 and AMX) the guest's first
exec then fails (`ptrace set fp regs failed, errno = 14`, EFAULT) and init dies. From the
7.x line, UML asks the host for the size at boot (`arch_init_registers` reads it back from
PTRACE_GETREGSET) and boots on any x86-64 host. The newest packaged UML binary of that line
(Debian unstable) links against a glibc newer than Debian 12's, so it cannot simply be
installed there; its *source* can be fetched from the Debian archive on Debian 12 and
Ubuntu 24.04 alike, and a kernel configured for exactly what the lab needs (hostfs, kTLS,
loopback, network namespaces and qdiscs for the testbed, nothing else; no modules) builds
in a few minutes on 2 cores with the host's own compiler and links against the host's
own glibc. The result is cached per user (`$XDG_CACHE_HOME/labkit/guest-kernel`), keyed
by kernel line and configuration, so a second `make setup` does nothing.

The archive is reached through apt with a private configuration (its own source list and
list directory, nothing of the system's apt state touched), so the package's signature
is checked against Debian's archive keyring like any apt download.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

LINE = "7.2"
SOURCE_PACKAGE = f"linux-source-{LINE}"
WHY_THIS_LINE = (
    f"Linux {LINE}: its UML sizes the x86 FP/XSTATE register set from the host at boot, so "
    "it boots on hosts with AVX-512 and AMX, where Debian's packaged 6.1 and 6.12 UML "
    "kernels panic at the first exec ('ptrace set fp regs failed, errno = 14')"
)
ARCHIVE = "http://deb.debian.org/debian"
# Searched in this order; the first suite that has the package is used (backports of the
# current stable release move least).
SUITES = ("trixie-backports", "forky", "sid")
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
BUILD_TOOLS = ("make", "gcc", "ld", "flex", "bison", "bc", "perl", "xz", "dpkg-deb", "apt-get")

# The guest's configuration: allnoconfig, then exactly these, each for a reason. After
# configuring, every one is checked to be set (a symbol whose dependencies are unmet is
# dropped by Kconfig without a word, and the guest would lack it at run time).
OPTIONS: tuple[tuple[str, str], ...] = (
    ("64BIT", "an x86-64 guest, to run the host's x86-64 programs"),
    ("HOSTFS", "the root file system is the host's, read-only, through hostfs"),
    ("BINFMT_ELF", "run the host's programs"),
    ("BINFMT_SCRIPT", "the generated /sbin/init is a shell script"),
    ("PROC_FS", "/proc: ps, /proc/net/tls_stat, the lab's /proc counters"),
    ("PROC_SYSCTL", "sysctls the tests read and set"),
    ("SYSFS", "/sys"),
    ("TMPFS", "the guest's own /tmp, /run and /dev/shm"),
    ("SHMEM", "POSIX shared memory: the relay's counters"),
    ("MULTIUSER", "uids and gids as the host's files carry them"),
    ("PRINTK", "kernel messages on the console log (what a failed boot said)"),
    ("BUG", "a kernel bug is reported, not silent"),
    ("FUTEX", "threads (every pthread program, CPython)"),
    ("EPOLL", "the relay's epoll backend"),
    ("EVENTFD", "the relay's cross-shard wake-ups"),
    ("SIGNALFD", "programs that wait for signals as events"),
    ("TIMERFD", "the relay's timers"),
    ("IO_URING", "the relay's io_uring backend"),
    ("AIO", "libaio users among the host's tools"),
    ("ADVISE_SYSCALLS", "madvise/fadvise (CPython, the allocator)"),
    ("MEMBARRIER", "membarrier (some runtimes require it)"),
    ("POSIX_TIMERS", "timer_create, clock_nanosleep"),
    ("FILE_LOCKING", "flock/fcntl locks (pip, sqlite, the store's temp files)"),
    ("SYSVIPC", "System V IPC (multiprocessing falls back to it)"),
    ("POSIX_MQUEUE", "POSIX message queues"),
    ("TTY", "the consoles that carry the command's stdout and stderr"),
    ("UNIX98_PTYS", "pseudo-terminals for programs that want one"),
    ("NULL_CHAN", "consoles not in use are attached to nothing"),
    ("STDERR_CONSOLE", "kernel messages reach the console log"),
    ("MCONSOLE", "needed by MAGIC_SYSRQ on UML"),
    ("MAGIC_SYSRQ", "init powers the guest off with sysrq 'o' when the command is done"),
    ("UML_RANDOM", "/dev/hwrng from the host's randomness"),
    ("HIGH_RES_TIMERS", "netem delays to the microsecond, not to the 10 ms tick"),
    ("NET", "networking"),
    ("UNIX", "Unix sockets"),
    ("INET", "TCP/IP on loopback: relay and load generator"),
    ("IPV6", "::1 listeners"),
    ("PACKET", "packet sockets (tcpdump, some iproute2 commands)"),
    ("TLS", "kernel TLS: the reason the sandbox exists"),
    ("CRYPTO_AES", "AES for kTLS's AES-GCM suites"),
    ("CRYPTO_GCM", "GCM for kTLS's AES-GCM suites"),
    ("CRYPTO_CHACHA20POLY1305", "kTLS's ChaCha20-Poly1305 suite"),
    ("NAMESPACES", "network namespaces: the testbed's hosts"),
    ("NET_NS", "network namespaces: the testbed's hosts"),
    ("UTS_NS", "a hostname per testbed host"),
    ("IPC_NS", "IPC isolation per testbed host"),
    ("NETDEVICES", "virtual network devices"),
    ("NET_CORE", "virtual network devices"),
    ("VETH", "links between testbed hosts"),
    ("BRIDGE", "a switch between testbed hosts"),
    ("IFB", "ingress shaping through an intermediate device"),
    ("NET_SCHED", "traffic control: per-link shaping in the testbed"),
    ("NET_SCH_NETEM", "delay, jitter and loss (the host kernel has no netem)"),
    ("NET_SCH_TBF", "rate shaping"),
    ("NET_SCH_HTB", "rate shaping with classes"),
    ("NET_SCH_FQ_CODEL", "the usual default qdisc"),
    ("NET_SCH_INGRESS", "ingress redirect to IFB"),
    ("NET_CLS_ACT", "tc actions"),
    ("NET_CLS_U32", "tc filters by address and port"),
    ("NET_CLS_BASIC", "tc catch-all filters"),
    ("NET_ACT_MIRRED", "redirect ingress traffic to IFB"),
)
# Bumped when the build steps change in a way that changes the binary.
RECIPE = 1


class GuestKernelError(RuntimeError):
    """The guest kernel could not be obtained; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class GuestKernel:
    """One built guest kernel in the cache."""

    path: Path  # the UML binary (`linux`)
    release: str  # e.g. 7.2.12: what `uname -r` prints in the guest
    package: str  # the source package and its version
    suite: str  # the Debian suite it came from
    built: str  # UTC date and time of the build
    build_seconds: float
    host_sized_fp_state: bool  # the source's UML asks the host for its XSTATE size

    def describe(self) -> str:
        return (f"guest Linux {self.release} (UML, from {self.package} of Debian "
                f"{self.suite}, built {self.built[:10]} in {self.build_seconds / 60:.1f} min)")


def config_fragment() -> str:
    return "".join(f"CONFIG_{name}=y\n" for name, _ in OPTIONS)


def cache_key() -> str:
    digest = hashlib.sha256(f"{LINE}\n{RECIPE}\n{config_fragment()}".encode()).hexdigest()
    return f"{LINE}-{digest[:12]}"


def cache_root() -> Path:
    """$LABKIT_CACHE/guest-kernel, or $XDG_CACHE_HOME/labkit/guest-kernel (~/.cache)."""
    base = os.environ.get("LABKIT_CACHE")
    if base:
        return Path(base) / "guest-kernel"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "labkit" / "guest-kernel"


def installed() -> GuestKernel | None:
    """The cached kernel for this configuration, or None."""
    info = cache_root() / cache_key() / "guest.json"
    try:
        data = json.loads(info.read_text())
        known = {f.name for f in dataclasses.fields(GuestKernel)}
        kernel = GuestKernel(**{k: v for k, v in data.items() if k in known}
                             | {"path": Path(data["path"])})
    except (OSError, ValueError, TypeError):
        return None
    return kernel if os.access(kernel.path, os.X_OK) else None


def ensure(log: Callable[[str], None] = print) -> GuestKernel:
    """The cached kernel, building it first when there is none (about 8 min on 2 cores)."""
    kernel = installed()
    if kernel is not None:
        return kernel
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        kernel = installed()  # another setup may have built it while we waited
        return kernel if kernel is not None else _build(root, log)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def _missing_tools() -> list[str]:
    return [t for t in BUILD_TOOLS if shutil.which(t) is None]


def _run(argv: list[str], log_file: Path, what: str, **kw: object) -> None:
    with open(log_file, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        r = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, **kw)  # type: ignore[call-overload]
    if r.returncode != 0:
        tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-25:])
        raise GuestKernelError(f"{what} failed (exit {r.returncode}); the end of "
                               f"{log_file}:\n{tail}")


def _apt_options(apt_dir: Path) -> list[str]:
    """apt-get options for a private apt: its own sources, lists and cache, no system state."""
    options = [
        "-q",
        "-o", f"Dir::Etc::SourceList={apt_dir / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/nonexistent",
        "-o", f"Dir::State::Lists={apt_dir / 'lists'}",
        "-o", f"Dir::Cache={apt_dir / 'cache'}",
        "-o", "Dir::State::status=/dev/null",
    ]
    # as root apt drops to the _apt user, who cannot write into root's cache directory
    return options + (["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else [])


def _fetch_source(work: Path, log_file: Path, log: Callable[[str], None]) -> tuple[Path, str, str]:
    """Download SOURCE_PACKAGE from the first suite that has it: (deb, version, suite)."""
    if not KEYRING.exists():
        raise GuestKernelError(
            f"{KEYRING} is missing, so the Debian archive's signatures cannot be checked: "
            "install debian-archive-keyring (`make setup` does)")
    apt_dir = work / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt_dir / sub).mkdir(parents=True)
    tried = []
    for suite in SUITES:
        (apt_dir / "sources.list").write_text(
            f"deb [signed-by={KEYRING}] {ARCHIVE} {suite} main\n")
        opts = _apt_options(apt_dir)
        _run(["apt-get", *opts, "update"], log_file, f"apt-get update for {suite}")
        policy = subprocess.run(["apt-cache", *opts, "policy", SOURCE_PACKAGE],
                                capture_output=True, text=True)
        candidate = next((line.split(":", 1)[1].strip() for line in policy.stdout.splitlines()
                          if line.strip().startswith("Candidate:")), "(none)")
        if candidate == "(none)":
            tried.append(suite)
            continue
        log(f"guest kernel: downloading {SOURCE_PACKAGE} {candidate} from Debian {suite}")
        _run(["apt-get", *opts, "download", f"{SOURCE_PACKAGE}={candidate}"], log_file,
             f"downloading {SOURCE_PACKAGE}", cwd=work)
        deb = next(work.glob(f"{SOURCE_PACKAGE}_*.deb"))
        return deb, candidate, suite
    raise GuestKernelError(
        f"no {SOURCE_PACKAGE} in Debian {', '.join(tried)}: the archive has moved on from "
        f"Linux {LINE}; update LINE in {__file__} to a line it carries (7.x or newer boots "
        "on AMX hosts)")


def _build(root: Path, log: Callable[[str], None]) -> GuestKernel:
    missing = _missing_tools()
    if missing:
        raise GuestKernelError(f"building the guest kernel needs {', '.join(missing)}: "
                               "`make setup` installs them (flex bison bc xz-utils)")
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    log_file = root / "build.log"
    log_file.write_text("")
    try:
        deb, version, suite = _fetch_source(work, log_file, log)
        log(f"guest kernel: unpacking {deb.name}")
        src_parent = work / "src"
        src_parent.mkdir()
        _run(["bash", "-o", "pipefail", "-c",
              f"dpkg-deb --fsys-tarfile {deb} | tar -xO --wildcards "
              f"'./usr/src/linux-source-*.tar.xz' | tar -xJ -C {src_parent}"],
             log_file, "unpacking the kernel source")
        deb.unlink()
        src = next(p for p in src_parent.iterdir() if p.is_dir())
        fragment = work / "guest.config"
        fragment.write_text(config_fragment())
        make = ["make", "-C", str(src), "ARCH=um"]
        _run([*make, f"KCONFIG_ALLCONFIG={fragment}", "allnoconfig"], log_file,
             "configuring the guest kernel")
        config = (src / ".config").read_text()
        unset = [n for n, _ in OPTIONS if f"CONFIG_{n}=y\n" not in config]
        if unset:
            raise GuestKernelError(
                f"the {SOURCE_PACKAGE} {version} configuration dropped "
                f"{', '.join(unset)} (unmet dependencies): adjust OPTIONS in {__file__}")
        jobs = len(os.sched_getaffinity(0))
        log(f"guest kernel: compiling Linux {version.split('-')[0]} for UML with {jobs} "
            f"jobs (once: several minutes on 2 cores; log: {log_file})")
        _run([*make, f"-j{jobs}", "linux"], log_file, "compiling the guest kernel")
        release = (src / "include" / "config" / "kernel.release").read_text().strip()
        registers = src / "arch" / "x86" / "um" / "os-Linux" / "registers.c"
        host_sized = "host_fp_size = iov.iov_len" in registers.read_text()
        final = root / cache_key()
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=root))
        shutil.copy2(src / "linux", staging / "linux")
        (staging / "guest.config").write_text(config)
        kernel = GuestKernel(
            path=final / "linux", release=release, package=f"{SOURCE_PACKAGE} {version}",
            suite=suite, built=datetime.now(UTC).isoformat(timespec="seconds"),
            build_seconds=round(time.monotonic() - started, 1),
            host_sized_fp_state=host_sized)
        info = dataclasses.asdict(kernel) | {"path": str(kernel.path),
                                             "build_host": platform.node(),
                                             "why": WHY_THIS_LINE}
        (staging / "guest.json").write_text(json.dumps(info, indent=2) + "\n")
        shutil.rmtree(final, ignore_errors=True)
        staging.rename(final)
        log(f"guest kernel: {kernel.describe()}: {kernel.path}")
        return kernel
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "ensure"
    if command == "info":
        kernel = installed()
        print(json.dumps(None if kernel is None else dataclasses.asdict(kernel)
                         | {"path": str(kernel.path)}, indent=2))
        return 0 if kernel is not None else 1
    if command != "ensure":
        print("usage: python -m labkit.hosts.guest_kernel [ensure|info]", file=sys.stderr)
        return 2
    try:
        ensure()
    except GuestKernelError as e:
        print(f"guest kernel: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
