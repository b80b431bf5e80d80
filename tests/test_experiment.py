"""labkit.lab: statistics against scipy, grids, sweep files, validation, and real runs and sweeps
(short windows so the whole file stays well under a minute)."""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from experiment_helpers import fake_sweep, runs_frame
from scipy import stats as sps

from labkit.config import ConfigError, RelayConfig
from labkit.counters.ticks import TICK_KEYS
from labkit.lab import experiment, stats, store, sweepfile
from labkit.lab.result import RunFailed
from labkit.procs import pinning
from labkit.procs.load import LoadConfig

SHORT = {"duration": 0.5, "warmup": 0.2}


# ---- statistics (no processes) -------------------------------------------------------------


def test_summarize_matches_scipy_t_interval() -> None:
    runs = runs_frame(fake_sweep(repeats=4))
    st = stats.summarize(runs, by=["io", "rate_mbps"])
    row = st[(st["io"] == "uring") & (st["rate_mbps"] == 300)
             & (st["metric"] == "syscalls_per_packet")].iloc[0]
    x = runs[(runs["io"] == "uring") & (runs["rate_mbps"] == 300)]["syscalls_per_packet"]
    x = x.astype(float).to_numpy()
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sps.sem(x))
    assert row["n"] == 4
    assert row["mean"] == pytest.approx(x.mean()) and row["median"] == pytest.approx(
        np.median(x))
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((lo, hi))


def test_summarize_ignores_failed_runs_and_single_runs_have_no_ci() -> None:
    runs = runs_frame(fake_sweep(repeats=1))
    runs.loc[0, "status"] = "failed"
    st = stats.summarize(runs, by=["io", "rate_mbps"], metrics=["mbps"])
    assert st["n"].max() == 1 and st["ci_low"].isna().all()
    assert len(st) == len(runs) - 1


def test_welch_matches_scipy() -> None:
    runs = runs_frame(fake_sweep(repeats=3))
    cmp = stats.welch(runs, factor="io", a="epoll", b="uring", by=["rate_mbps"],
                           metrics=["syscalls_per_packet"])
    assert len(cmp) == 2
    row = cmp[cmp["rate_mbps"] == 100].iloc[0]
    sub = runs[runs["rate_mbps"] == 100]
    a = sub[sub["io"] == "epoll"]["syscalls_per_packet"].astype(float)
    b = sub[sub["io"] == "uring"]["syscalls_per_packet"].astype(float)
    ref = sps.ttest_ind(b, a, equal_var=False)
    assert row["t"] == pytest.approx(ref.statistic) and row["p"] == pytest.approx(ref.pvalue)
    assert row["ratio"] == pytest.approx(b.mean() / a.mean())
    assert row["significant"] == (ref.pvalue < 0.05)


# ---- grids and validation (no processes) ----------------------------------------------------


def test_expand_grid_and_point_configs() -> None:
    pts = experiment.expand_grid({"io": ["epoll", "uring"], "rate_mbps": [1, 2, 3]})
    assert len(pts) == 6 and pts[0] == {"io": "epoll", "rate_mbps": 1}
    r, lo = experiment.point_configs({"io": "uring", "workers": 2, "rate_mbps": 5, "size": 200},
                                     RelayConfig(), LoadConfig(pairs=3), 1.5, 0.25)
    assert (r.io, r.workers, lo.rate_mbps, lo.size, lo.pairs) == ("uring", 2, 5, 200, 3)
    assert (lo.duration, lo.warmup) == (1.5, 0.25)
    key = experiment.point_key(r, lo)
    assert key == experiment.point_key(r.replace(port=1234), lo.replace(port=99))
    assert key != experiment.point_key(r.replace(workers=3), lo)
    with pytest.raises(ConfigError, match="not RelayConfig fields"):
        experiment.point_configs({"colour": "red"}, RelayConfig(), LoadConfig(), 1, 0)
    with pytest.raises(ConfigError, match="non-empty list"):
        experiment.expand_grid({"io": "epoll"})


