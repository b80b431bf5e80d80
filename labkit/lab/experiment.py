"""Fair experiments: one run, and a sweep of runs with interleaved repeats.

    r = experiment.run(relay=RelayConfig(io="uring"), load=LoadConfig(pairs=4, rate_mbps=500),
                       duration=2, warmup=0.5)
    r.summary["syscalls_per_packet"], r.timeseries

    s = experiment.sweep({"io": ["epoll", "uring"], "rate_mbps": [100, 300, 600]},
                         repeats=3, duration=2, warmup=0.5)
    s.stats, s.comparisons

One run: the relay and the load generator each start in their own process (stopped by pid
only), are pinned to different CPUs where the machine has them (labkit.procs.pinning; the
result says how), the one Sampler (labkit.counters.sampler) records the time series while
the run lasts, and the window figures (labkit.lab.window) come from counter snapshots
taken exactly at the measured window's edges (load ready + warm-up, and that + duration).

The relay under test is labkit's (a RelayConfig) or any DERP relay program (an
ExternalRelay: derper, Hyper-DERP, labkit.procs.presets), measured from outside: its
shared-memory-only figures are NaN and named in the summary's `unavailable`, and the
delivered_* figures (per packet the load generator received) are the ones every relay has.
`sweep(relays=[…])` compares several under the same load, CPUs and windows.

A failed run (the relay or the load generator died or refused to start) is a Result with
status "failed", the error and the failing process's stderr tail. `run(check=True)`, the
default, raises RunFailed carrying that Result; a sweep records it and goes on.

Sweeps interleave repeats (every point once, then every point again, …) so slow drift of
the machine lands on every mode alike, skip points the store already holds (resume), and
report per-point statistics and Welch's t-test between two modes (labkit.lab.stats).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import math
import os
import secrets
import select
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from labkit import caps
from labkit.config import SWITCHES, ConfigError, RelayConfig
from labkit.counters.ticks import TICK_KEYS
from labkit.lab import store as _store
from labkit.lab import window
from labkit.lab.result import Result, RunFailed, SweepResult
from labkit.lab.stats import summarize, welch
from labkit.problems import Problem, raise_if
from labkit.procs import pinning
from labkit.procs.external import ExternalRelay, ExternalRelayProcess
from labkit.procs.load import Load, LoadConfig, LoadError
from labkit.procs.relay import Relay, RelayError, default_start_timeout

# What a run measures: labkit's relay (a RelayConfig) or any DERP relay program.
RelayUnderTest = RelayConfig | ExternalRelay

# RelayConfig fields a summary row carries (tidy columns a sweep can group by).
_RELAY_COLUMNS = ("io", "tls", "workers", *SWITCHES, "pin_cpus", "queue_depth",
                  "pool_packets", "max_conns", "write_timeout")
# LoadConfig fields as summary columns (renamed where a RelayConfig field has the name).
_LOAD_COLUMNS = {"mode": "load_mode", "pairs": "pairs", "size": "size",
                 "rate_mbps": "rate_mbps", "threads": "load_threads",
                 "pin_cpus": "load_pin_cpus", "first_cpu": "load_first_cpu",
                 "transport": "transport", "sender": "load_sender"}
# LoadConfig fields a grid may vary (host/port/TLS follow the relay).
_LOAD_GRID = {"mode", "pairs", "size", "rate_mbps", "threads", "transport", "sender"}
_RELAY_GRID = {f.name for f in fields(RelayConfig)} - {"host", "port"}
_RUN_GRID = {"duration", "warmup"}
STOP_GRACE = 1.0  # seconds between SIGTERM and SIGKILL for the run's processes


# ---- control ------------------------------------------------------------------------------


class RunControl:
    """Lets another thread watch and stop a run: `stop()` ends it within a second (SIGTERM
    to the load generator and relay by pid, SIGKILL after the grace period).

    `started` is set once both processes run; `relay_pid`/`load_pid` name them then. One
    control may serve several runs (a sweep): once stopped it stays stopped.
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self.started = threading.Event()
        self.finished = threading.Event()
        self.relay_pid: int | None = None
        self.load_pid: int | None = None
        self.phase = "idle"

    def stop(self) -> None:
        if not self._event.is_set():
            self._event.set()
            with contextlib.suppress(OSError):
                os.write(self._w, b"s")  # wakes the run's select()

    @property
    def stopped(self) -> bool:
        return self._event.is_set()

    def fileno(self) -> int:
        """Readable once stop() was called (for select)."""
        return self._r

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def __del__(self) -> None:
        self.close()


# ---- one run ------------------------------------------------------------------------------


def _new_run_id(prefix: str = "run") -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(3)}"


def relay_name(cfg: RelayUnderTest) -> str:
    """How results name a relay under test: an external relay's own name, else
    "labkit-<io>" with its TLS mode and worker count where they are not the defaults."""
    if isinstance(cfg, ExternalRelay):
        return cfg.name
    name = f"labkit-{cfg.io}"
    if cfg.tls != "off":
        name += f"-{cfg.tls}"
    return name + (f"-{cfg.workers}w" if cfg.workers != 1 else "")


def relay_settings(cfg: RelayUnderTest) -> str:
    """The relay's own settings, printed beside its figures."""
    if isinstance(cfg, ExternalRelay):
        return cfg.settings_text()
    r = cfg.to_dict()
    return ", ".join(f"{k}={r[k]}" for k in _RELAY_COLUMNS if r.get(k) is not None)


