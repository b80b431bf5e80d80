"""Flame graphs of a running relay: `labkit.profile(relay, seconds)`.

    fg = labkit.profile(relay, 3)     # while a load runs
    fg                                # displays inline in a notebook (SVG)
    fg.path, fg.sources, fg.top(10)

Two profilers record the same window and their stacks are merged into one graph:

- **py-spy** (`py-spy record --native --format raw`) samples the relay host's *Python*
  threads, with their native frames: the host's main thread, the `lk_relay_run` thread.
- **perf** (`perf record --call-graph dwarf`) samples the relay's *C* threads (data
  workers, the acceptor). py-spy cannot: it only walks threads that have a Python
  thread state, and the relay's pthreads have none, so with py-spy alone the graph would
  show the host waiting in pthread_join and nothing of the relay's work.

Each stack starts with its thread ("lk_worker 0 (1234)"), so one graph shows where
every thread spends its time. Observer effect: py-spy --native pauses the process for
each sample (rate per second) and perf's DWARF sampling copies 32 KiB of stack per
sample; profile a short window, not a whole benchmark. A profiler that cannot run here
is left out and `sources` says why (with py-spy's ptrace fix or perf's). Stacks whose
unwinding stopped early (perf's DWARF unwinder gives up inside some optimised frames,
ep_send's among them) hang under "[unwind incomplete]".
"""

from __future__ import annotations

import hashlib
import html
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

PROFILE_DIR = Path(tempfile.gettempdir()) / "labkit-profiles"
STACK_DUMP = 32768  # bytes of stack perf copies per sample for DWARF unwinding


class ProfileUnavailable(RuntimeError):
    """Neither profiler can record this process here; the message says why and the fix."""


class PtraceStatus(NamedTuple):
    ok: bool
    reason: str
    fix: str