def test_sweep_validates_every_point_before_running(tmp_path: Path) -> None:
    # the same text RelayConfig.validate() gives, prefixed with the point
    with pytest.raises(ConfigError) as e:
        RelayConfig(io="kqueue").validate()
    with pytest.raises(ConfigError) as e2:
        experiment.sweep({"io": ["epoll", "kqueue"]}, repeats=1, store=tmp_path,
                         progress=False)
    assert str(e.value) in str(e2.value) and "grid point {'io': 'kqueue'}" in str(e2.value)
    with pytest.raises(ConfigError, match="pairs=0 must be"):
        experiment.sweep({"pairs": [0]}, repeats=1, store=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="repeats"):
        experiment.sweep({"io": ["epoll"]}, repeats=0, store=tmp_path, progress=False)
    assert not list(tmp_path.iterdir()), "nothing ran, nothing stored"


def test_run_rejects_bad_config_before_starting_anything() -> None:
    with pytest.raises(ConfigError, match="workers=0"):
        experiment.run(RelayConfig(workers=0), LoadConfig())
    with pytest.raises(ConfigError, match="size=1"):
        experiment.run(RelayConfig(), LoadConfig(size=1))
    with pytest.raises(ConfigError, match="hz="):
        experiment.run(RelayConfig(), LoadConfig(), hz=0)


def test_plan_pinning() -> None:
    assert pinning.plan_pinning(1, [0, 1]) == ((0,), (1,), "relay on CPU 0, load on CPU 1")
    relay, load, note = pinning.plan_pinning(4, [0, 1, 2])
    assert relay == (0, 1) and load == (2,) and "4 relay workers share 2 CPU" in note
    assert pinning.plan_pinning(1, [3])[0] == ()


