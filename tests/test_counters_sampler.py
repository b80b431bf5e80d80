"""The one sampler: rows at ~10 Hz with every key, on a drift-free clock, sources
labelled, live figures that agree with the load generator's (issue 5)."""

from __future__ import annotations

import math
import statistics
import threading

import pytest
from counters_helpers import wait_for

from labkit import Relay, RelayConfig
from labkit.counters import perf as perfmod
from labkit.counters.perf import PerfStatus
from labkit.counters.sampler import Sampler
from labkit.counters.ticks import TICK_KEYS
from labkit.procs.load import Load, LoadConfig

EXPECTED_KEYS = {"t", "mbps", "pps", "syscalls_per_s", "perf_syscalls_per_s",
                 "ctx_switches_per_s", "relay_cpu_pct", "load_cpu_pct", "drops_per_s",
                 "load_mbps"}


def test_rate_keys_are_the_published_contract() -> None:
    assert set(TICK_KEYS) == EXPECTED_KEYS and len(TICK_KEYS) == len(EXPECTED_KEYS)


def test_sampler_under_load_at_10hz() -> None:
    live: list[dict[str, float]] = []
    threads: set[str] = set()

    def on_tick(row: dict[str, float]) -> None:
        threads.add(threading.current_thread().name)
        live.append(row)

    with Relay(RelayConfig(io="epoll", workers=1)) as relay:
        sampler = Sampler(relay=relay, hz=10, run_id="t1", labels={"io": "epoll"})
        sampler.subscribe(on_tick)
        with sampler:
            cfg = LoadConfig.for_relay(relay, pairs=2, size=1400, rate_mbps=200, duration=2.0,
                                       warmup=0.2)
            with Load(cfg) as load:
                sampler.attach_load(load)
                load.wait()
            wait_for(lambda: len(live), lambda n: n >= 30, 5.0, "30 ticks")
    df = sampler.ticks()
    assert threads == {"labkit-sampler-t1"}
    assert all(set(row) == EXPECTED_KEYS for row in live)
    assert list(df.columns[: len(TICK_KEYS) + 2]) == [*TICK_KEYS, "run_id", "io"]
    assert (df["run_id"] == "t1").all() and (df["io"] == "epoll").all()
    for prefix in ("relay.", "load.", "proc.relay.", "proc.load."):
        assert any(c.startswith(prefix) for c in df.columns), prefix
    # sources: each live, or a reason
    assert sampler.sources["relay"] == "live" and sampler.sources["load"] == "live"
    assert sampler.sources["proc.relay"] == "live"
    if perfmod.perf_status().ok:
        assert sampler.sources["perf"].startswith("live")
        assert any(c.startswith("perf.") for c in df.columns)
    else:
        assert sampler.sources["perf"].startswith("unavailable: ")
    # ~10 Hz on a monotonic schedule: the k-th tick lands near k/10 s, whatever came before
    t = df["t"].to_numpy()
    gaps = t[1:-1] - t[:-2]  # the last row is stop()'s own tick
    assert statistics.median(gaps) == pytest.approx(0.1, abs=0.005)
    # no drift: a tick's lateness does not accumulate (a busy machine may delay single
    # ticks, but the k-th tick still aims at k/10 s)
    late = t[:-1] - (t[:-1] * 10).round() / 10
    quarter = len(late) // 4
    assert statistics.median(abs(late)) < 0.01, late
    assert statistics.median(late[-quarter:]) < statistics.median(late[:quarter]) + 0.01, late
    assert sampler.late_ticks <= 3
    assert sampler.tick_seconds / len(df) < 0.01, "a tick costs more than 10 ms"
    # live figures during the measured part of the run agree with each other
    busy = df[df["load_mbps"] > 150]
    assert len(busy) >= 12, df[["t", "mbps", "load_mbps"]]
    assert busy["mbps"].median() == pytest.approx(200, rel=0.1)
    assert busy["load_mbps"].median() == pytest.approx(busy["mbps"].median(), rel=0.05)
    assert busy["pps"].median() == pytest.approx(200e6 / 8 / 1400, rel=0.1)
    assert (busy["syscalls_per_s"] > busy["pps"]).all()  # at least one write per packet
    assert (busy["relay_cpu_pct"] > 0).all()
    # (the load's last busy tick may fall after it exited: its final CPU is not seen)
    assert (busy["load_cpu_pct"].iloc[:-1] > 0).all()
    # nanosecond CPU time, not 10 ms ticks: not every figure a multiple of 10 %
    assert (busy["load_cpu_pct"].round(3) % 10 != 0).any()
    assert (busy["ctx_switches_per_s"] > 0).all() and (busy["drops_per_s"] == 0).all()
    if sampler.perf is not None:
        ratio = busy["perf_syscalls_per_s"].median() / busy["syscalls_per_s"].median()
        assert ratio == pytest.approx(1.0, rel=0.1)
    # cumulative columns never go backwards
    for col in ("relay.packets_forwarded", "relay.sys_write", "proc.relay.cpu_s"):
        assert df[col].is_monotonic_increasing, col
    assert not sampler.errors


def test_sampler_without_perf_or_load_labels_its_fallbacks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(perfmod, "perf_status",
                        lambda: PerfStatus(False, "perf is not installed", "apt-get it"))
    got: list[dict[str, float]] = []
    with Relay(RelayConfig(io="epoll")) as relay:
        with Sampler(relay=relay, hz=20, perf="auto") as sampler:
            sampler.subscribe(got.append)
            wait_for(lambda: len(got), lambda n: n >= 5, 5.0, "5 ticks")
        with pytest.raises(perfmod.PerfUnavailable, match="not installed"):
            Sampler(relay=relay, perf=True).start()
        off = Sampler(relay=relay, perf=False)
    assert sampler.sources["perf"] == "unavailable: perf is not installed (fix: apt-get it)"
    assert sampler.sources["load"] == "no load given"
    assert off.sources == {}  # nothing opened before start()
    for row in got:
        assert math.isnan(row["perf_syscalls_per_s"]) and math.isnan(row["load_mbps"])
        assert math.isnan(row["load_cpu_pct"]) and row["mbps"] == 0.0


def test_labels_cannot_shadow_columns() -> None:
    with pytest.raises(ValueError, match="clash"):
        Sampler(labels={"mbps": 1})
    with pytest.raises(ValueError, match="hz"):
        Sampler(hz=0)