def pyspy_binary() -> str | None:
    """py-spy next to this interpreter (a venv's bin/), else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    if here.exists():
        return str(here)
    return shutil.which("py-spy")


def _cap_eff() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


CAP_SYS_PTRACE = 19


def ptrace_status(pid: int | None = None) -> PtraceStatus:
    """May this process ptrace (and process_vm_readv) `pid`? py-spy needs both."""
    if pyspy_binary() is None:
        return PtraceStatus(False, "py-spy is not installed",
                            "pip install py-spy (it is a labkit dependency)")
    has_cap = bool(_cap_eff() & (1 << CAP_SYS_PTRACE))
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope") as f:
            scope: int | None = int(f.read())
    except (OSError, ValueError):
        scope = None  # no Yama LSM: classic rules (same uid, or CAP_SYS_PTRACE)
    if scope == 3:
        return PtraceStatus(False, "kernel.yama.ptrace_scope is 3: ptrace is disabled until "
                            "reboot", "set kernel.yama.ptrace_scope=1 (or 0) at boot "
                            "(sysctl.d) and reboot")
    if scope == 2 and not has_cap:
        return PtraceStatus(False, "kernel.yama.ptrace_scope is 2: only CAP_SYS_PTRACE may "
                            "attach", "run as root with CAP_SYS_PTRACE (in Docker: "
                            "--cap-add SYS_PTRACE)")
    if not has_cap:
        if pid is not None:
            try:
                if os.stat(f"/proc/{pid}").st_uid != os.geteuid():
                    return PtraceStatus(False, f"pid {pid} belongs to another user and this "
                                        "process lacks CAP_SYS_PTRACE",
                                        "run the lab as the relay's user, or as root")
            except FileNotFoundError:
                return PtraceStatus(False, f"no process {pid}", "start the relay first")
        if scope == 1 and pid is not None and not _is_descendant(pid):
            return PtraceStatus(False, "kernel.yama.ptrace_scope is 1: only a process's "
                                "ancestors may attach, and this one is not the relay's",
                                "start the relay from this kernel (labkit.Relay), or `sysctl "
                                "kernel.yama.ptrace_scope=0`, or grant CAP_SYS_PTRACE")
        if os.geteuid() == 0:
            return PtraceStatus(False, "root without CAP_SYS_PTRACE (a container dropped it)",
                                "in Docker: --cap-add SYS_PTRACE; in Kubernetes: "
                                "securityContext.capabilities.add: [SYS_PTRACE]")
    return PtraceStatus(True, "", "")


def _is_descendant(pid: int) -> bool:
    me = os.getpid()
    while pid > 1:
        if pid == me:
            return True
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            return False
    return False


# ---- folded stacks -> SVG ---------------------------------------------------------------


@dataclass
class _Node:
    name: str
    count: int = 0
    children: dict[str, _Node] = field(default_factory=dict)


def _tree(folded: dict[str, int]) -> _Node:
    root = _Node("all")
    for stack, count in folded.items():
        root.count += count
        node = root
        for frame in stack.split(";"):
            node = node.children.setdefault(frame, _Node(frame))
            node.count += count
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _colour(name: str) -> str:
    h = int(hashlib.md5(name.encode()).hexdigest()[:6], 16)
    a, b = h & 0xFF, (h >> 8) & 0xFF
    if name.endswith("_[k]"):  # kernel
        return f"rgb({200 + a % 55},{120 + b % 60},{40 + a % 30})"
    if ".py:" in name or "(<frozen" in name:  # Python frames
        return f"rgb({60 + a % 50},{140 + b % 60},{200 + a % 55})"
    if name.startswith(("lk_", "ep_", "ur_")):  # the relay's own C
        return f"rgb({220 + a % 35},{60 + b % 70},{50 + a % 30})"
    if name.startswith("["):  # unresolved or synthetic
        return "rgb(200,200,200)"
    return f"rgb({210 + a % 45},{160 + b % 70},{50 + a % 40})"


def render_svg(folded: dict[str, int], title: str, width: int = 1200) -> str:
    """A static flame graph (root at the bottom), one <title> tooltip per frame."""
    root = _tree(folded)
    total = max(root.count, 1)
    row, top_pad, bottom_pad = 17, 40, 10
    depth = _depth(root)
    height = top_pad + depth * row + bottom_pad
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Verdana, sans-serif" font-size="11">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fdfdf6"/>',
        f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="15">'
        f'{html.escape(title)}</text>',
        f'<text x="10" y="34" font-size="11" fill="#555">{total} samples; hover a frame '
        f'for its count</text>',
    ]
    pad = 10
    scale = (width - 2 * pad) / total

    def draw(node: _Node, x: float, level: int) -> None:
        w = node.count * scale
        if w < 0.3:
            return
        y = height - bottom_pad - (level + 1) * row
        pct = 100.0 * node.count / total
        name = html.escape(node.name)
        out.append(f'<g><title>{name} ({node.count} samples, {pct:.2f}%)</title>'
                   f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 1}" '
                   f'fill="{_colour(node.name)}" rx="2"/>')
        chars = int((w - 6) / 6.5)
        if chars >= 3:
            label = node.name if len(node.name) <= chars else node.name[: chars - 2] + ".."
            out.append(f'<text x="{x + 3:.1f}" y="{y + row - 5}">{html.escape(label)}</text>')
        out.append("</g>")
        cx = x
        for child in sorted(node.children.values(), key=lambda n: n.name):
            draw(child, cx, level + 1)
            cx += child.count * scale

    draw(root, pad, 0)
    out.append("</svg>")
    return "\n".join(out)


class FlameGraph:
    """A recorded profile: inline SVG in a notebook, `.path` on disk, `.folded` stacks."""

    def __init__(self, folded: dict[str, int], path: Path, title: str,
                 sources: dict[str, str], pid: int, seconds: float) -> None:
        self.folded = folded
        self.path = path
        self.title = title
        self.sources = sources
        self.pid = pid
        self.seconds = seconds
        self.svg = render_svg(folded, title)
        path.write_text(self.svg)
        self.folded_path = path.with_suffix(".folded")
        self.folded_path.write_text("".join(f"{s} {c}\n" for s, c in folded.items()))

    @property
    def samples(self) -> int:
        return sum(self.folded.values())

    def frames(self) -> set[str]:
        """Every frame name that appears in some stack."""
        return {f for s in self.folded for f in s.split(";")}

    def has_frame(self, pattern: str) -> bool:
        """True if a frame name matches the regex `pattern` (e.g. r"^lk_worker_main")."""
        rx = re.compile(pattern)
        return any(rx.search(f) for f in self.frames())

    def top(self, n: int = 15, leaf: bool = False) -> list[tuple[str, int]]:
        """Frames by inclusive samples (leaf=True: by self samples)."""
        counts: dict[str, int] = {}
        for stack, c in self.folded.items():
            frames = stack.split(";")
            for f in ([frames[-1]] if leaf else set(frames)):
                counts[f] = counts.get(f, 0) + c
        return sorted(counts.items(), key=lambda kv: -kv[1])[:n]

    def _repr_svg_(self) -> str:
        return self.svg

    def _repr_html_(self) -> str:
        notes = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(v)}</li>"
                        for k, v in self.sources.items())
        return (f'<div style="overflow-x:auto">{self.svg}</div>'
                f'<ul style="font-size:small">{notes}'
                f"<li>file: <code>{html.escape(str(self.path))}</code></li></ul>")

    def __repr__(self) -> str:
        return f"FlameGraph(pid={self.pid}, {self.samples} samples, path={str(self.path)!r})"


# ---- recording ----------------------------------------------------------------------------


_PYSPY_THREAD = re.compile(r"^thread \((0x[0-9a-fA-F]+|\d+)\)")


def parse_pyspy_raw(text: str) -> tuple[dict[str, int], set[int]]:
    """py-spy's raw (folded) output -> ({stack: samples}, OS tids it sampled)."""
    folded: dict[str, int] = {}
    tids: set[int] = set()
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        m = _PYSPY_THREAD.match(stack)
        if m:
            tids.add(int(m.group(1), 0))
        folded[stack] = folded.get(stack, 0) + int(count)
    return folded, tids