def _config_columns(relay_cfg: RelayUnderTest, load_cfg: LoadConfig) -> dict[str, Any]:
    r = relay_cfg.to_dict()
    # an external relay has none of the switches or pool sizes: None, not a made-up value
    cols: dict[str, Any] = {k: r.get(k) for k in _RELAY_COLUMNS}
    cols["relay"] = relay_name(relay_cfg)
    cols["relay_settings"] = relay_settings(relay_cfg)
    lo = load_cfg.to_dict()
    for k, col in _LOAD_COLUMNS.items():
        cols[col] = lo[k]
    if cols["rate_mbps"] is None:
        cols["rate_mbps"] = float("nan")  # unpaced
    cols["duration"] = load_cfg.duration
    cols["warmup"] = load_cfg.warmup
    return cols


def _capabilities() -> dict[str, Any]:
    """What labkit.caps reports (caps.current(): probed once per process), as plain data
    for a run's metadata: {name: {"ok": …, "detail": …, "todo": …}}."""
    try:
        return caps.current().to_dict()
    except Exception as e:  # a probe failure must not fail a run; record it instead
        return {"error": f"{type(e).__name__}: {e}"}


def _validate_load_template(cfg: LoadConfig) -> LoadConfig:
    """Check a load config whose address will be the relay's (port 0 is fine here)."""
    cfg.replace(port=cfg.port or 1).validate()
    return cfg


def check_run(relay: RelayUnderTest, load: LoadConfig, *, hz: float = 10.0,
              store: bool | str | os.PathLike[str] = False, cluster: Any = None,
              placement: Any = None, load_hosts: int | None = None) -> None:
    """Everything run() checks before it starts anything: ConfigError for the configs and
    hz (and a placed run's load_hosts), StoreError for a store it may not write to."""
    problems = []
    for cfg in (relay, load.replace(port=load.port or 1)):
        try:
            cfg.validate()
        except ConfigError as e:
            problems += e.problems
    if not (isinstance(hz, int | float) and not isinstance(hz, bool) and 0 < hz <= 100):
        problems.append(Problem("hz", hz, "must be samples per second, 0 < hz <= 100"))
    problems += _placement_problems(relay, load, cluster, placement, load_hosts)
    raise_if(problems, "run")
    if store is not False:
        _store.check_writable(_store.default_dir() if store is True else store)


def _placement_problems(relay: RelayUnderTest, load: LoadConfig, cluster: Any,
                        placement: Any, load_hosts: int | None) -> list[Problem]:
    p: list[Problem] = []
    if cluster is not None and isinstance(relay, ExternalRelay):
        p.append(Problem("cluster", None, "an external relay runs on this host only: a "
                         "placed run takes a labkit RelayConfig", "drop cluster= for "
                         f"{relay.name}", cli_fix="drop --cluster with --relay-cmd or "
                         "--relay-preset", form=""))
    if cluster is None and (placement is not None or load_hosts is not None):
        p.append(Problem("cluster", None, "{load_hosts} (or a placement) puts a run on "
                         "several hosts: it needs a cluster", "give cluster= a "
                         "distributed.Client, or drop it", cli_fix="give --cluster ADDRESS or "
                         "drop --load-hosts", form=""))
    if load_hosts is not None and not (
            isinstance(load_hosts, int) and not isinstance(load_hosts, bool)
            and isinstance(load.pairs, int) and 1 <= load_hosts <= load.pairs):
        p.append(Problem("load_hosts", load_hosts, f"{{load_hosts}} must be 1..pairs "
                         f"({load.pairs}), not {load_hosts!r}: each load host runs at least "
                         "one pair", form=""))
    return p


def _for_relay(template: LoadConfig, relay: Relay | ExternalRelayProcess) -> LoadConfig:
    changes: dict[str, Any] = {"host": relay.host, "port": relay.port, "tls": relay.tls}
    if relay.tls != "off":
        if not template.insecure and template.ca_file is None:
            changes["ca_file"] = relay.cert_file
    else:
        changes |= {"insecure": False, "ca_file": None}
    return template.replace(**changes)


class _Waiter:
    """Waits for a deadline, a stop request or the death of a child, whichever comes first,
    without polling: select() on the children's pidfds and the control's pipe."""

    def __init__(self, control: RunControl, pids: dict[str, int], pump: Callable[[], None]
                 | None, pump_every: float) -> None:
        self.control = control
        self.pump = pump
        self.pump_every = pump_every
        self.fds: dict[int, str] = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError):
                self.fds[os.pidfd_open(pid)] = name

    def until(self, deadline: float) -> str | None:
        """None at the deadline; 'stop', or the name of a child that exited."""
        watch = [self.control.fileno(), *self.fds]
        while True:
            if self.control.stopped:
                return "stop"
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            timeout = min(left, self.pump_every) if self.pump else left
            ready, _, _ = select.select(watch, [], [], timeout)
            if self.pump is not None:
                self.pump()
            for fd in ready:
                if fd in self.fds:
                    return self.fds[fd]

    def close(self) -> None:
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)


def _terminate(child: Any) -> None:
    """SIGTERM a child by pid while it is unreaped (returncode polls: a reaped pid is never
    signalled)."""
    if child is not None and child.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)


