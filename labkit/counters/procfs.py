"""Per-thread context switches and CPU time of a process, from /proc.

    procs = ProcThreads(relay.pid)
    snap = procs.sample()
    snap.threads[tid].voluntary, snap.total.cpu_s, snap.gone

Sources, per thread (`/proc/PID/task/TID/...`):
- `status`: voluntary_ctxt_switches, nonvoluntary_ctxt_switches;
- `stat`: utime, stime (clock ticks, 1/SC_CLK_TCK s: 10 ms steps on most kernels);
- `schedstat` (where the kernel has it): on-CPU nanoseconds, the same user+system time
  at nanosecond resolution. `cpu_s` uses it when present: at 10 Hz, 10 ms ticks would
  quantise a CPU percentage to steps of 10 %, and a single tick could read 0 %.

A sample costs three small file reads per thread and no process is disturbed. Threads
that exit keep their last values in the totals (so totals never go backwards); a process
that exits leaves the last sample in place, with `gone=True`. A thread that lived and
died between two samples was never seen: its context switches are lost, but its CPU time
is not: the process total `cpu_s` is read from the process's CPU-time clock, which the
kernel keeps in nanoseconds for the whole thread group, exited threads included.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The clock id of another process's CPU clock, as glibc's clock_getcpuclockid(3) builds it
# (linux/posix-timers.h: MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)).
_CPUCLOCK_SCHED = 2


@dataclass(frozen=True)
class ThreadStat:
    tid: int
    comm: str
    voluntary: int  # voluntary_ctxt_switches: the thread blocked (waited for I/O, a lock)
    involuntary: int  # nonvoluntary_ctxt_switches: the scheduler preempted it
    utime_s: float  # user CPU seconds (clock-tick resolution)
    stime_s: float  # system CPU seconds (clock-tick resolution)
    run_ns: int | None  # on-CPU nanoseconds from schedstat; None where the kernel lacks it
    cpu: int  # the CPU it last ran on
    alive: bool = True

    @property
    def ctx_switches(self) -> int:
        return self.voluntary + self.involuntary

    @property
    def cpu_s(self) -> float:
        """User + system CPU seconds: schedstat's nanoseconds where available."""
        if self.run_ns is not None:
            return self.run_ns / 1e9
        return self.utime_s + self.stime_s


@dataclass(frozen=True)
class ProcTotals:
    voluntary: int = 0
    involuntary: int = 0
    utime_s: float = 0.0
    stime_s: float = 0.0
    cpu_s: float = 0.0  # see ThreadStat.cpu_s
    threads: int = 0  # live threads

    @property
    def ctx_switches(self) -> int:
        return self.voluntary + self.involuntary


@dataclass(frozen=True)
class ProcSample:
    pid: int
    threads: dict[int, ThreadStat] = field(default_factory=dict)  # every thread ever seen
    total: ProcTotals = ProcTotals()
    gone: bool = False  # the process has exited: these are its last values


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except (FileNotFoundError, ProcessLookupError):
        return None
    try:
        return os.read(fd, 4096).decode(errors="replace")
    except (ProcessLookupError, OSError):
        return None
    finally:
        os.close(fd)


def read_thread(pid: int, tid: int) -> ThreadStat | None:
    """One thread's figures, or None if it has exited."""
    base = f"/proc/{pid}/task/{tid}/"
    stat = _read(base + "stat")
    status = _read(base + "status")
    if stat is None or status is None:
        return None
    # comm may hold spaces and parentheses: it ends at the last ')'
    head, _, rest = stat.rpartition(")")
    comm = head.partition("(")[2]
    fields = rest.split()
    # fields[0] is state (stat field 3): utime is field 14, stime 15, processor 39
    utime, stime, cpu = int(fields[11]), int(fields[12]), int(fields[36])
    vol = invol = 0
    for line in status.splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            vol = int(line.split()[1])
        elif line.startswith("nonvoluntary_ctxt_switches:"):
            invol = int(line.split()[1])
    sched = _read(base + "schedstat")
    run_ns = int(sched.split()[0]) if sched else None
    return ThreadStat(tid=tid, comm=comm, voluntary=vol, involuntary=invol,
                      utime_s=utime / CLK_TCK, stime_s=stime / CLK_TCK, run_ns=run_ns,
                      cpu=cpu)


