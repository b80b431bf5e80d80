"""What this machine can do for the lab, probed rather than assumed: `labkit doctor`.

    import labkit
    caps = labkit.caps()          # also: python -m labkit.caps, labkit doctor [--json]
    caps["ktls"].ok, caps["ktls"].detail, caps["ktls"].todo
    caps.allows("tls:ktls")       # (ok, why not): what the dashboard asks of each option

Each check really tries the thing where that is cheap and harmless (an io_uring ring, a
`tls` ULP and both key directions on a loopback TCP connection, a one-event `perf stat`)
and says in one line what to do when it is missing. Nothing here needs the native module,
so it also explains a machine on which the build has not happened yet.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import glob
import json
import os
import platform
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import types
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from labkit.hosts import guest_kernel, sandbox

# Linux ABI numbers the stdlib does not name (uapi headers): the same on every arch
# that uses the generic syscall table, which includes x86_64 for these new calls.
_SYS_IO_URING_SETUP = 425
_TCP_ULP = 31
_SOL_TLS = 282
_TLS_TX, _TLS_RX = 1, 2
_TLS_1_3_VERSION = 0x0304
_TLS_CIPHER_AES_GCM_128 = 51


# What each option the lab offers needs of the machine: option -> the capability that must
# not be missing. Options are "field:value" ("io:uring", "tls:ktls", "switch:sqpoll") or a
# measurement source ("perf"); one that is not listed needs nothing a probe can see. Each
# switch "switch:NAME" is its own capability, probed from the contract's switch table.
NEEDS = {"io:uring": "io_uring", "tls:ktls": "ktls", "perf": "perf"}


@dataclass(frozen=True)
class Capability:
    name: str
    ok: bool | None  # None: not applicable / unknown, shown as "?"
    detail: str
    todo: str = ""  # what to do about it; empty when nothing needs doing

    @property
    def reason(self) -> str:
        """The detail, with what to do about it: "no tls ULP … (to do: sudo modprobe tls)"."""
        if not self.todo:
            return self.detail
        return f"{self.detail} (to do: {self.todo})" if self.detail else self.todo


class Caps:
    """The probe's results in order; index by name (caps["io_uring"])."""

    def __init__(self, items: list[Capability]) -> None:
        self.items = items

    def allows(self, option: str) -> tuple[bool, str]:
        """(True, "") where this machine can honour `option` (see NEEDS), else (False, why
        not and what to do). An unknown capability ("?") does not forbid anything."""
        need = option if option.startswith("switch:") else NEEDS.get(option)
        cap = next((c for c in self.items if c.name == need), None)
        if cap is None or cap.ok is not False:
            return True, ""
        return False, cap.reason or "not available on this machine"

    def __getitem__(self, name: str) -> Capability:
        for c in self.items:
            if c.name == name:
                return c
        raise KeyError(name)

    def __iter__(self) -> Iterator[Capability]:
        return iter(self.items)

    def to_dict(self) -> dict[str, dict[str, object]]:
        return {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.items}

    def table(self, width: int = 100) -> str:
        """Name, yes/NO, detail (wrapped), then `-> what to do` under a missing one."""
        mark = {True: "yes", False: "NO", None: "?"}
        name_w = max(len("capability"), *(len(c.name) for c in self.items))
        indent = " " * (name_w + 8)
        lines = [f"{'capability'.ljust(name_w)}  ok    detail  (-> what to do)", "-" * width]
        for c in self.items:
            head = f"{c.name.ljust(name_w)}  {mark[c.ok].ljust(4)}"
            text = textwrap.wrap(c.detail, width - len(indent)) or [""]
            lines.append(f"{head}  {text[0]}")
            lines += [indent + t for t in text[1:]]
            if c.todo:
                lines += textwrap.wrap(c.todo, width, initial_indent=indent + "-> ",
                                       subsequent_indent=indent + "   ")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _repr_html_(self) -> str:
        import html

        mark = {True: "&#10004;", False: "&#10008;", None: "?"}
        body = "".join(
            f"<tr><td>{html.escape(c.name)}</td><td>{mark[c.ok]}</td>"
            f"<td>{html.escape(c.detail)}</td><td>{html.escape(c.todo)}</td></tr>"
            for c in self.items
        )
        return ("<table><tr><th>capability</th><th>ok</th><th>detail</th>"
                f"<th>what to do</th></tr>{body}</table>")


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _status_field(name: str) -> str | None:
    for line in (_read("/proc/self/status") or "").splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return None


# ---- io_uring ---------------------------------------------------------------------------