def _subscriber(live: Any) -> Callable[[dict[str, Any]], None] | None:
    if live is None:
        return None
    if hasattr(live, "push"):
        return live.push
    if callable(live):
        return live
    raise TypeError(f"live={live!r}: give a plots.LivePanel or a callable taking a tick dict")


def _marker(live: Any, relay_cfg: RelayUnderTest) -> Callable[[str], None]:
    """live.mark(phase, relay_cfg) when `live` marks run phases (a plots.LivePanel: a band
    per run, its warm-up shaded); a no-op for a plain callable."""
    mark = getattr(live, "mark", None)
    return (lambda phase: mark(phase, relay_cfg)) if callable(mark) else (lambda phase: None)


def _tail(text: str, lines: int = 40) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:])


def fairness(relay_cfg: RelayUnderTest, load_cfg: LoadConfig, placed: pinning.Pinning,
             hz: float, perf: str | bool) -> dict[str, Any]:
    """What a run holds fixed for whichever relay it measures, recorded with it: a sweep
    over several relays gives each the same load generator, CPUs, sizes and windows."""
    lo = {k: v for k, v in load_cfg.to_dict().items() if k not in ("host", "port", "tls",
                                                                   "ca_file", "insecure")}
    return {"relay": relay_name(relay_cfg), "relay_settings": relay_settings(relay_cfg),
            "relay_cores": relay_cfg.workers, "load_generator": "labkit load (native)",
            "load": lo, "pinning": placed.note, "hz": hz, "perf": perf,
            "per_packet_basis": "delivered_* figures: packets the load generator received, "
                                "the same for every relay"}


