"""`perf stat` attached to a process (or chosen threads), streamed into pandas.

    status = perf_status()          # (ok, reason, fix): say why before trying
    with PerfStat(pid=relay.pid) as ps:                     # the whole relay process
        ...
    ps.frame()    # tidy DataFrame: t, event, value, unit (+ mono: time.monotonic())
    ps.totals()   # {"raw_syscalls:sys_enter": 123456.0, ...}

    PerfStat(tids=[w["tid"] for w in relay.worker_counters()])  # the relay's own threads

perf runs as `perf stat -x, -I <ms> -e <events> -p PID | -t TID,...`; a reader thread
parses each interval line as it arrives. Events are the default set below filtered to
those this kernel has (probed once with `perf list`, then a dry `perf stat`, cached).
perf is stopped by its pid: SIGINT (so it prints the last, partial interval), SIGKILL
after a grace period.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import NamedTuple

import pandas as pd

BASE_EVENTS = (
    "raw_syscalls:sys_enter",  # every syscall entry of the attached tasks
    "context-switches",
    "cpu-migrations",
    "task-clock",  # msec on CPU
    "page-faults",
)
SYSCALL_NAMES = (
    "read", "recvfrom", "recvmsg",
    "write", "sendto", "sendmsg", "writev",
    "epoll_wait", "epoll_pwait", "io_uring_enter",
)
SYSCALL_EVENTS = tuple(f"syscalls:sys_enter_{n}" for n in SYSCALL_NAMES)
TRACEFS_DIRS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")


class PerfUnavailable(RuntimeError):
    """perf cannot count here; the message says why and what to do."""


class PerfStatus(NamedTuple):
    ok: bool
    reason: str  # "" when ok
    fix: str  # what to do about it ("" when ok)


def _perf_binary() -> str | None:
    return shutil.which("perf")


def _privileged() -> bool:
    """Root, or CAP_PERFMON (38) / CAP_SYS_ADMIN (21) in the effective set."""
    if os.geteuid() == 0:
        return True
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    return bool(caps & (1 << 38) or caps & (1 << 21))
    except OSError:
        pass
    return False


def paranoid_level() -> int | None:
    try:
        with open("/proc/sys/kernel/perf_event_paranoid") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def tracefs_dir() -> str | None:
    """The mounted tracefs events directory perf reads tracepoint ids from."""
    for d in TRACEFS_DIRS:
        if os.path.isdir(os.path.join(d, "events", "raw_syscalls")):
            return d
    return None


@cache
def perf_status() -> PerfStatus:
    """Can `perf stat` count syscall tracepoints and software events of another process
    here? Checks, in order: the binary, perf_event_paranoid, tracefs, then a dry run."""
    perf = _perf_binary()
    if perf is None:
        return PerfStatus(False, "perf is not installed (no `perf` on PATH)",
                          "install it: `apt-get install linux-perf` (Debian) or "
                          "`apt-get install linux-tools-common linux-tools-$(uname -r)` "
                          "(Ubuntu)")
    try:
        v = subprocess.run([perf, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return PerfStatus(False, f"perf does not run: {e}", "reinstall linux-perf")
    if v.returncode != 0:
        return PerfStatus(False, f"perf does not run: {(v.stderr or v.stdout).strip()}",
                          "install the perf that matches this kernel (linux-perf)")
    privileged = _privileged()
    level = paranoid_level()
    if not privileged and level is not None and level > -1:
        return PerfStatus(
            False,
            f"kernel.perf_event_paranoid is {level} and this process is not root and has "
            "no CAP_PERFMON: syscall tracepoints need -1",
            "as root: `sysctl kernel.perf_event_paranoid=-1` (or run the lab as root, or "
            "grant CAP_PERFMON)")
    if tracefs_dir() is None:
        mounted = any(os.path.isdir(d) and os.listdir(d) for d in TRACEFS_DIRS
                      if os.access(d, os.R_OK))
        if not mounted:
            return PerfStatus(False, "tracefs is not mounted (no /sys/kernel/tracing/events)",
                              "as root: `mount -t tracefs nodev /sys/kernel/tracing`")
        return PerfStatus(False, "tracefs is mounted but its events are not readable here",
                          "run as root, or `chmod -R o+rx /sys/kernel/tracing` "
                          "(or mount it with mode=755)")
    try:
        dry = subprocess.run(
            [perf, "stat", "-x,", "-e", ",".join(BASE_EVENTS), "--", "true"],
            capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return PerfStatus(False, "a dry `perf stat -- true` did not finish in 20 s",
                          "check `perf stat -- true` by hand")
    if dry.returncode != 0:
        tail = dry.stderr.strip().splitlines()[-3:]
        return PerfStatus(False, "a dry `perf stat` failed: " + " | ".join(tail),
                          "run `perf stat -e raw_syscalls:sys_enter -- true` by hand to see why")
    lines = (parse_line(x, False) for x in dry.stderr.splitlines())
    parsed = {p.event: p.value for p in lines if p}
    if math.isnan(parsed.get("raw_syscalls:sys_enter", math.nan)):
        return PerfStatus(False, "perf runs but raw_syscalls:sys_enter is not supported",
                          "a kernel with CONFIG_FTRACE_SYSCALLS=y is needed")
    return PerfStatus(True, "", "")


@cache
def available_events() -> tuple[str, ...]:
    """BASE_EVENTS + SYSCALL_EVENTS that this kernel has and perf can count (cached).
    Empty when perf_status() is not ok."""
    if not perf_status().ok:
        return ()
    perf = _perf_binary()
    assert perf is not None
    listed = subprocess.run([perf, "list", "--raw-dump", "tracepoint"], capture_output=True,
                            text=True, timeout=30).stdout.split()
    candidates = [e for e in BASE_EVENTS if ":" not in e or e in listed]
    candidates += [e for e in SYSCALL_EVENTS if e in listed]
    dry = subprocess.run([perf, "stat", "-x,", "-e", ",".join(candidates), "--", "true"],
                         capture_output=True, text=True, timeout=20)
    unsupported = {p.event for p in (parse_line(x, False) for x in dry.stderr.splitlines())
                   if p and p.supported is False}
    return tuple(e for e in candidates if e not in unsupported)


class PerfLine(NamedTuple):
    t: float | None  # interval end, seconds since perf enabled its counters (None: no -I)
    value: float  # NaN when not supported
    unit: str
    event: str
    supported: bool


def parse_line(line: str, interval: bool = True) -> PerfLine | None:
    """One CSV line of `perf stat -x,` (interval: with -I, a leading time field); None
    for anything else (warnings, blank lines).

    "<not counted>" means the task never ran in the interval: 0. "<not supported>": NaN.
    """
    parts = line.strip().split(",")
    if len(parts) < 3:
        return None
    t: float | None = None
    if interval:
        try:
            t = float(parts[0])
        except ValueError:
            return None
        parts = parts[1:]
    if len(parts) < 3:
        return None
    raw, unit, event = parts[0], parts[1], parts[2]
    if not event:
        return None
    supported = True
    if raw == "<not counted>":
        value = 0.0
    elif raw == "<not supported>":
        value, supported = math.nan, False
    else:
        try:
            value = float(raw)
        except ValueError:
            return None
    return PerfLine(t, value, unit, event, supported)


class PerfStat:
    """`perf stat -I` on a pid (every thread, the host's Python threads included) or on a
    list of TIDs (e.g. the relay's workers and acceptor, from the shm `tid`s).

    interval_ms: perf's -I (>= 10; below 100 perf warns about overhead).
    events: None = available_events(). on_interval: called from the reader thread with
    (t, {event: value}) once per completed interval.
    """

    def __init__(self, pid: int | None = None, tids: Sequence[int] | None = None, *,
                 events: Sequence[str] | None = None, interval_ms: int = 200,
                 stop_grace: float = 2.0,
                 on_interval: Callable[[float, dict[str, float]], None] | None = None) -> None:
        if (pid is None) == (not tids):
            raise ValueError("give pid (whole process) or tids (chosen threads), not both")
        if tids and any(int(t) <= 0 for t in tids):
            raise ValueError(f"tids must be kernel thread ids > 0, got {list(tids)}")
        if interval_ms < 10:
            raise ValueError("interval_ms must be >= 10 (perf's limit)")
        self.pid = pid
        self.tids = [int(t) for t in tids] if tids else []
        self.interval_ms = int(interval_ms)
        self.stop_grace = stop_grace
        self._events = list(events) if events is not None else None
        self._on_interval = on_interval
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._rows: list[tuple[float, float, str, float, str]] = []
        self._totals: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._last_t = 0.0
        self._pending: dict[str, float] = {}
        self._pending_t: float | None = None
        self._offset: float | None = None  # monotonic time of perf's t=0 (estimated)
        self._first = threading.Event()
        self._messages: list[str] = []
        self.unsupported: set[str] = set()
        self.started_at: float | None = None

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def events(self) -> list[str]:
        if self._events is None:
            self._events = list(available_events())
        return self._events

    def command(self) -> list[str]:
        perf = _perf_binary() or "perf"
        target = ["-p", str(self.pid)] if self.pid is not None else \
            ["-t", ",".join(map(str, self.tids))]
        return [perf, "stat", "-x,", "-I", str(self.interval_ms), "-e", ",".join(self.events),
                *target]

    def start(self) -> PerfStat:
        if self._proc is not None:
            raise RuntimeError("this PerfStat was already started; make a new one")
        status = perf_status()
        if not status.ok:
            raise PerfUnavailable(f"{status.reason}; {status.fix}")
        if not self.events:
            raise PerfUnavailable("no perf event is available on this kernel")
        self.started_at = time.monotonic()
        # perf stat writes its counts to stderr; stdout stays unused
        self._proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, name=f"perf-{self._proc.pid}",
                                        daemon=True)
        self._reader.start()
        return self

    def wait_ready(self, timeout: float = 5.0) -> None:
        """Block until perf has printed its first interval (its counters are on)."""
        deadline = time.monotonic() + timeout
        while not self._first.wait(0.05):
            if self._proc is not None and self._proc.poll() is not None:
                if self._reader is not None:
                    self._reader.join(1.0)
                raise PerfUnavailable(f"perf exited ({self._proc.returncode}) before its first "
                                      f"interval: {self.messages[-3:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"perf printed no interval within {timeout} s")

    def stop(self) -> int | None:
        """SIGINT perf (it prints the last, partial interval), SIGKILL after stop_grace.
        Returns perf's exit code (None if never started). Safe to call twice."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGINT)  # our unreaped child: the pid is still its own
            try:
                proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
        code = proc.wait()
        if self._reader is not None:
            self._reader.join(self.stop_grace)
        self._flush()
        return code

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> PerfStat:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- parsing -----------------------------------------------------------------------

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        with self._proc.stderr as stream:
            for line in stream:
                now = time.monotonic()
                parsed = parse_line(line)
                if parsed is None or parsed.t is None:
                    if line.strip():
                        with self._lock:
                            self._messages.append(line.rstrip())
                    continue
                with self._lock:
                    # the least-delayed line gives the best estimate of perf's t=0
                    offset = now - parsed.t
                    if self._offset is None or offset < self._offset:
                        self._offset = offset
                    if self._pending_t is not None and parsed.t != self._pending_t:
                        self._complete()
                    self._pending_t = parsed.t
                    self._pending[parsed.event] = parsed.value
                    if not parsed.supported:
                        self.unsupported.add(parsed.event)
                    if len(self._pending) == len(self.events):
                        self._complete()

    def _complete(self) -> None:
        """One interval's lines are all in (lock held)."""
        if self._pending_t is None:
            return
        t, values = self._pending_t, self._pending
        self._pending, self._pending_t = {}, None
        offset = self._offset or 0.0
        units = {"task-clock": "msec"}
        for event, value in values.items():
            self._rows.append((t, offset + t, event, value, units.get(event, "")))
            if not math.isnan(value):
                self._totals[event] = self._totals.get(event, 0.0) + value
        dt = t - self._last_t
        self._last = {e: v / dt for e, v in values.items()} if dt > 0 else {}
        self._last_t = t
        self._first.set()
        if self._on_interval is not None:
            try:
                self._on_interval(t, dict(values))
            except Exception as e:  # a subscriber's bug must not stop the stream
                self._messages.append(f"on_interval raised {e!r}")

    def _flush(self) -> None:
        with self._lock:
            self._complete()

    # ---- results -----------------------------------------------------------------------

    def frame(self) -> pd.DataFrame:
        """Tidy rows: t (s since perf started counting, interval end), mono (the same
        instant on time.monotonic(), estimated), event, value (per interval; task-clock
        in msec), unit."""
        with self._lock:
            rows = list(self._rows)
        return pd.DataFrame(rows, columns=["t", "mono", "event", "value", "unit"])

    def totals(self) -> dict[str, float]:
        """Sum of every completed interval per event (NaN-valued events left out)."""
        with self._lock:
            return dict(self._totals)

    def rates(self) -> tuple[float, dict[str, float]]:
        """(t, per-second rates of the last completed interval) — ({} before the first)."""
        with self._lock:
            return self._last_t, dict(self._last)

    @property
    def messages(self) -> list[str]:
        """perf's non-count output (warnings, errors)."""
        with self._lock:
            return list(self._messages)

    def __repr__(self) -> str:
        target = f"pid={self.pid}" if self.pid is not None else f"tids={self.tids}"
        state = "running" if self.running else "stopped" if self._proc else "not started"
        return f"PerfStat({target}, {len(self.events)} events, {state})"


def describe(status: PerfStatus | None = None) -> str:
    s = status or perf_status()
    return "perf: available" if s.ok else f"perf unavailable: {s.reason} (fix: {s.fix})"