def _io_uring_setup() -> int:
    """0 if io_uring_setup(2) made a ring here (closed again), else the errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)  # struct io_uring_params, zeroed
    fd = libc.syscall(_SYS_IO_URING_SETUP, ctypes.c_uint(4), params)
    if fd < 0:
        return ctypes.get_errno()
    os.close(fd)
    return 0


def check_io_uring() -> Capability:
    disabled = _read("/proc/sys/kernel/io_uring_disabled")
    seccomp = _status_field("Seccomp")
    err = _io_uring_setup()
    if err == 0:
        note = f"io_uring_setup works (kernel.io_uring_disabled={disabled or 'absent'})"
        return Capability("io_uring", True, note)
    why = f"io_uring_setup failed: {errno.errorcode.get(err, err)} ({os.strerror(err)})"
    if disabled in ("1", "2"):
        todo = ("sysctl kernel.io_uring_disabled=0 (1 allows only the io_uring_group; "
                "2 disables it for everyone)")
    elif err == errno.ENOSYS:
        todo = "the kernel has no io_uring (CONFIG_IO_URING) or a seccomp filter hides it: " \
               "use io='epoll', or a 5.19+ kernel"
    elif err == errno.EPERM and seccomp == "2":
        todo = "a seccomp filter (container runtime profile) blocks io_uring: run the " \
               "container with a profile that allows it, or use io='epoll'"
    else:
        todo = "use io='epoll'"
    return Capability("io_uring", False, f"{why}; seccomp mode {seccomp or '?'}", todo)


# ---- kTLS -------------------------------------------------------------------------------


def _loopback_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as ls:
        ls.bind(("127.0.0.1", 0))
        ls.listen(1)
        a = socket.create_connection(ls.getsockname(), timeout=5)
        b, _ = ls.accept()
    return a, b


def ktls_probe() -> tuple[bool, str]:
    """Attach the tls ULP and install TLS 1.3 AES-128-GCM keys in both directions on a
    loopback TCP connection, as the relay does at start. (True, "") or (False, reason)."""
    try:
        a, b = _loopback_pair()
    except OSError as e:
        return False, f"no loopback TCP connection to probe with: {e.strerror} (is lo up?)"
    with a, b:
        try:
            b.setsockopt(socket.IPPROTO_TCP, _TCP_ULP, b"tls")
        except OSError as e:
            name = errno.errorcode.get(e.errno or 0, str(e.errno))
            if e.errno == errno.ENOENT:
                return False, f"no tls ULP in this kernel (setsockopt TCP_ULP \"tls\": {name})"
            return False, f"setsockopt TCP_ULP \"tls\" failed: {name}"
        # struct tls12_crypto_info_aes_gcm_128 with zero key, iv, salt and sequence number
        info = struct.pack("=HH8s16s4s8s", _TLS_1_3_VERSION, _TLS_CIPHER_AES_GCM_128,
                           bytes(8), bytes(16), bytes(4), bytes(8))
        for opt, name in ((_TLS_TX, "TLS_TX"), (_TLS_RX, "TLS_RX")):
            try:
                b.setsockopt(_SOL_TLS, opt, info)
            except OSError as e:
                return False, (f"the tls ULP attached but {name} (TLS 1.3 AES-128-GCM) was "
                               f"refused: {errno.errorcode.get(e.errno or 0, e.errno)}")
    return True, ""


def _module_state() -> tuple[bool, str]:
    """(loadable, where the tls module stands on the running kernel, in words)."""
    if Path("/sys/module/tls").exists():
        return False, "tls module already loaded"
    release = platform.release()
    modinfo = shutil.which("modinfo") or next(
        (p for p in ("/usr/sbin/modinfo", "/sbin/modinfo") if os.access(p, os.X_OK)), None)
    if modinfo is None:
        if not Path(f"/lib/modules/{release}").exists():
            return False, f"no /lib/modules/{release}: no loadable modules for this kernel"
        return False, "modinfo (kmod) not installed: cannot tell whether tls is loadable"
    r = subprocess.run([modinfo, "-F", "filename", "tls"], capture_output=True, text=True,
                       timeout=10)
    if r.returncode == 0 and r.stdout.strip():
        return True, f"modinfo tls: {r.stdout.strip()} (loadable)"
    return False, f"`modinfo tls` finds no tls module for kernel {release}"


def openssl_ktls_built() -> bool | None:
    """Whether the OpenSSL development headers were configured with kTLS (None: unknown)."""
    headers = glob.glob("/usr/include/*/openssl/configuration.h") + glob.glob(
        "/usr/include/openssl/configuration.h")
    for h in headers:
        text = _read(h) or ""
        return "define OPENSSL_NO_KTLS" not in text
    return None


def check_ktls() -> Capability:
    ok, why = ktls_probe()
    built = openssl_ktls_built()
    ossl = {True: "OpenSSL built with kTLS (TX only for TLS 1.3 in 3.0: labkit installs both "
                  "directions' keys itself)",
            False: "OpenSSL built without kTLS (labkit installs the keys itself: not needed)",
            None: "OpenSSL kTLS build option unknown (no libssl-dev headers)"}[built]
    if ok:
        return Capability("ktls", True, f"tls ULP and TLS 1.3 AES-128-GCM TX+RX install; {ossl}")
    loadable, module = _module_state()
    if loadable:
        todo = "sudo modprobe tls, then run again"
    else:
        todo = "this kernel cannot do kTLS: run kTLS experiments in `labkit sandbox -- ...` " \
               "(a UML guest kernel with kTLS), or boot a kernel with CONFIG_TLS"
    return Capability("ktls", False, f"{why}; {module}; {ossl}", todo)


# ---- perf and py-spy --------------------------------------------------------------------


def check_perf() -> Capability:
    paranoid = _read("/proc/sys/kernel/perf_event_paranoid")
    perf = shutil.which("perf")
    if perf is None:
        return Capability("perf", False, f"no perf binary; perf_event_paranoid={paranoid}",
                          "apt-get install linux-perf (Debian) or linux-tools-generic (Ubuntu)")
    tracefs = next((d for d in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
                    if Path(d, "events").is_dir()), None)
    try:
        r = subprocess.run([perf, "stat", "-x,", "-e", "raw_syscalls:sys_enter", "--", "true"],
                           capture_output=True, text=True, timeout=20)
        traced = r.returncode == 0 and "not supported" not in r.stderr \
            and "<not counted>" not in r.stderr
        err = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ""
    except (OSError, subprocess.TimeoutExpired) as e:
        traced, err = False, str(e)
    detail = (f"{perf}; perf_event_paranoid={paranoid}; tracefs "
              f"{tracefs or 'not mounted'}; raw_syscalls tracepoint "
              f"{'counts' if traced else 'unusable'}")
    if traced:
        return Capability("perf", True, detail)
    todo = ("sysctl kernel.perf_event_paranoid=-1 (or run as root / with CAP_PERFMON), and "
            "mount tracefs on /sys/kernel/tracing")
    return Capability("perf", False, f"{detail}: {err[:120]}", todo)


def check_pyspy() -> Capability:
    candidates = [shutil.which("py-spy"), str(Path(sys.executable).parent / "py-spy")]
    binary = next((c for c in candidates if c and os.access(c, os.X_OK)), None)
    scope = _read("/proc/sys/kernel/yama/ptrace_scope")
    cap_eff = int(_status_field("CapEff") or "0", 16)
    has_ptrace_cap = bool(cap_eff & (1 << 19))  # CAP_SYS_PTRACE
    rules = "no Yama (classic ptrace rules)" if scope is None else f"yama ptrace_scope={scope}"
    detail = (f"{binary or 'no py-spy binary'}; {rules}; "
              f"CAP_SYS_PTRACE {'yes' if has_ptrace_cap else 'no'}")
    if binary is None:
        return Capability("py-spy", False, detail, "pip install py-spy (in the venv)")
    # py-spy attaches to the relay, our own child: scope 0/1 allow that, 2 needs the cap
    allowed = scope in (None, "0", "1") or (scope == "2" and has_ptrace_cap)
    if allowed:
        return Capability("py-spy", True, detail)
    return Capability("py-spy", False, detail,
                      "sysctl kernel.yama.ptrace_scope=1, or run with CAP_SYS_PTRACE "
                      "(docker: --cap-add SYS_PTRACE)")


# ---- machine ----------------------------------------------------------------------------


def check_cpus() -> Capability:
    total = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0))
    detail = f"{usable} usable of {total} online"
    if usable < 2:
        return Capability("cpus", False, detail, "relay and load generator will share one CPU: "
                          "figures are still comparable, but not pinned apart")
    return Capability("cpus", True, detail)


def check_kernel() -> Capability:
    u = platform.uname()
    return Capability("kernel", True, f"Linux {u.release} {u.machine}")


def check_sandbox(fresh: bool = False) -> Capability:
    """The sandbox from a real boot of its guest kernel (cached per guest and host kernel;
    fresh=True boots again)."""
    if sandbox.inside_guest():
        return Capability("sandbox", None, "this is the sandbox (a UML guest): no nesting")
    ok, what = sandbox.available()
    if not ok:
        return Capability("sandbox", False, what, sandbox.INSTALL_HINT)
    check = sandbox.boot_check(fresh=fresh)
    when = "checked " + check.checked.replace("T", " ")[:16] + (" UTC, cached" if check.cached
                                                              else " UTC, just now")
    if check.ok:
        return Capability("sandbox", True, f"{what}: {check.detail} ({when}); why this kernel: "
                          f"{guest_kernel.WHY_THIS_LINE}")
    if "errno = 14" in check.console_line and "fp regs" in check.console_line:
        todo = ("this guest kernel cannot hand this CPU's register state to the host (its "
                "XSAVE area is larger than the kernel expects, as with AVX-512 and AMX): use "
                "labkit's own guest kernel (unset LABKIT_UML; `make setup` builds Linux "
                f"{guest_kernel.LINE}). Meanwhile kTLS notebooks show recorded runs")
    else:
        todo = ("boot it by hand to see the whole console: `labkit sandbox -- uname -a`; "
                "rebuild it with `make setup`; `labkit doctor --fresh` checks again. "
                "Meanwhile kTLS notebooks show recorded runs")
    return Capability("sandbox", False, f"{what}: {check.detail} ({when})", todo)


def check_switches(io_uring: Capability) -> list[Capability]:
    """One row per switch of the contract: does this kernel honour it? Each io_uring
    switch (with what it requires) is tried on a ring set up as a relay worker would."""
    try:
        from labkit.native import contract, error_text, lib
    except ImportError as e:
        return [Capability("switch:*", None, f"not probed: {e}", "make setup")]
    rows = []
    for s in contract.SWITCHES.values():
        needs = f"needs {s.kernel}" if s.kernel else "needs nothing special of the kernel"
        if not s.applies_to("uring"):
            rows.append(Capability(f"switch:{s.name}", True, f"{s.help} ({needs})"))
            continue
        if io_uring.ok is not True:
            rows.append(Capability(f"switch:{s.name}", None, "not probed: io_uring is not "
                                   "available", io_uring.todo))
            continue
        bits = contract.switch_bits(dict.fromkeys((s.name, *s.requires), True))
        rc = lib.lk_io_uring_probe(bits)
        if rc == lib.LK_OK:
            rows.append(Capability(f"switch:{s.name}", True, f"{s.help} ({needs})"))
        else:
            rows.append(Capability(f"switch:{s.name}", False, error_text(rc),
                                   f"leave {s.name} off here ({needs})"))
    return rows


def check_shaping() -> Capability:
    """Which qdiscs this kernel has for the testbed's links (labkit.hosts.qdisc)."""
    from labkit.hosts import qdisc

    return Capability("shaping", *qdisc.doctor_check())