def run(relay: RelayUnderTest | None = None, load: LoadConfig | None = None, *,
        duration: float | None = None, warmup: float | None = None, hz: float = 10.0,
        perf: str | bool = "auto", procfs: bool = True, pin: bool = True,
        labels: Mapping[str, Any] | None = None, live: Any = None,
        control: RunControl | None = None, store: bool | str | os.PathLike[str] = False,
        check: bool = True, run_id: str | None = None,
        on_start: Callable[[Relay, Load], None] | None = None,
        start_timeout: float | None = None, stop_grace: float = STOP_GRACE,
        cluster: Any = None, placement: Any = None, load_hosts: int | None = None,
        on_placed: Callable[[dict[str, Any]], None] | None = None,
        start_allowance: float | None = None) -> Result:
    """Run the relay and the load generator once and measure.

    cluster: a distributed.Client: the relay runs on one of its workers and the load on
    others (labkit.hosts.cluster): placement (a cluster.Placement) says which, else
    Placement.spread(cluster, load_hosts or 1); the load's pairs are split over the load
    hosts. on_placed(ready messages) is called once every host runs (tests kill one).
    start_allowance: how many seconds apart the load hosts may connect (default
    cluster.START_ALLOWANCE; each load runs that much longer, see cluster.run_placed).

    duration/warmup override the LoadConfig's. live: a plots.LivePanel (or any callable)
    fed every sampler tick. control: a RunControl to stop the run from another thread.
    store: True (your store, labkit.lab.store.default_dir()) or a directory to save the Result
    there. check: raise RunFailed when the run fails (else return it with status "failed").
    on_start(relay, load) is called once both processes run (tests use it to kill one).
    start_timeout: the bound on each process's start (default: the relay's,
    labkit.procs.relay.default_start_timeout: wider inside the sandbox guest).

    ConfigError (before any process starts) for an invalid config; StoreError (before
    too) when `store` names the recorded reference folder.
    """
    relay_cfg = relay or RelayConfig()
    load_cfg = load or LoadConfig()
    if duration is not None:
        load_cfg = load_cfg.replace(duration=duration)
    if warmup is not None:
        load_cfg = load_cfg.replace(warmup=warmup)
    check_run(relay_cfg, load_cfg, hz=hz, store=store, cluster=cluster, placement=placement,
              load_hosts=load_hosts)
    if start_timeout is None:
        start_timeout = default_start_timeout()
    if cluster is not None:
        return _run_on_cluster(
            cluster, placement, load_hosts, relay_cfg, load_cfg, hz=hz, perf=perf,
            labels=labels, live=live, control=control, store=store, check=check,
            run_id=run_id, on_placed=on_placed, start_timeout=start_timeout,
            stop_grace=stop_grace, start_allowance=start_allowance)
    from labkit.counters.sampler import Sampler  # the one sampler (loads the native module)

    control = control or RunControl()
    labels = dict(labels or {})
    run_id = run_id or _new_run_id(str(labels.get("sweep") or "run"))
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")  # orders short runs
    columns = _config_columns(relay_cfg, load_cfg)
    info: dict[str, Any] = {"status": "ok", "error": None, "stderr_tail": None}
    figures: dict[str, Any] = {}
    placed = pinning.Pinning(False, (), (), "not started")
    ticks = pd.DataFrame(columns=list(TICK_KEYS))
    sources: dict[str, str] = {}
    t0 = ws = we = float("nan")
    relay_proc = load_proc = sampler = waiter = None
    the_relay: Relay | ExternalRelayProcess = (
        relay_cfg.process(start_timeout=start_timeout, stop_grace=stop_grace)
        if isinstance(relay_cfg, ExternalRelay) else
        Relay(relay_cfg, start_timeout=start_timeout, stop_grace=stop_grace))
    the_load: Load | None = None
    subscriber = _subscriber(live)
    pump = getattr(live, "pump", None)
    mark = _marker(live, relay_cfg)

    def fail(error: str, tail: str) -> None:
        if info["status"] == "ok":
            info.update(status="failed", error=error, stderr_tail=_tail(tail))

    try:
        control.phase = "starting"
        mark("starting")
        the_relay.start()
        # the sampler (and perf, which takes a moment to attach) starts before the load, so
        # the warm-up is not spent waiting for it; the load joins it once connected
        sampler = Sampler(relay=the_relay, load=None, hz=hz, run_id=run_id, labels=labels,
                          perf=perf, procfs=procfs)
        if subscriber is not None:
            sampler.subscribe(subscriber)
        sampler.start()
        t0 = time.monotonic()  # the sampler's `t` counts from (just before) here
        the_load = Load(_for_relay(load_cfg, the_relay), start_timeout=start_timeout,
                        stop_grace=stop_grace)
        the_load.start()
        t_ready = time.monotonic()
        sampler.attach_load(the_load)
        from labkit.counters.procfs import ProcThreads

        relay_proc, load_proc = ProcThreads(the_relay.pid), ProcThreads(the_load.pid)
        placed = pinning.pin(the_relay, the_load, pin)
        own_cpus = placed.relay_cpus if placed.pinned else ()
        control.relay_pid, control.load_pid = the_relay.pid, the_load.pid
        control.started.set()
        if on_start is not None:
            on_start(the_relay, the_load)
        waiter = _Waiter(control, {"relay": the_relay.pid, "load": the_load.pid}, pump,
                         1.0 / max(hz, 2.0))
        ws = t_ready + load_cfg.warmup
        we = ws + load_cfg.duration
        s0 = s1 = None
        control.phase = "warmup"
        event = waiter.until(ws)
        if event is None:
            s0 = window.snapshot(the_relay, relay_proc, load_proc, own_cpus)
            control.phase = "window"
            mark("window")
            event = waiter.until(we)
        if event is None:
            s1 = window.snapshot(the_relay, relay_proc, load_proc, own_cpus)
            control.phase = "drain"
            mark("drain")
            # the load ends by itself after its drain; "load" here is that exit
            event = waiter.until(we + 10.0 + 2 * stop_grace)
            if event is None:
                fail("the load generator overran its window by 10 s", the_load.stderr_tail)
        control.phase = "stopping"
        if event == "relay" or the_relay.returncode is not None:
            code = the_relay.wait(stop_grace)
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            fail(f"the relay died mid-run ({how})", the_relay.stderr_tail)
        elif event == "stop":
            info.update(status="stopped", error="stopped by request")
            # signal both now; the bookkeeping below (sampler, result line) may take longer
            for child in (the_load, the_relay):
                _terminate(child)
        elif info["status"] == "ok":
            try:
                res = the_load.wait(stop_grace + 5.0)
            except LoadError as e:
                fail(f"the load generator failed ({type(e).__name__})",
                     getattr(e, "stderr_tail", "") or str(e))
            else:
                if s0 is None or s1 is None:
                    fail("the load generator ended before its window did",
                         the_load.stderr_tail)
                else:
                    figures = window.window_figures(s0, s1, res, load_cfg.size)
    except (RelayError, LoadError) as e:
        tail = getattr(e, "stderr_tail", None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        fail(first, tail if tail is not None else str(e))
    except Exception as e:  # e.g. perf=True where perf cannot run: a recorded failure too
        fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
             traceback.format_exc())
    finally:
        # stop by pid: load first (its SIGTERM ends the window early), then the relay
        try:
            if sampler is not None:
                sampler.stop()
                ticks = sampler.ticks()
                sources = dict(sampler.sources)
        finally:
            if the_load is not None:
                the_load.stop()
            code = the_relay.stop()
        if waiter is not None:
            waiter.close()
        if pump is not None:
            pump()
        control.phase = "done"
    if info["status"] == "ok" and code not in (0, None):
        # the relay ran the whole window but did not stop cleanly: the figures stand, but say so
        info["error"] = f"relay exit code {code} at stop"
        info["stderr_tail"] = _tail(the_relay.stderr_tail)
    left = getattr(the_relay, "orphans", [])
    if info["status"] == "ok" and left and not info["error"]:
        info["error"] = (f"the relay left {len(left)} process(es) running when it stopped "
                         f"(pids {', '.join(map(str, left))}; labkit stopped them)")
    listener = getattr(the_relay, "listener_pid", None)
    if info["status"] == "ok" and listener not in (None, the_relay.pid):
        # the figures stand for what they measured, but that was the wrapper, not the relay
        info["error"] = (f"the relay listens in pid {listener}, a child of the started pid "
                         f"{the_relay.pid}: /proc and perf figures cover pid "
                         f"{the_relay.pid} only (start the relay with exec). "
                         + (info["error"] or ""))
    if figures and not ticks.empty:
        if isinstance(relay_cfg, RelayConfig):
            figures["perf_syscalls_per_packet"] = window.perf_per_packet(
                ticks, t0, ws, we, int(figures["relay_packets"]))
        figures["delivered_perf_syscalls_per_packet"] = window.perf_per_packet(
            ticks, t0, ws, we, int(figures["received"]))
    ticks = _with_phase(ticks, t0, ws, we)
    summary = {
        "run_id": run_id,
        "status": info["status"],
        "error": info["error"],
        "stderr_tail": info["stderr_tail"],
        "started_at": started_at,
        **columns,
        **{k: v for k, v in labels.items() if k not in columns},
        "pinned": placed.pinned,
        "relay_cpus": pinning.cpu_list(placed.relay_cpus),
        "load_cpus": pinning.cpu_list(placed.load_cpus),
        "pinning": placed.note,
        "perf_source": sources.get("perf", "unknown"),
        "unavailable": "" if isinstance(relay_cfg, RelayConfig) else
        f"{', '.join(window.SHM_ONLY)}: not available for this relay (labkit's "
        "shared-memory counters only)",
    }
    for k in window.FIGURES:
        summary.setdefault(k, float("nan"))
    summary |= figures
    meta = _store.provenance() | {
        "run_id": run_id,
        "relay_config": relay_cfg.to_dict(),
        "load_config": load_cfg.to_dict(),
        "labels": labels,
        "pinning": dataclasses.asdict(placed),
        "sources": sources,
        "capabilities": _capabilities(),
        "hz": hz,
        "fairness": fairness(relay_cfg, load_cfg, placed, hz, perf),
    }
    if isinstance(the_relay, ExternalRelayProcess):
        meta["external"] = {"argv": the_relay.argv, "orphans": the_relay.orphans}
    return _conclude(Result(pd.Series(summary, dtype=object), ticks, meta), store, control,
                     check)


