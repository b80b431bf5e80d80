"""Synthetic results for the store, plot and report tests: no processes, deterministic."""

from __future__ import annotations

import numpy as np
import pandas as pd

from labkit.config import RelayConfig
from labkit.counters.ticks import TICK_KEYS
from labkit.lab import store
from labkit.lab.result import Result
from labkit.lab.window import FIGURES
from labkit.procs.load import LoadConfig


def fake_result(io: str = "epoll", rate: float = 100.0, repeat: int = 0, seed: int = 0,
                status: str = "ok", workers: int = 1, ticks: int = 20,
                sweep: str = "fake") -> Result:
    """A Result shaped like experiment.run()'s, with plausible numbers."""
    rng = np.random.default_rng(seed)
    uring = io == "uring"
    mbps = rate * (0.99 + 0.01 * rng.random())
    spp = (0.4 if uring else 1.6) * (1 + 0.05 * rng.standard_normal())
    lat = np.array([20, 60, 200, 900, 2000]) * (0.8 if uring else 1.0) * (1 + 0.1 * rng.random())
    summary: dict = {
        "run_id": f"{sweep}-{io}-{rate:g}-w{workers}-r{repeat}-{seed}",
        "status": status, "error": None if status == "ok" else "the relay died mid-run "
        "(killed by signal 9)", "stderr_tail": None if status == "ok" else "relay: boom\n",
        "started_at": "2026-01-01T00:00:00+00:00", "io": io, "tls": "off", "workers": workers,
        "rate_mbps": rate, "size": 1400, "pairs": 4, "duration": 2.0, "warmup": 0.5,
        "sweep": sweep, "point": f"{io}{rate:g}w{workers}", "repeat": repeat,
        "pinned": True, "pinning": "relay on CPU 0, load on CPU 1",
    }
    for k in FIGURES:
        summary[k] = float("nan")
    if status == "ok":
        summary |= {
            "offered_mbps": rate, "mbps": mbps, "pps": mbps * 1e6 / 8 / 1400,
            "loss_pct": max(0.0, (rate - mbps) / rate * 100), "syscalls_per_packet": spp,
            "perf_syscalls_per_packet": spp * 1.02,
            "ctx_switches_per_kpkt": 100 * spp, "cpu_s_per_gbit": spp * 0.8,
            "relay_cpu_pct": mbps / 10, "drops": 0,
            "lat_min_us": lat[0] / 2, "lat_p50_us": lat[0], "lat_p90_us": lat[1],
            "lat_p99_us": lat[2], "lat_p999_us": lat[3], "lat_max_us": lat[4],
        }
    t = np.arange(1, ticks + 1) / 10
    ts = pd.DataFrame({k: rng.random(ticks) * 100 for k in TICK_KEYS})
    ts["t"] = t
    ts["mbps"] = np.where(t > 0.3, mbps, mbps * t / 0.3)
    ts["phase"] = np.where(t < 0.5, "warmup", "window")
    ts["relay.packets_forwarded"] = np.cumsum(rng.integers(100, 200, ticks))
    meta = store.provenance() | {
        "run_id": summary["run_id"],
        "relay_config": RelayConfig(io=io, workers=workers).to_dict(),
        "load_config": LoadConfig(rate_mbps=rate).to_dict(),
        "sources": {"relay": "live", "perf": "unavailable: test"},
        "capabilities": {"io_uring": {"ok": True, "detail": "works", "todo": ""}},
    }
    return Result(pd.Series(summary, dtype=object), ts, meta)


def fake_sweep(ios: tuple[str, ...] = ("epoll", "uring"), rates: tuple[float, ...] = (100, 300),
               repeats: int = 3, workers: tuple[int, ...] = (1,)) -> list[Result]:
    out = []
    seed = 0
    for rep in range(repeats):
        for w in workers:
            for rate in rates:
                for io in ios:
                    seed += 1
                    out.append(fake_result(io, rate, rep, seed, workers=w))
    return out


def runs_frame(results: list[Result]) -> pd.DataFrame:
    return pd.DataFrame([r.summary.to_dict() for r in results])