_PERF_HEAD = re.compile(r"^(?P<comm>\S.*?)\s+(?P<tid>\d+)\s*$")
_PERF_FRAME = re.compile(r"^\s+[0-9a-f]+\s+(?P<sym>.*?)\s+\((?P<dso>[^()]*)\)\s*$")
_ROOT_FRAMES = ("clone3", "clone", "start_thread", "_start", "__libc_start_main",
                "__libc_start_call_main")


def parse_perf_script(text: str, skip_tids: set[int] | None = None,
                      names: dict[int, str] | None = None,
                      only_tids: set[int] | None = None) -> dict[str, int]:
    """`perf script -F comm,tid,ip,sym,dso` output -> {stack: samples}, root first.
    skip_tids: threads another profiler covered; only_tids: keep just these threads."""
    folded: dict[str, int] = {}
    names = names or {}
    skip_tids = skip_tids or set()
    for block in text.split("\n\n"):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines:
            continue
        head = _PERF_HEAD.match(lines[0])
        if not head:
            continue
        tid = int(head.group("tid"))
        if tid in skip_tids or (only_tids is not None and tid not in only_tids):
            continue
        frames: list[str] = []
        for ln in lines[1:]:
            m = _PERF_FRAME.match(ln)
            if not m:
                continue
            sym, dso = m.group("sym"), m.group("dso")
            if sym == "[unknown]":
                if dso == "[unknown]":
                    continue
                sym = f"[{os.path.basename(dso)}]"
            if dso == "[kernel.kallsyms]":
                sym += "_[k]"
            frames.append(sym)
        frames.reverse()
        if not frames:
            continue
        thread = f"{names.get(tid, head.group('comm'))} ({tid})"
        if frames[0] not in _ROOT_FRAMES:
            frames.insert(0, "[unwind incomplete]")
        stack = ";".join([thread, *frames])
        folded[stack] = folded.get(stack, 0) + 1
    return folded


def _thread_names(pid: int, relay: Any) -> dict[int, str]:
    """Readable names for the relay's C threads (their comm is the host's "python")."""
    names: dict[int, str] = {}
    if relay is None or not hasattr(relay, "worker_counters"):
        return names
    try:
        rows = relay.worker_counters()
    except Exception:
        return names
    workers = getattr(relay, "workers", len(rows) - 1)
    for i, row in enumerate(rows):
        if row.get("tid"):
            names[int(row["tid"])] = f"lk_worker {i}" if i < workers else "lk_acceptor"
    return names