def test_sweep_toml_errors(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('name = "x"\nbogus = 1\n[grid]\nio = ["epoll"]\n')
    with pytest.raises(ConfigError, match="unknown key.*bogus"):
        sweepfile.sweep_args_from_toml(p)
    p.write_text("[relay]\nio = 'epoll'\n")
    with pytest.raises(ConfigError, match=r"\[grid\] table is required"):
        sweepfile.sweep_args_from_toml(p)
    p.write_text("[load]\nport = 5\n[grid]\nio = ['epoll']\n")
    with pytest.raises(ConfigError, match="follows the relay"):
        sweepfile.sweep_args_from_toml(p)
    p.write_text("[relay]\nflux = 1\n[grid]\nio = ['epoll']\n")
    with pytest.raises(ConfigError, match=r"\[relay\].*flux"):
        sweepfile.sweep_args_from_toml(p)
    kw = sweepfile.sweep_args_from_toml(Path(__file__).parent.parent / "bench"
                                         / "sweep-epoll-vs-uring.toml")
    assert kw["grid"]["io"] == ["epoll", "uring"] and len(kw["grid"]["rate_mbps"]) == 3
    assert kw["repeats"] == 3 and kw["compare"] == ("io", "epoll", "uring")


# ---- real runs --------------------------------------------------------------------------------


def test_run_measures_a_window() -> None:
    ticks: list[dict[str, Any]] = []
    r = experiment.run(RelayConfig(io="uring"), LoadConfig(pairs=2, rate_mbps=100),
                       live=ticks.append, **SHORT)
    s = r.summary
    assert r.ok, r
    assert s["mbps"] == pytest.approx(100, rel=0.15) and s["loss_pct"] < 1
    assert s["offered_mbps"] == pytest.approx(100, rel=0.15)
    assert 0 < s["syscalls_per_packet"] < 10 and s["relay_packets"] > 1000
    assert s["cpu_s_per_gbit"] > 0 and s["ctx_switches_per_kpkt"] >= 0
    assert s["window_s"] == pytest.approx(0.5, abs=0.1)
    assert s["lat_p50_us"] <= s["lat_p99_us"] <= s["lat_max_us"]
    if len(os.sched_getaffinity(0)) >= 2:
        assert s["pinned"] and s["relay_cpus"] != s["load_cpus"]
    else:
        assert not s["pinned"] and "only 1 CPU" in s["pinning"]
    if str(s["perf_source"]).startswith("live"):  # perf counts what the relay counts
        assert s["perf_syscalls_per_packet"] == pytest.approx(s["syscalls_per_packet"],
                                                              rel=0.3, abs=0.05)
    else:
        assert np.isnan(s["perf_syscalls_per_packet"])
    ts = r.timeseries
    assert set(TICK_KEYS) <= set(ts) and (ts["phase"] == "window").sum() >= 3
    assert ticks and set(ticks[0]) == set(TICK_KEYS)
    assert r.meta["pinning"]["note"] == s["pinning"] and r.meta["sources"]["relay"] == "live"
    assert r.meta["relay_config"]["io"] == "uring" and r.meta["git_revision"]


def test_killed_relay_is_a_failed_result_or_an_error() -> None:
    def kill(relay: Any, load: Any) -> None:
        os.kill(relay.pid, signal.SIGKILL)

    r = experiment.run(RelayConfig(), LoadConfig(pairs=1, rate_mbps=50), check=False,
                       on_start=kill, **SHORT)
    assert r.status == "failed" and "relay died" in r.error and "signal 9" in r.error
    with pytest.raises(RunFailed, match="relay died"):
        experiment.run(RelayConfig(), LoadConfig(pairs=1, rate_mbps=50), on_start=kill,
                       **SHORT)


def test_stop_ends_a_run_within_a_second() -> None:
    control = experiment.RunControl()
    pidfds: list[int] = []

    def started(relay: Any, load: Any) -> None:
        pidfds.extend(os.pidfd_open(p) for p in (relay.pid, load.pid))
        control.stop()
        started.at = time.monotonic()  # type: ignore[attr-defined]

    r = experiment.run(RelayConfig(), LoadConfig(pairs=1, rate_mbps=50), duration=30,
                       warmup=0.2, control=control, on_start=started, check=False)
    try:
        for fd in pidfds:  # readable once the process has exited
            assert select.select([fd], [], [], 0)[0], "process still running after stop"
    finally:
        for fd in pidfds:
            os.close(fd)
    assert r.status == "stopped"
    assert time.monotonic() - started.at < 5  # type: ignore[attr-defined]


def test_sweep_records_a_killed_relay_and_goes_on(tmp_path: Path) -> None:
    killed: list[tuple[str, int]] = []

    def on_start(point: dict[str, Any], rep: int, relay: Any, load: Any) -> None:
        if point["io"] == "uring" and rep == 0:
            killed.append((point["io"], rep))
            os.kill(relay.pid, signal.SIGKILL)

    res = experiment.sweep({"io": ["epoll", "uring"]}, repeats=2, name="killtest",
                           load=LoadConfig(pairs=1, rate_mbps=50), store=tmp_path,
                           progress=False, on_start=on_start, **SHORT)
    assert killed == [("uring", 0)]
    assert list(res.runs["io"]) == ["epoll", "uring", "epoll", "uring"], "interleaved"
    assert list(res.runs["status"]) == ["ok", "failed", "ok", "ok"]
    bad = res.failures.iloc[0]
    assert "relay died" in bad["error"] and bad["repeat"] == 0
    files = sorted(tmp_path.iterdir())
    assert len(files) == 4 and all(f.suffix == ".parquet" and not f.name.startswith(".")
                                   for f in files), "one whole file per run, nothing partial"
    stored = store.load(tmp_path)
    assert (stored["status"] == "failed").sum() == 1
    assert stored.loc[stored["status"] == "failed", "stderr_tail"].notna().all()
    # resume: only the failed point runs again
    again = experiment.sweep({"io": ["epoll", "uring"]}, repeats=2, name="killtest",
                             load=LoadConfig(pairs=1, rate_mbps=50), store=tmp_path,
                             progress=False, **SHORT)
    assert again.skipped == 3 and len(again.runs) == 4
    assert (again.runs["status"] == "ok").all()
    assert len(list(tmp_path.iterdir())) == 5
    assert not again.stats.empty and set(again.stats["io"]) == {"epoll", "uring"}
    assert isinstance(again.comparisons, pd.DataFrame) and not again.comparisons.empty