class ProcThreads:
    """Samples every thread of one process. Not thread-safe: one sampler per instance."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._seen: dict[int, ThreadStat] = {}
        self._last = ProcSample(pid)

    @property
    def last(self) -> ProcSample:
        return self._last

    def tids(self) -> list[int]:
        try:
            return sorted(int(t) for t in os.listdir(f"/proc/{self.pid}/task"))
        except (FileNotFoundError, ProcessLookupError):
            return []

    def sample(self) -> ProcSample:
        """Read every live thread now; exited threads keep their last values."""
        if self._last.gone:
            return self._last
        live = self.tids()
        if not live or not process_alive(self.pid):
            self._last = replace(self._last, gone=True,
                                 threads={t: replace(s, alive=False)
                                          for t, s in self._seen.items()},
                                 total=replace(self._last.total, threads=0))
            return self._last
        live_set = set(live)
        for tid in live:
            st = read_thread(self.pid, tid)
            if st is not None:
                self._seen[tid] = st
            else:
                live_set.discard(tid)
        for tid, st in self._seen.items():
            if tid not in live_set and st.alive:
                self._seen[tid] = replace(st, alive=False)
        threads = dict(self._seen)
        live_threads = [self._seen[t] for t in live_set if t in self._seen]
        utime = sum(s.utime_s for s in threads.values())
        stime = sum(s.stime_s for s in threads.values())
        cpu = sum(s.cpu_s for s in threads.values())
        proc = _process_times(self.pid)
        if proc is not None:
            utime, stime = proc
        proc_ns = _process_cpu_ns(self.pid)
        if proc_ns is not None:
            cpu = proc_ns / 1e9
        elif proc is not None:
            # no process CPU clock: the live threads' precise time plus, at tick
            # resolution, what the process stat holds beyond them (exited threads)
            live_ticks = sum(s.utime_s + s.stime_s for s in live_threads)
            cpu = sum(s.cpu_s for s in live_threads) + max(0.0, utime + stime - live_ticks)
        total = ProcTotals(
            voluntary=sum(s.voluntary for s in threads.values()),
            involuntary=sum(s.involuntary for s in threads.values()),
            utime_s=utime, stime_s=stime, cpu_s=max(cpu, self._last.total.cpu_s),
            threads=len(live_threads),
        )
        self._last = ProcSample(self.pid, threads, total)
        return self._last

    def threads_total(self, tids: list[int] | set[int]) -> ProcTotals:
        """Totals over the given threads of the last sample (e.g. a relay's workers)."""
        chosen = [s for t, s in self._last.threads.items() if t in set(tids)]
        return ProcTotals(
            voluntary=sum(s.voluntary for s in chosen),
            involuntary=sum(s.involuntary for s in chosen),
            utime_s=sum(s.utime_s for s in chosen),
            stime_s=sum(s.stime_s for s in chosen),
            cpu_s=sum(s.cpu_s for s in chosen),
            threads=sum(1 for s in chosen if s.alive),
        )


def _process_times(pid: int) -> tuple[float, float] | None:
    """(utime, stime) seconds of the whole process, exited threads included."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def _process_cpu_ns(pid: int) -> int | None:
    """The whole process's CPU time in nanoseconds, exited threads included, from its
    CPU-time clock (what clock_getcpuclockid(3) returns: the kernel's exact per-process
    runtime, not the 10 ms ticks of /proc/PID/stat). None once the process is gone."""
    clock = ((~pid) << 3) | _CPUCLOCK_SCHED
    try:
        return time.clock_gettime_ns(clock)
    except OSError:
        return None


def process_alive(pid: int) -> bool:
    """True while pid runs (a zombie, exited but unreaped, counts as gone)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
