"""One background sampler: shared-memory counters, /proc and perf on one timeline.

    with Sampler(relay=relay, load=load, hz=10, run_id="r1", labels={"io": "uring"}) as s:
        s.subscribe(lambda row: print(row["mbps"]))     # live plots
        load.wait()
    s.ticks()      # DataFrame: one row per tick (rates + cumulative raw columns)
    s.sources      # {"relay": "live", "perf": "unavailable: ... (fix: ...)", ...}

Ticks run on a monotonic schedule (tick k at start + k/hz; a late tick does not shift the
ones after it, and a tick missed entirely is counted in `late_ticks`). `t` is seconds
since start(). Rates are differences of cumulative counters over the actual time between
two ticks, so a late tick does not distort them.

Every tick calls each subscriber from the sampler thread with exactly TICK_KEYS (declared,
with units and derivations, in labkit.counters.ticks). A source that cannot run (perf not
permitted, a process gone) is labelled in `sources` and its figures are NaN; the other
sources go on.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pandas as pd

from labkit.counters import kinds
from labkit.counters.procfs import ProcThreads, ProcTotals
from labkit.counters.ticks import TICK_KEYS, TICKS

PERF_SYSCALLS = "raw_syscalls:sys_enter"
NAN = math.nan

Subscriber = Callable[[dict[str, float]], None]


class _ShmSource:
    """A private ShmCounters view (the Relay's own is not shared across threads)."""

    def __init__(self, owner: Any, what: str) -> None:
        from labkit.counters.shm import ShmCounters

        self.what = what
        self.shm = ShmCounters(owner.shm_name)
        self.last_rows: list[dict[str, Any]] = []
        self.last: dict[str, int] = {}

    def read(self) -> dict[str, int]:
        self.last_rows = self.shm.snapshot()
        self.last = kinds.sum_slots(self.last_rows)
        return self.last

    def close(self) -> None:
        self.shm.close()


class Sampler:
    """Samples a relay and/or a load generator at `hz` in one background thread.

    perf: True (required: PerfUnavailable if it cannot run), False (off) or "auto" (use
    it where perf_status() allows, else say why in `sources`). perf counts the relay's
    own threads (data workers + acceptor, from the shm tids), so perf_syscalls_per_s is
    directly comparable with syscalls_per_s. procfs: sample /proc for CPU and context
    switches. labels: extra columns on every row (e.g. {"io": "uring"}).
    """

    def __init__(self, relay: Any = None, load: Any = None, hz: float = 10.0,
                 run_id: str | None = None, labels: dict[str, Any] | None = None,
                 perf: bool | str = "auto", procfs: bool = True,
                 perf_interval_ms: int | None = None) -> None:
        if not 0 < hz <= 1000:
            raise ValueError(f"hz={hz!r} must be in (0, 1000]")
        if perf not in (True, False, "auto"):
            raise ValueError(f"perf={perf!r} must be True, False or 'auto'")
        self.relay = relay
        self.load = load
        self.hz = float(hz)
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.labels = dict(labels or {})
        clash = set(self.labels) & ({"run_id", *TICK_KEYS})
        if clash or any(k.startswith(("relay.", "load.", "proc.", "perf.")) for k in self.labels):
            raise ValueError(f"labels {sorted(self.labels)} clash with the sampler's columns")
        self.perf_mode = perf
        self.procfs = procfs
        self.perf_interval_ms = perf_interval_ms or max(100, int(round(1000 / self.hz)))
        self.sources: dict[str, str] = {}
        self.late_ticks = 0
        self.tick_seconds = 0.0  # time spent inside ticks, in total (the sampler's cost)
        self._subscribers: list[Subscriber] = []
        self._rows: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._relay_shm: _ShmSource | None = None
        self._load_shm: _ShmSource | None = None
        self._relay_proc: ProcThreads | None = None
        self._load_proc: ProcThreads | None = None
        self._perf: Any = None
        self._worker_tids: list[int] = []
        self._prev: dict[str, float] = {}
        self._t0 = 0.0
        self._prev_t = 0.0
        self.errors: list[str] = []

    # ---- lifecycle -------------------------------------------------------------------

    def start(self) -> Sampler:
        if self._thread is not None:
            raise RuntimeError("this Sampler was already started; make a new one")
        self._open_relay()
        if self._load_shm is None:  # attach_load() may have opened it already
            self._open_load(self.load)
        self._open_perf()
        self._t0 = time.monotonic()
        self._prev_t = 0.0
        self._prev = self._read_cumulative()
        self._thread = threading.Thread(target=self._run, name=f"labkit-sampler-{self.run_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop ticking (after one last tick), stop perf, release the mappings."""
        if self._thread is None or self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(10.0)
        if self._perf is not None:
            self._perf.stop()
        for src in (self._relay_shm, self._load_shm):
            if src is not None:
                src.close()

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call `callback(row)` once per tick from the sampler thread, row having exactly
        TICK_KEYS. Keep it short: it runs on the sampler's clock. Returns an unsubscribe
        function."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def attach_load(self, load: Any) -> None:
        """Sample a (new) load generator from the next tick on: one sampler can span
        several load runs against one relay."""
        with self._lock:
            old = self._load_shm
            self.load = load
            self._open_load(load)
            # its counters start from zero: rates restart from its current values
            for key in [k for k in self._prev if k.startswith(("load.", "proc.load."))]:
                del self._prev[key]
            if old is not None and old is not self._load_shm:
                old.close()

    # ---- sources ---------------------------------------------------------------------

    def _open_relay(self) -> None:
        from labkit.counters.shm import CounterLayoutError

        if self.relay is None:
            self.sources["relay"] = "no relay given"
            self.sources["proc.relay"] = "no relay given"
            return
        if getattr(self.relay, "shm_name", None) is None:
            # an external relay (labkit.procs.external): its figures come from /proc and perf
            self.sources["relay"] = ("not available for this relay: it has no labkit "
                                     "shared-memory counters")
        else:
            try:
                self._relay_shm = _ShmSource(self.relay, "relay")
                self.sources["relay"] = "live"
            except CounterLayoutError as e:
                self.sources["relay"] = f"unavailable: {e}"
        if self.procfs:
            self._relay_proc = ProcThreads(self.relay.pid)
            self._relay_proc.sample()
            self.sources["proc.relay"] = ("live" if not self._relay_proc.last.gone
                                          else f"unavailable: pid {self.relay.pid} has exited")
        else:
            self.sources["proc.relay"] = "off (procfs=False)"
        if self._relay_shm is not None:
            deadline = time.monotonic() + 2.0
            while True:  # a worker publishes its tid with its first loop pass
                rows = self._relay_shm.shm.snapshot()
                self._worker_tids = [int(r["tid"]) for r in rows]
                if all(self._worker_tids) or time.monotonic() > deadline:
                    break
                time.sleep(0.01)
            self._worker_tids = [t for t in self._worker_tids if t]

    def _open_load(self, load: Any) -> None:
        from labkit.counters.shm import CounterLayoutError

        self._load_shm = None
        self._load_proc = None
        if load is None:
            self.sources["load"] = "no load given"
            self.sources["proc.load"] = "no load given"
            return
        try:
            self._load_shm = _ShmSource(load, "load")
            self.sources["load"] = "live"
        except (CounterLayoutError, KeyError) as e:
            self.sources["load"] = f"unavailable: {e}"
        if self.procfs:
            self._load_proc = ProcThreads(load.pid)
            self._load_proc.sample()
            self.sources["proc.load"] = "live"
        else:
            self.sources["proc.load"] = "off (procfs=False)"

    def _open_perf(self) -> None:
        from labkit.counters.perf import PerfStat, PerfUnavailable, perf_status

        if self.perf_mode is False:
            self.sources["perf"] = "off (perf=False)"
            return
        if self.relay is None:
            self.sources["perf"] = "no relay to attach to"
            return
        status = perf_status()
        if not status.ok:
            msg = f"unavailable: {status.reason} (fix: {status.fix})"
            if self.perf_mode is True:
                raise PerfUnavailable(msg)
            self.sources["perf"] = msg
            return
        if self._worker_tids:
            perf = PerfStat(tids=self._worker_tids, interval_ms=self.perf_interval_ms)
            what = f"relay threads {self._worker_tids} (workers + acceptor)"
        else:
            perf = PerfStat(pid=self.relay.pid, interval_ms=self.perf_interval_ms)
            what = f"relay pid {self.relay.pid} (worker tids unknown: host threads included)"
        try:
            perf.start()
        except PerfUnavailable as e:
            if self.perf_mode is True:
                raise
            self.sources["perf"] = f"unavailable: {e}"
            return
        self._perf = perf
        self.sources["perf"] = f"live: perf stat -I {self.perf_interval_ms} on {what}"

    # ---- ticking ---------------------------------------------------------------------

    def _run(self) -> None:
        period = 1.0 / self.hz
        k = 1
        while True:
            target = self._t0 + k * period
            if self._stop.wait(max(0.0, target - time.monotonic())):
                break
            self._tick_safely()
            k += 1
            due = int((time.monotonic() - self._t0) / period) + 1
            if due > k:  # a tick took longer than a period: skip, do not drift
                self.late_ticks += due - k
                k = due
        if time.monotonic() - self._t0 - self._prev_t > 0.5 * period:
            self._tick_safely()  # the last values up to stop()

    def _tick_safely(self) -> None:
        begin = time.monotonic()
        try:
            self._tick(begin)
        except Exception as e:  # keep sampling; the error is kept for the caller
            if len(self.errors) < 100:
                self.errors.append(repr(e))
        self.tick_seconds += time.monotonic() - begin

    def _read_cumulative(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self._relay_shm is not None:
            for k, v in self._relay_shm.read().items():
                out[f"relay.{k}"] = v
        if self._load_shm is not None:
            for k, v in self._load_shm.read().items():
                out[f"load.{k}"] = v
        for name, proc in (("relay", self._relay_proc), ("load", self._load_proc)):
            if proc is None:
                continue
            sample = proc.sample()
            _put_totals(out, f"proc.{name}", sample.total)
            out[f"proc.{name}.gone"] = float(sample.gone)
            if name == "relay" and self._worker_tids:
                _put_totals(out, "proc.relay_threads", proc.threads_total(self._worker_tids))
        if self._perf is not None:
            for k, v in self._perf.totals().items():
                out[f"perf.{k}"] = v
        return out

    def _tick(self, now: float) -> None:
        with self._lock:
            cur = self._read_cumulative()
            t = now - self._t0
            dt = t - self._prev_t
            prev = self._prev

            def rate(key: str) -> float:
                if key not in cur or key not in prev or dt <= 0:
                    return NAN
                return (cur[key] - prev[key]) / dt

            def rate_sum(group: str) -> float:
                relay = [k.removeprefix("relay.") for k in cur if k.startswith("relay.")]
                keys = kinds.in_group(relay, group) if relay else []
                if not keys:
                    return NAN
                return sum(rate(f"relay.{k}") for k in keys)

            own = {"t": t, "perf_syscalls_per_s": self._perf_rate()}  # the table derives no other
            row: dict[str, float] = {}
            for m in TICKS:
                if m.rate_of:
                    row[m.name] = rate(m.rate_of) * m.scale
                elif m.group:
                    row[m.name] = rate_sum(m.group)
                else:
                    row[m.name] = own[m.name]
            self._prev, self._prev_t = cur, t
            full: dict[str, Any] = dict(row)
            full["run_id"] = self.run_id
            full.update(self.labels)
            full.update(cur)
            self._rows.append(full)
            subscribers = list(self._subscribers)
        for cb in subscribers:
            try:
                cb(dict(row))
            except Exception as e:  # a broken plot must not stop the sampler
                if len(self.errors) < 100:
                    self.errors.append(f"subscriber {cb!r}: {e!r}")

    def _perf_rate(self) -> float:
        if self._perf is None:
            return NAN
        _, rates = self._perf.rates()
        return rates.get(PERF_SYSCALLS, NAN)

    # ---- results ---------------------------------------------------------------------

    def ticks(self) -> pd.DataFrame:
        """One row per tick: TICK_KEYS, run_id, the labels, then cumulative raw columns
        (relay.*, load.*, proc.*, perf.*)."""
        with self._lock:
            rows = list(self._rows)
        front = [*TICK_KEYS, "run_id", *self.labels]
        df = pd.DataFrame(rows)
        if df.empty:
            return pd.DataFrame(columns=front)
        rest = sorted(c for c in df.columns if c not in front)
        return df[[c for c in front if c in df.columns] + rest]

    def latest(self) -> dict[str, float] | None:
        """The last tick's TICK_KEYS (None before the first)."""
        with self._lock:
            if not self._rows:
                return None
            return {k: self._rows[-1][k] for k in TICK_KEYS}

    def rows_since(self, n: int) -> list[dict[str, Any]]:
        """Full rows (TICK_KEYS, labels, cumulative columns) from the n-th tick on: what
        a host streams to the notebook (labkit.hosts.cluster)."""
        with self._lock:
            return [dict(r) for r in self._rows[n:]]

    @property
    def started_monotonic(self) -> float:
        """time.monotonic() at start(): where `t` counts from."""
        return self._t0

    @property
    def perf(self) -> Any:
        """The PerfStat behind perf.* columns (None when perf is off or unavailable)."""
        return self._perf

    def __repr__(self) -> str:
        state = "running" if self._thread and not self._stop.is_set() else "stopped"
        return (f"Sampler(run_id={self.run_id!r}, {self.hz:g} Hz, {len(self._rows)} ticks, "
                f"{state}, sources={self.sources})")


def _put_totals(out: dict[str, float], prefix: str, tot: ProcTotals) -> None:
    out[f"{prefix}.voluntary"] = tot.voluntary
    out[f"{prefix}.involuntary"] = tot.involuntary
    out[f"{prefix}.ctx_switches"] = tot.ctx_switches
    out[f"{prefix}.utime_s"] = tot.utime_s
    out[f"{prefix}.stime_s"] = tot.stime_s
    out[f"{prefix}.cpu_s"] = tot.cpu_s
    out[f"{prefix}.threads"] = tot.threads
