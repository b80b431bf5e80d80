"""The statistics of a set of runs: mean, median and a t-distribution 95 % CI per group
(summarize; a lower bound below zero is cut at 0, since no figure here can be negative),
Welch's t-test between two modes (welch), and the CI of a ratio of means on the log scale
(ratio_ci). Only runs with status "ok" count; the distributions are scipy.stats'.
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
                                     "ci_low", "ci_high", "ci_clipped"])
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
    # Every figure here is a count, rate, share or time: none can be negative. A skewed
    # sample (one slow repeat) gives a symmetric t-interval reaching below zero; its lower
    # bound is cut at 0 and the row says so (ci_clipped), never shown as "−1,766 µs".
    nonneg = g.min().reset_index(drop=True) >= 0
    clip = nonneg & (out["ci_low"] < 0)
    out["ci_clipped"] = clip.to_numpy()
    out.loc[clip.to_numpy(), "ci_low"] = 0.0
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


def ratio_ci(a: Sequence[float], b: Sequence[float],
             confidence: float = 0.95) -> tuple[float, float, float]:
    """mean(b) / mean(a) and its CI, computed on the log scale (delta method: the variance
    of log(mean) is sem² / mean², with Welch–Satterthwaite degrees of freedom), so the
    interval of a ratio of positive quantities is positive and multiplicatively symmetric.
    NaN bounds with fewer than 2 values on a side or a non-positive mean."""
    xa = np.asarray(pd.to_numeric(pd.Series(a), errors="coerce").dropna(), dtype=float)
    xb = np.asarray(pd.to_numeric(pd.Series(b), errors="coerce").dropna(), dtype=float)
    nan = float("nan")
    if not len(xa) or not len(xb):
        return nan, nan, nan
    ma, mb = float(xa.mean()), float(xb.mean())
    r = mb / ma if ma else nan
    if len(xa) < 2 or len(xb) < 2 or ma <= 0 or mb <= 0:
        return r, nan, nan
    va = float(xa.var(ddof=1)) / len(xa) / ma**2
    vb = float(xb.var(ddof=1)) / len(xb) / mb**2
    if va + vb == 0:
        return r, r, r
    dof = (va + vb) ** 2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    half = float(sps.t.ppf(0.5 + confidence / 2, dof)) * math.sqrt(va + vb)
    return r, r * math.exp(-half), r * math.exp(half)

