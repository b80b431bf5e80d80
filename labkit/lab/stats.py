"""The statistics of a set of runs: mean, median and a t-distribution 95 % CI per group
(summarize), and Welch's t-test between two modes (welch). Only runs with status "ok"
count; nothing statistical is computed by hand (scipy.stats).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

# The figures summarize() and welch() look at unless told otherwise (labkit.lab.window).
STAT_METRICS = ("mbps", "pps", "loss_pct", "syscalls_per_packet", "perf_syscalls_per_packet",
                "ctx_switches_per_kpkt", "cpu_s_per_gbit", "relay_cpu_pct", "lat_p50_us",
                "lat_p99_us", "delivered_cpu_s_per_gbit", "delivered_perf_syscalls_per_packet",
                "delivered_ctx_switches_per_packet")


def _ok(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "ok"] if "status" in runs else runs


def summarize(runs: pd.DataFrame, by: Sequence[str] = ("io",),
              metrics: Sequence[str] = STAT_METRICS, confidence: float = 0.95) -> pd.DataFrame:
    """Per group of `by` and metric: n, mean, median, std, sem and the t-distribution CI
    (scipy.stats.t.interval) of the mean. Only runs with status "ok" count. Long form:
    one row per (group, metric)."""
    ok = _ok(runs)
    by = [b for b in by if b in ok.columns]
    metrics = [m for m in metrics if m in ok.columns]
    if ok.empty or not metrics:
        return pd.DataFrame(columns=[*by, "metric", "n", "mean", "median", "std", "sem",
                                     "ci_low", "ci_high"])
    long = ok.melt(id_vars=by, value_vars=metrics, var_name="metric", value_name="value")
    long["value"] = pd.to_numeric(long["value"], errors="coerce")
    long = long.dropna(subset=["value"])
    keys = [*by, "metric"]
    g = long.groupby(keys, dropna=False, sort=True)["value"]
    out = g.agg(n="count", mean="mean", median="median", std="std", sem="sem").reset_index()
    dof = (out["n"] - 1).to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = sps.t.interval(confidence, np.where(dof > 0, dof, np.nan),
                                   loc=out["mean"].to_numpy(dtype=float),
                                   scale=out["sem"].to_numpy(dtype=float))
    out["ci_low"], out["ci_high"] = low, high
    # a zero-spread sample has a zero-width interval, not an unknown one
    flat = (out["n"] > 1) & (out["sem"] == 0)
    out.loc[flat, "ci_low"] = out.loc[flat, "mean"]
    out.loc[flat, "ci_high"] = out.loc[flat, "mean"]
    return out


def welch(runs: pd.DataFrame, factor: str = "io", a: Any = "epoll", b: Any = "uring",
          by: Sequence[str] = (), metrics: Sequence[str] = STAT_METRICS) -> pd.DataFrame:
    """Welch's t-test (scipy.stats.ttest_ind, equal_var=False) of `b` against `a` on
    `factor`, per group of `by` and metric: means, their difference and ratio, t and p."""
    ok = _ok(runs)
    by = [k for k in by if k in ok.columns and k != factor]
    metrics = [m for m in metrics if m in ok.columns]
    rows = []
    if ok.empty or factor not in ok:
        return pd.DataFrame()
    groups = ok.groupby(by, dropna=False, sort=True) if by else [((), ok)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for m in metrics:
            xa = pd.to_numeric(g.loc[g[factor] == a, m], errors="coerce").dropna()
            xb = pd.to_numeric(g.loc[g[factor] == b, m], errors="coerce").dropna()
            t = p = float("nan")
            if len(xa) >= 2 and len(xb) >= 2:
                with np.errstate(invalid="ignore", divide="ignore"):
                    res = sps.ttest_ind(xb, xa, equal_var=False)
                t, p = float(res.statistic), float(res.pvalue)
            ma = float(xa.mean()) if len(xa) else float("nan")
            mb = float(xb.mean()) if len(xb) else float("nan")
            rows.append(dict(zip(by, key, strict=True)) | {
                "metric": m, "factor": factor, "a": a, "b": b, "n_a": len(xa), "n_b": len(xb),
                "mean_a": ma, "mean_b": mb, "diff": mb - ma,
                "ratio": mb / ma if ma else float("nan"), "t": t, "p": p,
                "significant": bool(p < 0.05) if not math.isnan(p) else False,
            })
    return pd.DataFrame(rows)