# ---- one run across hosts ----------------------------------------------------------------


def _run_on_cluster(cluster: Any, placement: Any, load_hosts: int | None,
                    relay_cfg: RelayConfig, load_cfg: LoadConfig, *, hz: float,
                    perf: str | bool, labels: Mapping[str, Any] | None, live: Any,
                    control: RunControl | None, store: bool | str | os.PathLike[str],
                    check: bool, run_id: str | None,
                    on_placed: Callable[[dict[str, Any]], None] | None,
                    start_timeout: float, stop_grace: float,
                    start_allowance: float | None) -> Result:
    """run() with the relay and the loads on the cluster's workers: the same summary
    columns and figures as a local run, the relay's from its host, the load's summed over
    the load hosts, and meta["hosts"] naming the host of every figure."""
    from labkit.hosts import cluster as placed

    control = control or RunControl()
    labels = dict(labels or {})
    run_id = run_id or _new_run_id(str(labels.get("sweep") or "run"))
    started_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    if placement is None:
        placement = placed.Placement.spread(cluster, load_hosts or 1)
    subscriber = _subscriber(live)
    sent = 0

    def on_row(timeline: pd.DataFrame) -> None:
        nonlocal sent
        if subscriber is None:
            return
        rows = _placed_ticks(timeline)
        for row in rows.iloc[sent:][list(TICK_KEYS)].to_dict("records"):
            subscriber(row)
        sent = len(rows)

    control.phase = "placed"
    run = placed.run_placed(
        cluster, placement, relay_cfg.to_dict(), load_cfg.to_dict(), hz=hz, perf=perf,
        start_timeout=start_timeout, stop_grace=stop_grace,
        should_stop=lambda: control.stopped, on_ready=on_placed, on_row=on_row,
        start_allowance=placed.START_ALLOWANCE if start_allowance is None
        else start_allowance)
    control.phase = "done"
    figures: dict[str, Any] = {}
    ws, we = run.window
    t0 = run.t0
    if run.status == "ok":
        s0, s1 = (_placed_snap(run.timeline, t - t0) for t in run.window)
        combined = _window_result(run.timeline, ws - t0, we - t0,
                                  [placed_result(r) for r in run.load_results], load_cfg.size)
        figures = window.window_figures(s0, s1, combined, load_cfg.size)
    ticks = _placed_ticks(run.timeline)
    if figures and not ticks.empty:
        figures["perf_syscalls_per_packet"] = window.perf_per_packet(
            ticks, t0, ws, we, int(figures["relay_packets"]))
    ticks = _with_phase(ticks, t0, ws, we)
    if not ticks.empty:
        ticks["run_id"] = run_id
        for k, v in labels.items():
            ticks[k] = v
    hosts = run.hosts | {"figure_hosts": _figure_hosts(run.hosts),
                         "load_results": run.load_results}
    summary = {
        "run_id": run_id, "status": run.status, "error": run.error,
        "stderr_tail": _tail(run.stderr_tail or "") or None, "started_at": started_at,
        **_config_columns(relay_cfg, load_cfg),
        **{k: v for k, v in labels.items()},
        "pinned": bool(hosts["pinning"]) and all(
            " on CPU " in str(v) for v in hosts["pinning"].values()),
        "relay_cpus": "", "load_cpus": "",  # per host: meta["hosts"]["pinning"]
        "pinning": "; ".join(f"{k}: {v}" for k, v in hosts["pinning"].items()),
        "perf_source": next((v for k, v in run.sources.items() if k.endswith(":perf")),
                            "unknown"),
        "relay_host": hosts["relay"], "load_hosts": ",".join(hosts["load"]),
        "placement": placement.describe(),
    }
    for k in window.FIGURES:
        summary.setdefault(k, float("nan"))
    summary |= figures
    meta = _store.provenance() | {
        "run_id": run_id, "relay_config": relay_cfg.to_dict(),
        "load_config": load_cfg.to_dict(), "labels": labels,
        "pinning": hosts["pinning"], "sources": run.sources,
        "capabilities": _capabilities(), "hz": hz, "hosts": hosts,
    }
    return _conclude(Result(pd.Series(summary, dtype=object), ticks, meta), store, control,
                     check)


