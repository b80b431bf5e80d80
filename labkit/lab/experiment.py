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
from labkit.procs.load import Load, LoadConfig, LoadError
from labkit.procs.relay import Relay, RelayError

# RelayConfig fields a summary row carries (tidy columns a sweep can group by).
_RELAY_COLUMNS = ("io", "tls", "workers", *SWITCHES, "pin_cpus", "queue_depth",
                  "pool_packets", "max_conns", "write_timeout")
# LoadConfig fields as summary columns (renamed where a RelayConfig field has the name).
_LOAD_COLUMNS = {"mode": "load_mode", "pairs": "pairs", "size": "size",
                 "rate_mbps": "rate_mbps", "threads": "load_threads",
                 "pin_cpus": "load_pin_cpus", "first_cpu": "load_first_cpu",
                 "sender": "load_sender"}
# LoadConfig fields a grid may vary (host/port/TLS follow the relay).
_LOAD_GRID = {"mode", "pairs", "size", "rate_mbps", "threads", "sender"}
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


def _config_columns(relay_cfg: RelayConfig, load_cfg: LoadConfig) -> dict[str, Any]:
    r = relay_cfg.to_dict()
    cols: dict[str, Any] = {k: r[k] for k in _RELAY_COLUMNS}
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


def check_run(relay: RelayConfig, load: LoadConfig, *, hz: float = 10.0,
              store: bool | str | os.PathLike[str] = False) -> None:
    """Everything run() checks before it starts anything: ConfigError for the configs and
    hz, StoreError for a store it may not write to."""
    problems = []
    for cfg in (relay, load.replace(port=load.port or 1)):
        try:
            cfg.validate()
        except ConfigError as e:
            problems += e.problems
    if not (isinstance(hz, int | float) and not isinstance(hz, bool) and 0 < hz <= 100):
        problems.append(Problem("hz", hz, "must be samples per second, 0 < hz <= 100"))
    raise_if(problems, "run")
    if store is not False:
        _store.check_writable(_store.default_dir() if store is True else store)


def _for_relay(template: LoadConfig, relay: Relay) -> LoadConfig:
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


def _tail(text: str, lines: int = 40) -> str:
    return "".join(text.splitlines(keepends=True)[-lines:])


def run(relay: RelayConfig | None = None, load: LoadConfig | None = None, *,
        duration: float | None = None, warmup: float | None = None, hz: float = 10.0,
        perf: str | bool = "auto", procfs: bool = True, pin: bool = True,
        labels: Mapping[str, Any] | None = None, live: Any = None,
        control: RunControl | None = None, store: bool | str | os.PathLike[str] = False,
        check: bool = True, run_id: str | None = None,
        on_start: Callable[[Relay, Load], None] | None = None,
        start_timeout: float = 10.0, stop_grace: float = STOP_GRACE) -> Result:
    """Run the relay and the load generator once and measure.

    duration/warmup override the LoadConfig's. live: a plots.LivePanel (or any callable)
    fed every sampler tick. control: a RunControl to stop the run from another thread.
    store: True (your store, labkit.lab.store.default_dir()) or a directory to save the Result
    there. check: raise RunFailed when the run fails (else return it with status "failed").
    on_start(relay, load) is called once both processes run (tests use it to kill one).

    ConfigError (before any process starts) for an invalid config; StoreError (before
    too) when `store` names the recorded reference folder.
    """
    relay_cfg = relay or RelayConfig()
    load_cfg = load or LoadConfig()
    if duration is not None:
        load_cfg = load_cfg.replace(duration=duration)
    if warmup is not None:
        load_cfg = load_cfg.replace(warmup=warmup)
    check_run(relay_cfg, load_cfg, hz=hz, store=store)
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
    the_relay = Relay(relay_cfg, start_timeout=start_timeout, stop_grace=stop_grace)
    the_load: Load | None = None
    subscriber = _subscriber(live)
    pump = getattr(live, "pump", None)

    def fail(error: str, tail: str) -> None:
        if info["status"] == "ok":
            info.update(status="failed", error=error, stderr_tail=_tail(tail))

    try:
        control.phase = "starting"
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
            s0 = window.snapshot(the_relay, relay_proc, load_proc)
            control.phase = "window"
            event = waiter.until(we)
        if event is None:
            s1 = window.snapshot(the_relay, relay_proc, load_proc)
            control.phase = "drain"
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
    if figures and not ticks.empty:
        figures["perf_syscalls_per_packet"] = window.perf_per_packet(
            ticks, t0, ws, we, int(figures["relay_packets"]))
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
    }
    result = Result(pd.Series(summary, dtype=object), ticks, meta)
    if store is not False:
        _store.save(result, None if store is True else store)
    control.finished.set()
    if check and result.status == "failed":
        raise RunFailed(result)
    return result


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
          recording: bool = False) -> SweepResult:
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
    if not points:
        raise ConfigError("the grid has no points")
    resolved = []
    for p in points:
        try:
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
    return SweepResult(name, runs, st, cmp, by, paths, skipped)