def _tids(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except OSError:
        return set()


def _spawn(cmd: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[bytes], deadline: float) -> tuple[int, str]:
    """Wait for proc until deadline; SIGINT then SIGKILL it by pid if it overruns."""
    try:
        _, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")


def profile(target: Any, seconds: float = 3.0, *, native: bool = True, rate: int = 99,
            output: str | os.PathLike[str] | None = None, title: str | None = None,
            perf: bool | str = "auto") -> FlameGraph:
    """Record `target` (a labkit.Relay, anything with .pid, or a pid) for `seconds` and
    return its FlameGraph. native: py-spy --native (C frames under the Python ones).
    rate: samples per second for both profilers. perf: also sample the C threads with
    perf ("auto": when perf_status() allows; True: required; False: py-spy only).
    Raises ProfileUnavailable when neither profiler can run (the message says why)."""
    from labkit.counters.perf import perf_status

    pid = int(target.pid) if hasattr(target, "pid") else int(target)
    if seconds <= 0:
        raise ValueError("seconds must be > 0")
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(output) if output is not None else PROFILE_DIR / f"relay-{pid}-{stamp}.svg"
    sources: dict[str, str] = {}

    pt = ptrace_status(pid)
    pyspy_cmd: list[str] | None = None
    if pt.ok:
        raw_path = path.with_suffix(".pyspy.txt")
        pyspy_cmd = [pyspy_binary() or "py-spy", "record", "--pid", str(pid),
                     "--duration", str(max(1, math.ceil(seconds))), "--rate", str(rate),
                     "--format", "raw", "--output", str(raw_path), "--threads"]
        if native:
            pyspy_cmd.append("--native")
    else:
        sources["py-spy"] = f"unavailable: {pt.reason} (fix: {pt.fix})"

    ps = perf_status()
    perf_cmd: list[str] | None = None
    data_path = path.with_suffix(".perf.data")
    if perf is False:
        sources["perf"] = "off (perf=False)"
    elif ps.ok:
        perf_cmd = ["perf", "record", "--quiet", "-F", str(rate), "-e", "cpu-clock",
                    "--call-graph", f"dwarf,{STACK_DUMP}", "-p", str(pid),
                    "-o", str(data_path), "--", "sleep", str(seconds)]
    elif perf is True:
        raise ProfileUnavailable(f"perf: {ps.reason} (fix: {ps.fix})")
    else:
        sources["perf"] = f"unavailable: {ps.reason} (fix: {ps.fix})"
    if pyspy_cmd is None and perf_cmd is None:
        raise ProfileUnavailable(f"cannot profile pid {pid}: " + "; ".join(
            f"{k}: {v}" for k, v in sources.items()))

    names = _thread_names(pid, target if not isinstance(target, int) else None)
    names_tids = _tids(pid)
    deadline = time.monotonic() + seconds + 30.0
    procs: dict[str, subprocess.Popen[bytes]] = {}
    if pyspy_cmd is not None:
        procs["py-spy"] = _spawn(pyspy_cmd)
    if perf_cmd is not None:
        procs["perf"] = _spawn(perf_cmd)
    results = {k: _finish(p, deadline) for k, p in procs.items()}
    tids = names_tids | _tids(pid) | set(names)  # perf's `-- sleep` timer is not the target

    folded: dict[str, int] = {}
    py_tids: set[int] = set()
    if "py-spy" in results:
        code, err = results["py-spy"]
        raw_path = path.with_suffix(".pyspy.txt")
        if code == 0 and raw_path.exists():
            py_folded, py_tids = parse_pyspy_raw(raw_path.read_text())
            folded.update(py_folded)
            sources["py-spy"] = (f"live: {sum(py_folded.values())} samples of the host's "
                                 f"Python threads {sorted(py_tids)}"
                                 + (" with native frames" if native else ""))
        else:
            sources["py-spy"] = f"failed (exit {code}): {err.strip()[-400:]}"
    if "perf" in results:
        code, err = results["perf"]
        if code == 0 and data_path.exists():
            script = subprocess.run(
                ["perf", "script", "-i", str(data_path), "-F", "comm,tid,ip,sym,dso"],
                capture_output=True, text=True, timeout=120)
            perf_folded = parse_perf_script(script.stdout, py_tids, names, tids or None)
            for s, c in perf_folded.items():
                folded[s] = folded.get(s, 0) + c
            incomplete = sum(c for s, c in perf_folded.items() if "[unwind incomplete]" in s)
            sources["perf"] = (f"live: {sum(perf_folded.values())} samples of the C threads "
                               f"(DWARF unwinding; {incomplete} stacks incomplete)")
        else:
            sources["perf"] = f"failed (exit {code}): {err.strip()[-400:]}"
        try:
            data_path.unlink()
        except FileNotFoundError:
            pass
    if not folded:
        raise ProfileUnavailable(f"no samples from pid {pid}: {sources}")
    title = title or f"pid {pid}, {seconds:g} s"
    return FlameGraph(folded, path, title, sources, pid, seconds)