def placed_result(fields_: Mapping[str, Any]) -> Any:
    """A load host's LoadResult from the fields its task returned."""
    from labkit.procs.load import LoadResult

    names = {f.name for f in fields(LoadResult)}
    return LoadResult(**{k: v for k, v in fields_.items() if k in names})


def _window_result(timeline: pd.DataFrame, ws: float, we: float, results: Sequence[Any],
                   size: int) -> Any:
    """What the load hosts did in the run's window [ws, we] (seconds on the time line),
    as one LoadResult: packets sent and received and payload bytes from their counters
    (summed over hosts, interpolated at the edges); lost is sent - received over the
    window (packets in flight at either edge roughly cancel); each latency percentile is
    the worst host's over its own (longer) window, a bound: the hosts' samples are not
    merged."""
    from labkit.procs.load import LoadResult

    def delta(col: str) -> int:
        d = _at(timeline, col, we) - _at(timeline, col, ws)
        return round(d) if math.isfinite(d) else 0

    seconds = we - ws
    sent, received = delta("load.load_sent"), delta("load.load_received")
    got = delta("load.load_bytes_received")
    return LoadResult(
        sent=sent, received=received, lost=max(0, sent - received), bytes_received=got,
        seconds=seconds, mbps=got * 8 / seconds / 1e6 if seconds > 0 else 0.0,
        pps=received / seconds if seconds > 0 else 0.0,
        latency={k: max(r.latency[k] for r in results) for k in results[0].latency},
        latency_samples=sum(r.latency_samples for r in results),
        handshake_failures=sum(r.handshake_failures for r in results))


def _at(timeline: pd.DataFrame, col: str, t: float) -> float:
    """A cumulative column of a placed run's time line at t, interpolated between the
    ticks around it (counters grow steadily between ticks a tenth of a second apart)."""
    if col not in timeline:
        return float("nan")
    ts = timeline["t"].astype(float).to_numpy()
    v = timeline[col].astype(float).to_numpy()
    ok = np.isfinite(v)
    return float(np.interp(t, ts[ok], v[ok])) if ok.any() else float("nan")


def _placed_snap(timeline: pd.DataFrame, t: float) -> window.Snap:
    """A window edge at t: the relay host's counters and CPU there, the load hosts' CPU
    summed."""
    def count(col: str) -> int:
        v = _at(timeline, col, t)
        return round(v) if math.isfinite(v) else 0

    def at(col: str) -> float:
        return _at(timeline, col, t)

    counters = {c.removeprefix("relay."): count(c) for c in timeline if c.startswith("relay.")}
    return window.Snap(t, counters, at("proc.relay.cpu_s"), at("proc.relay.utime_s"),
                       at("proc.relay.stime_s"), count("proc.relay.ctx_switches"),
                       at("proc.load.cpu_s"))


def _placed_ticks(timeline: pd.DataFrame) -> pd.DataFrame:
    """The sampler's tick rates (labkit.counters.ticks) from a merged time line's
    cumulative columns, one row per relay tick; the cumulative columns stay beside."""
    from labkit.counters import kinds
    from labkit.counters.ticks import TICKS

    if timeline.empty or len(timeline) < 2:
        return pd.DataFrame(columns=list(TICK_KEYS))
    dt = timeline["t"].astype(float).diff()
    relay = [c.removeprefix("relay.") for c in timeline if c.startswith("relay.")]
    out = pd.DataFrame({"t": timeline["t"].astype(float)})

    def rate(col: str) -> pd.Series:
        if col not in timeline:
            return pd.Series(float("nan"), index=timeline.index)
        return timeline[col].astype(float).diff() / dt

    for m in TICKS:
        if m.rate_of:
            out[m.name] = rate(m.rate_of) * m.scale
        elif m.group:
            keys = kinds.in_group(relay, m.group)
            out[m.name] = sum((rate(f"relay.{k}") for k in keys),
                              pd.Series(0.0, index=timeline.index)) if keys else float("nan")
        elif m.name == "perf_syscalls_per_s":
            out[m.name] = rate("perf.raw_syscalls:sys_enter")
    rest = timeline.drop(columns=["t"])
    return pd.concat([out, rest], axis=1).iloc[1:].reset_index(drop=True)


def _figure_hosts(hosts: Mapping[str, Any]) -> dict[str, str]:
    """The host each figure of a placed run was measured on."""
    relay, load = hosts["relay"], ",".join(hosts["load"])
    from_load = {"offered_mbps", "mbps", "pps", "loss_pct", "load_cpu_pct",
                 *(k for k in window.FIGURES if k.startswith("lat_"))}
    return {k: (load if k in from_load else relay) for k in window.FIGURES}


def _with_phase(ticks: pd.DataFrame, t0: float, ws: float, we: float) -> pd.DataFrame:
    ticks = ticks.copy()
    if ticks.empty or math.isnan(t0):
        ticks["phase"] = pd.Series(dtype=str)
        return ticks
    t = ticks["t"].astype(float)
    ticks["phase"] = np.where(t < ws - t0, "warmup", np.where(t <= we - t0, "window", "drain"))
    return ticks


# ---- sweeps -------------------------------------------------------------------------------