def check_external_relays() -> list[Capability]:
    """The external relays labkit has presets for (derper, Hyper-DERP): found or not, their
    versions, how to install a missing one. Absent is "?" (not a fault of this machine)."""
    from labkit import relay_binaries

    out = []
    for b in relay_binaries.present().values():
        if b.path:
            out.append(Capability(f"relay:{b.preset}", True, f"{b.path}: {b.version}"))
        else:
            out.append(Capability(f"relay:{b.preset}", None, "not installed: its runs in "
                                  "notebook 09 are skipped", b.install))
    return out


CHECKS = (check_kernel, check_cpus, check_io_uring, check_ktls, check_perf, check_pyspy,
          check_sandbox, check_shaping)


def probe(fresh: bool = False) -> Caps:
    """Run every check (about a second, mostly perf; the sandbox's first boot adds one).
    fresh=True repeats checks that are cached across processes (the sandbox boot)."""
    items = [check_sandbox(fresh) if check is check_sandbox else check() for check in CHECKS]
    uring = next(c for c in items if c.name == "io_uring")
    return Caps(items + check_switches(uring) + check_external_relays())


@functools.cache
def current() -> Caps:
    """probe(), once per process: what a run records and the dashboard asks."""
    return probe()


def main(argv: list[str] | None = None) -> int:
    """`labkit doctor [--json] [--fresh]`: print the table (or JSON); exit 0 whatever is
    missing."""
    args = argv if argv is not None else sys.argv[1:]
    as_json = "--json" in args
    caps = probe(fresh="--fresh" in args)
    print(json.dumps(caps.to_dict(), indent=2) if as_json else caps.table())
    return 0


class _CallableModule(types.ModuleType):
    """`labkit.caps()` runs probe() although labkit.caps is this module (see labkit/build.py
    for why a package attribute cannot simply be the function)."""

    def __call__(self) -> Caps:
        return probe()


if __name__ == "__main__":
    sys.exit(main())
else:
    sys.modules[__name__].__class__ = _CallableModule
