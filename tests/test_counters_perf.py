"""perf against the relay's own counters, under load (issue 5).

(i)  The relay counts every syscall it issues by kind (sys_*). perf's
     raw_syscalls:sys_enter on the relay's worker + acceptor threads must agree within 5 %;
     on the whole pid, the difference is the host's Python threads (named in the message).
(ii) /proc voluntary + involuntary context switches agree with perf context-switches
     within 10 %.
Both io backends. Skipped with perf_status()'s reason where perf cannot count.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys

import pytest
from counters_helpers import diff, require_perf, settled, syscall_total, worker_tids

from labkit import Relay, RelayConfig
from labkit.counters import perf as perfmod
from labkit.counters.perf import PerfStat, PerfUnavailable, parse_line, perf_status
from labkit.counters.procfs import ProcThreads
from labkit.procs.load import Load, LoadConfig

IO_MODES = ["epoll", "uring"]

# ---- parsing and status (no perf needed) ------------------------------------------------


def test_parse_interval_lines() -> None:
    p = parse_line("     0.200315695,217530,,raw_syscalls:sys_enter,531417954,100.00,,")
    assert p is not None and p.t == pytest.approx(0.200315695) and p.value == 217530
    assert p.event == "raw_syscalls:sys_enter" and p.supported
    p = parse_line("0.4,<not counted>,msec,task-clock,0,100.00,,")
    assert p is not None and p.value == 0.0 and p.unit == "msec"  # task did not run
    p = parse_line("0.4,<not supported>,,cycles,0,100.00,,")
    assert p is not None and math.isnan(p.value) and not p.supported
    assert parse_line("29,,raw_syscalls:sys_enter,1234,100.00,,", interval=False).value == 29
    for junk in ("", "# started on", "Error: no such event", "0.2,abc,,x,0,100,,"):
        assert parse_line(junk) is None


def test_perf_status_reports_a_missing_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perfmod, "_perf_binary", lambda: None)
    perfmod.perf_status.cache_clear()
    try:
        status = perf_status()
        assert not status.ok and "not installed" in status.reason and "linux-perf" in status.fix
        with pytest.raises(PerfUnavailable, match="not installed"):
            PerfStat(pid=os.getpid()).start()
    finally:
        perfmod.perf_status.cache_clear()


def test_perf_status_reports_paranoid_level(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perfmod, "_privileged", lambda: False)
    monkeypatch.setattr(perfmod, "paranoid_level", lambda: 2)
    perfmod.perf_status.cache_clear()
    try:
        status = perf_status()
        if perfmod._perf_binary() is not None:
            assert not status.ok and "perf_event_paranoid is 2" in status.reason
            assert "sysctl kernel.perf_event_paranoid=-1" in status.fix
    finally:
        perfmod.perf_status.cache_clear()


def test_perfstat_streams_and_stops_by_pid() -> None:
    require_perf()
    # a child that makes a known number of syscalls per second: 1 ms sleeps
    child = subprocess.Popen([sys.executable, "-c",
                              "import time\nwhile True: time.sleep(0.001)"])
    try:
        ps = PerfStat(pid=child.pid, interval_ms=100)
        with ps:
            ps.wait_ready(5)
            got_two = ps.frame()
            while got_two["t"].nunique() < 3:
                ps.wait_ready(1)  # returns at once; the loop waits on frame growth
                got_two = ps.frame()
        assert not ps.running  # SIGINT, reaped
        df = ps.frame()
        assert list(df.columns) == ["t", "mono", "event", "value", "unit"]
        assert set(df["event"]) == set(ps.events)
        assert (df.groupby("event")["t"].is_monotonic_increasing).all()
        assert ps.totals()["raw_syscalls:sys_enter"] > 100  # ~1000 sleeps a second
        assert child.poll() is None  # perf's stop did not touch the target
    finally:
        child.kill()
        child.wait()


# ---- cross-checks under load ---------------------------------------------------------------


def _run_window(io: str) -> dict:
    """Relay with 2 workers; perf on its threads and on its pid; one load run between
    two settled readings of the relay's counters."""
    with Relay(RelayConfig(io=io, workers=2)) as relay:
        tids = worker_tids(relay)
        on_threads = PerfStat(tids=tids, interval_ms=200)
        on_pid = PerfStat(pid=relay.pid, interval_ms=200)
        with on_threads, on_pid:
            on_threads.wait_ready()
            on_pid.wait_ready()
            procs = ProcThreads(relay.pid)
            c0 = settled(relay.counters)
            s0 = procs.sample()
            cfg = LoadConfig.for_relay(relay, pairs=4, size=1400, rate_mbps=400, duration=1.5,
                                       warmup=0.2)
            result = Load(cfg).run()
            c1 = settled(relay.counters)
            s1 = procs.sample()
        return {"c0": c0, "c1": c1, "s0": s0, "s1": s1, "tids": tids, "pid": relay.pid,
                "threads": on_threads.totals(), "process": on_pid.totals(), "load": result}