def expand_grid(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]
                ) -> list[dict[str, Any]]:
    """A grid {key: [values]} -> every combination (first key varies slowest); a list of
    dicts is taken as the points themselves."""
    if isinstance(grid, Mapping):
        keys = list(grid)
        for k in keys:
            v = grid[k]
            if isinstance(v, str | bytes) or not isinstance(v, Sequence) or not v:
                raise ConfigError(f"grid[{k!r}]={v!r} must be a non-empty list of values")
        return [dict(zip(keys, combo, strict=True))
                for combo in itertools.product(*(grid[k] for k in keys))]
    return [dict(p) for p in grid]


def point_configs(point: Mapping[str, Any], relay: RelayConfig, load: LoadConfig,
                  duration: float, warmup: float) -> tuple[RelayConfig, LoadConfig]:
    """The configs of one grid point; ConfigError for an unknown key or invalid value."""
    unknown = set(point) - _RELAY_GRID - _LOAD_GRID - _RUN_GRID
    if unknown:
        raise ConfigError(
            f"grid key(s) {', '.join(sorted(unknown))} are not RelayConfig fields, LoadConfig "
            f"fields ({', '.join(sorted(_LOAD_GRID))}) or duration/warmup")
    r = relay.replace(**{k: v for k, v in point.items() if k in _RELAY_GRID})
    lo = load.replace(duration=point.get("duration", duration),
                      warmup=point.get("warmup", warmup),
                      **{k: v for k, v in point.items() if k in _LOAD_GRID})
    return r, lo


def point_key(relay: RelayConfig, load: LoadConfig) -> str:
    """A stable name of what a run measures (configs minus addresses): resume matches it."""
    r = {k: v for k, v in relay.to_dict().items() if k not in ("host", "port")}
    lo = {k: v for k, v in load.to_dict().items() if k not in ("host", "port")}
    blob = json.dumps({"relay": r, "load": lo}, sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def sweep(grid: Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]], *,
          repeats: int = 3, relay: RelayConfig | None = None, load: LoadConfig | None = None,
          duration: float = 2.0, warmup: float = 0.5, name: str | None = None,
          store: bool | str | os.PathLike[str] = True, resume: bool = True,
          progress: bool = True, hz: float = 10.0, perf: str | bool = "auto",
          procfs: bool = True, pin: bool = True, compare: tuple[str, Any, Any] | None = None,
          control: RunControl | None = None, live: Any = None,
          on_start: Callable[[dict[str, Any], int, Relay, Load], None] | None = None,
          on_result: Callable[[Result], None] | None = None,
          recording: bool = False,
          relays: Sequence[RelayUnderTest] | None = None) -> SweepResult:
    """Run every grid point `repeats` times, interleaved (A B … A B …), and summarise.

    grid keys: RelayConfig fields (io, tls, workers, switches, …), LoadConfig fields
    (rate_mbps, size, pairs, threads, mode, sender) and duration/warmup. Every point is validated
    before anything runs (ConfigError). store: True (your store) or a directory; with
    resume, (point, repeat) pairs that this machine already stored there with status "ok"
    are not run again (runs from another machine, or recorded references, never stand in
    for a fresh run). recording=True writes reference runs into data/runs (data/record.py
    does; nothing else may write there). A failed run is
    recorded (status "failed", stderr tail) and the sweep goes on. compare=(key, a, b): a
    Welch t-test of b against a per point (default: io epoll vs uring when both are in the
    grid). control.stop() ends the sweep after stopping the current run.

    relays: a list of relays under test (RelayConfigs and ExternalRelays, each named by
    relay_name(), unique) to run at every grid point, interleaved with the repeats like any
    other factor (the relay varies fastest); the grid then holds only load and run keys,
    every relay gets the same load, CPUs and windows (the result's `fairness` says so and
    names what is not equal), and compare defaults to the first two relays.
    """
    from tqdm.auto import tqdm

    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"repeats={repeats!r} must be an integer >= 1")
    relay = relay or RelayConfig()
    load = load or LoadConfig()
    factor = compare[0] if compare is not None else "io"
    if isinstance(grid, Mapping) and factor in grid:
        # the compared factor varies fastest: A and B of one point run back to back
        grid = {k: grid[k] for k in grid if k != factor} | {factor: grid[factor]}
    points = expand_grid(grid)
    by_name: dict[str, RelayUnderTest] = {}
    if relays is not None:
        by_name = _relays_by_name(relays, points)
        points = [p | {"relay": n} for p in points for n in by_name]  # relay fastest
        if compare is None and len(by_name) >= 2:
            compare = ("relay", *list(by_name)[:2])
    if not points:
        raise ConfigError("the grid has no points")
    resolved: list[tuple[dict[str, Any], RelayUnderTest, LoadConfig, str]] = []
    for p in points:
        try:
            if by_name:
                rest = {k: v for k, v in p.items() if k != "relay"}
                r, lo = by_name[p["relay"]], point_configs(rest, RelayConfig(), load,
                                                           duration, warmup)[1]
            else:
                r, lo = point_configs(p, relay, load, duration, warmup)
            r.validate()
            _validate_load_template(lo)
        except ConfigError as e:
            raise ConfigError(f"grid point {p}: {e}") from None
        resolved.append((p, r, lo, point_key(r, lo)))
    by = list(dict.fromkeys(k for p in points for k in p))
    name = name or "sweep-" + hashlib.sha1(
        json.dumps([k for *_, k in resolved]).encode()).hexdigest()[:8]
    directory = None if store is False else (
        _store.default_dir() if store is True else Path(store))
    if directory is not None:
        _store.check_writable(directory, recording)
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if directory is not None and resume and directory.exists() and not recording:
        old = _store.load(directory)
        if not old.empty and "sweep" in old:
            mine = old[(old["sweep"] == name) & (old["status"] == "ok")
                       & (old["origin"] == _store.ORIGIN_HERE)]
            for row in mine.to_dict("records"):
                done[(str(row["point"]), int(row["repeat"]))] = row
    control = control or RunControl()
    rows: list[dict[str, Any]] = []
    paths: list[Path] = []
    skipped = 0
    order = [(rep, item) for rep in range(repeats) for item in resolved]  # interleaved
    bar = tqdm(total=len(order), desc=name, unit="run", disable=not progress)
    try:
        for rep, (p, r, lo, key) in order:
            if control.stopped:
                break
            if (key, rep) in done:
                rows.append(done[(key, rep)])
                skipped += 1
                bar.update(1)
                continue
            bar.set_postfix_str(", ".join(f"{k}={v}" for k, v in p.items()) + f" #{rep + 1}")
            hook = None
            if on_start is not None:
                def hook(rl: Relay, ld: Load, p: dict[str, Any] = p, rep: int = rep) -> None:
                    on_start(p, rep, rl, ld)
            labels = {"sweep": name, "point": key, "repeat": rep} | {
                k: v for k, v in p.items() if k in _RUN_GRID}
            result = run(r, lo, hz=hz, perf=perf, procfs=procfs, pin=pin, labels=labels,
                         live=live, control=control, store=False, check=False, on_start=hook,
                         run_id=f"{name}-{key}-r{rep}-{secrets.token_hex(3)}")
            if directory is not None and result.status != "stopped":
                paths.append(_store.save(result, directory, recording))
            rows.append(result.summary.to_dict() | (
                {"path": str(result.path)} if result.path else {}))
            if on_result is not None:
                on_result(result)
            bar.update(1)
    finally:
        bar.close()
    runs = pd.DataFrame(rows)
    if compare is None and "io" in by:
        ios = {p["io"] for p in points}
        if {"epoll", "uring"} <= ios:
            compare = ("io", "epoll", "uring")
    st = summarize(runs, by=by) if not runs.empty else pd.DataFrame()
    cmp = pd.DataFrame()
    if compare is not None and not runs.empty:
        factor, a, b = compare
        cmp = welch(runs, factor=factor, a=a, b=b, by=[k for k in by if k != factor])
    fair = _sweep_fairness(resolved, hz, perf, pin) if by_name else {}
    return SweepResult(name, runs, st, cmp, by, paths, skipped, fairness=fair)