@pytest.fixture(scope="module", params=IO_MODES)
def window(request: pytest.FixtureRequest) -> dict:
    require_perf()
    return _run_window(request.param) | {"io": request.param}


def test_relay_syscall_count_matches_perf(window: dict) -> None:
    own_by_kind = diff(window["c0"], window["c1"], "sys_")
    own = syscall_total(window["c1"]) - syscall_total(window["c0"])
    threads = window["threads"]
    seen = threads["raw_syscalls:sys_enter"]
    per_call = {k.removeprefix("syscalls:sys_enter_"): int(v) for k, v in threads.items()
                if k.startswith("syscalls:") and v}
    assert window["load"].received > 0
    assert own > 1000, f"too little traffic to compare: {own_by_kind}"
    err = abs(seen - own) / seen
    print(f"[{window['io']}] relay's own sys_* {own}, perf on its threads {seen:.0f} "
          f"({100 * err:.3f} % apart)")
    assert err < 0.05, (
        f"{window['io']}: relay counted {own} syscalls {own_by_kind}, perf saw {seen:.0f} on "
        f"threads {window['tids']} ({100 * err:.2f} % apart); perf by call: {per_call}")


def test_whole_process_difference_is_the_python_host(window: dict) -> None:
    own = syscall_total(window["c1"]) - syscall_total(window["c0"])
    threads = window["threads"]["raw_syscalls:sys_enter"]
    process = window["process"]["raw_syscalls:sys_enter"]
    host = process - threads
    relay_tids = set(window["tids"])
    host_threads = {t: s.comm for t, s in window["s1"].threads.items() if t not in relay_tids}
    err = abs(process - own) / process
    print(f"[{window['io']}] whole pid {process:.0f}: relay threads {threads:.0f} + host "
          f"{host:.0f} ({100 * err:.3f} % above the relay's own count)")
    # Two perf processes attach and stop a few ms apart; an idle relay still makes a few
    # syscalls (timer wake-ups), so allow that much skew between their windows.
    assert host >= -max(20.0, 1e-3 * threads), (
        f"perf saw {process:.0f} syscalls on the whole process, fewer than the {threads:.0f} "
        "on its threads")
    assert err < 0.05, (
        f"{window['io']}: perf on pid {window['pid']} saw {process:.0f} syscalls, the relay "
        f"counted {own} ({100 * err:.2f} % apart). Of the difference, {host:.0f} are the "
        f"Python host's own threads {host_threads} (main thread in select(), the "
        f"lk_relay_run thread in pthread_join: the relay does not count them) and "
        f"{threads - own:.0f} are syscalls on the relay's threads it did not count")


def test_proc_context_switches_match_perf(window: dict) -> None:
    s0, s1 = window["s0"], window["s1"]
    proc_threads = sum(s1.threads[t].ctx_switches - s0.threads[t].ctx_switches
                       for t in window["tids"])
    perf_threads = window["threads"]["context-switches"]
    proc_all = s1.total.ctx_switches - s0.total.ctx_switches
    perf_all = window["process"]["context-switches"]
    print(f"[{window['io']}] ctx switches: /proc {proc_threads} vs perf {perf_threads:.0f} "
          f"(relay threads); /proc {proc_all} vs perf {perf_all:.0f} (whole pid)")
    assert perf_threads > 0
    assert abs(proc_threads - perf_threads) / perf_threads < 0.10, (
        f"relay threads: /proc vol+invol {proc_threads} vs perf context-switches "
        f"{perf_threads:.0f}")
    assert abs(proc_all - perf_all) / perf_all < 0.10, (
        f"whole pid: /proc vol+invol {proc_all} vs perf context-switches {perf_all:.0f}")


def test_perf_stop_is_sigint_then_sigkill(monkeypatch: pytest.MonkeyPatch) -> None:
    require_perf()
    sent: list[tuple[int, int]] = []
    real_kill = os.kill
    monkeypatch.setattr(perfmod.os, "kill",
                        lambda pid, sig: (sent.append((pid, sig)), real_kill(pid, sig)))
    ps = PerfStat(pid=os.getpid(), interval_ms=100).start()
    ps.wait_ready()
    perf_pid = ps._proc.pid  # type: ignore[union-attr]
    assert ps.stop() is not None
    assert sent[0] == (perf_pid, signal.SIGINT)
    assert all(pid == perf_pid for pid, _ in sent)