def _relays_by_name(relays: Sequence[RelayUnderTest], points: list[dict[str, Any]]
                    ) -> dict[str, RelayUnderTest]:
    """{relay_name: relay} for sweep(relays=…); ConfigError for an empty or ambiguous list
    or a grid that varies relay settings (those belong in the relays themselves)."""
    if isinstance(relays, RelayConfig | ExternalRelay) or not relays:
        raise ConfigError("relays must be a non-empty list of RelayConfig and ExternalRelay")
    out: dict[str, RelayUnderTest] = {}
    for r in relays:
        if not isinstance(r, RelayConfig | ExternalRelay):
            raise ConfigError(f"relays: {r!r} is neither a RelayConfig nor an ExternalRelay")
        n = relay_name(r)
        if n in out:
            raise ConfigError(f"relays: two relays are named {n!r}; give the external ones "
                              "distinct names")
        out[n] = r
    keys = sorted({k for p in points for k in p} & (_RELAY_GRID | {"relay"}))
    if keys:
        raise ConfigError(f"with relays=…, the grid may not vary {', '.join(keys)}: set "
                          "those in the relays themselves")
    return out


def _sweep_fairness(resolved: list[tuple[dict[str, Any], RelayUnderTest, LoadConfig, str]],
                    hz: float, perf: str | bool, pin: bool) -> dict[str, Any]:
    """What every relay of the sweep shared, and anything that was not equal."""
    relays = {relay_name(r): r for _, r, _, _ in resolved}
    cores = {n: r.workers for n, r in relays.items()}
    unequal = []
    if len(set(cores.values())) > 1:
        unequal.append(f"relay cores differ: {cores}")
    return {
        "relays": {n: relay_settings(r) for n, r in relays.items()},
        "relay_cores": cores,
        "same_for_every_relay": ["load generator (labkit load, native)",
                                 "load config at each point (mode, pairs, size, rate, "
                                 "threads)", "warm-up and window", f"sampler at {hz:g} Hz",
                                 f"perf={perf}", "pinning plan" if pin else "no pinning",
                                 "per-packet basis: packets the load generator received"],
        "unequal": unequal,
    }


def _conclude(result: Result, store: bool | str | os.PathLike[str], control: RunControl,
              check: bool) -> Result:
    """A finished run, local or placed: stored (atomically) if asked, its control told,
    RunFailed raised when check is set and it failed."""
    if store is not False:
        _store.save(result, None if store is True else store)
    control.finished.set()
    if check and result.status == "failed":
        raise RunFailed(result)
    return result
