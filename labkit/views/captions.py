"""Sentences that state a result, computed from the runs they describe.

A notebook's fixed prose explains a mechanism; every sentence that states a measured
outcome (a ratio, a direction, "X beats Y", "CPU follows syscalls") comes from here, with
its numbers, its uncertainty and its verdict against what the mechanism predicts:

- compare(): b against a on one figure: the ratio of means with a 95 % CI (on the log
  scale, labkit.lab.stats.ratio_ci), Welch's p, and whether this machine agrees with the
  expected direction, disagrees (then the likely reason and the what-if that tests it), or
  cannot tell (not significant);
- follows(): does one figure rise with another across groups (Spearman's rank
  correlation, with p);
- extremes(): which group measured lowest and highest on a figure;
- headroom(): did the relay keep up with the offered load, and how busy was it (the
  likely reason a CPU claim does not hold at a paced rate);
- share_vs(): a measured share against a predicted one (notebook 05's cross-shard share);
- pays_from(): compare() at each offered rate, and from which rate on b is cheaper (the
  efficiency curve's conclusion).

Every number is written by labkit.views.fmt. A Conclusion prints as its text and renders
as a short paragraph in a notebook.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats as sps

from labkit.lab.stats import ratio_ci, welch
from labkit.lab.window import FIGURES
from labkit.views import fmt

Direction = Literal["lower", "higher"]
Verdict = Literal["agrees", "disagrees", "not significant", "no data", "measured"]
ALPHA = 0.05


@dataclass(frozen=True)
class Expect:
    """What the mechanism predicts for b against a, and what to say if this machine
    disagrees: the likely reason (computed from the run where it can be, see headroom())
    and the what-if that would test it."""

    direction: Direction
    story: str
    reason: str = ""
    what_if: str = ""


@dataclass(frozen=True)
class Conclusion:
    """One measured claim: its verdict and the sentence that states it."""

    verdict: Verdict
    text: str
    ratio: float = float("nan")
    ratio_low: float = float("nan")
    ratio_high: float = float("nan")
    p: float = float("nan")

    @property
    def disagrees(self) -> bool:
        return self.verdict == "disagrees"

    def __str__(self) -> str:
        return self.text

    def _repr_html_(self) -> str:
        colour = {"disagrees": "#b00020", "not significant": "#8a6d00"}.get(self.verdict,
                                                                             "#1b5e20")
        return (f'<p class="labkit-conclusion" style="max-width:820px;font-size:13.5px">'
                f'<b style="color:{colour}">Measured ({html.escape(self.verdict)}):</b> '
                f"{html.escape(self.text)}</p>")


def _ok(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["status"] == "ok"] if "status" in runs else runs


def _what(metric: str) -> tuple[str, str]:
    return FIGURES.get(metric, (metric.replace("_", " "), ""))


def _values(runs: pd.DataFrame, factor: str, level: object, metric: str) -> pd.Series:
    sub = runs.loc[runs[factor] == level, metric] if metric in runs else pd.Series([])
    return pd.to_numeric(sub, errors="coerce").dropna()


def compare(runs: pd.DataFrame, metric: str, a: object, b: object, factor: str = "io",
            label_a: str | None = None, label_b: str | None = None,
            expect: Expect | None = None) -> Conclusion:
    """b against a on `metric` over the ok runs, as one sentence with its numbers.

    Verdicts: "no data" (a side has no value), "not significant" (Welch p >= 0.05, or
    fewer than 2 runs a side: the sentence says this run cannot tell), "agrees" or
    "disagrees" with `expect` (then the sentence says so, with expect.reason and
    expect.what_if), or "measured" when nothing was expected."""
    ok = _ok(runs)
    la, lb = label_a or str(a), label_b or str(b)
    name, unit = _what(metric)
    name = name[0].upper() + name[1:]  # it starts the sentence
    xa, xb = _values(ok, factor, a, metric), _values(ok, factor, b, metric)
    if xa.empty or xb.empty:
        missing = la if xa.empty else lb
        return Conclusion("no data", f"{name}: no successful run of {missing} measured it, "
                          "so this run says nothing about it.")
    r, lo, hi = ratio_ci(xa, xb)
    w = welch(pd.DataFrame({factor: [a] * len(xa) + [b] * len(xb),
                            metric: [*xa, *xb]}), factor=factor, a=a, b=b, metrics=[metric])
    p = float(w["p"].iloc[0]) if not w.empty else float("nan")
    runs_said = f"{len(xb)} + {len(xa)} runs"
    numbers = (f"{fmt.with_unit(xb.mean(), unit)} against {fmt.with_unit(xa.mean(), unit)}, "
               f"{fmt.ratio(r)}" + (f" (95 % CI {fmt.interval(lo, hi)}×)" if not math.isnan(lo)
                                    else "") + f", Welch {fmt.pvalue(p)}, {runs_said}")
    if math.isnan(p) or p >= ALPHA:
        why = ("There are too few runs for a test" if math.isnan(p) else
               "The difference is not significant")
        return Conclusion("not significant",
                          f"{name}: {lb} {numbers}. {why}: this run cannot "
                          f"say whether {lb} is lower or higher than {la}"
                          + (f" (the expected story: {expect.story})." if expect else "."),
                          r, lo, hi, p)
    direction: Direction = "lower" if xb.mean() < xa.mean() else "higher"
    said = f"{name}: {lb} is {direction} than {la} ({numbers})."
    if expect is None:
        return Conclusion("measured", said, r, lo, hi, p)
    if direction == expect.direction:
        return Conclusion("agrees", f"{said} As expected: {expect.story}.", r, lo, hi, p)
    text = f"{said} This machine disagrees with the expected story ({expect.story})."
    if expect.reason:
        text += f" Likely reason: {expect.reason}"
        text += "" if expect.reason.endswith(".") else "."
    if expect.what_if:
        text += f" What-if that tests it: {expect.what_if}"
        text += "" if expect.what_if.endswith(".") else "."
    return Conclusion("disagrees", text, r, lo, hi, p)


def follows(runs: pd.DataFrame, x: str, y: str, group: str, claim: str) -> Conclusion:
    """Whether `y` rises with `x` across the groups' means (Spearman's rank correlation,
    scipy.stats.spearmanr), stated against `claim` ("CPU follows the syscall count")."""
    ok = _ok(runs)
    m = ok.groupby(group)[[x, y]].mean(numeric_only=True).dropna()
    nx, ny = _what(x)[0], _what(y)[0]
    if len(m) < 3:
        return Conclusion("no data", f"{len(m)} group(s) with both {nx} and {ny}: too few to "
                          f"say whether {claim.lower()}.")
    res = sps.spearmanr(m[x], m[y])
    rho, p = float(res.statistic), float(res.pvalue)
    said = f"Spearman ρ = {fmt.number(rho, 2)}, {fmt.pvalue(p)}, over {len(m)} {group}s"
    if math.isnan(p) or p >= ALPHA:
        return Conclusion("not significant", f"Across the {group}s, {ny} does not measurably "
                          f"follow {nx} here ({said}): the claim “{claim}” is not supported "
                          "by this run.", p=p)
    if rho > 0:
        return Conclusion("agrees", f"Across the {group}s, {ny} rises with {nx} ({said}): "
                          f"{claim}, on this machine.", p=p)
    return Conclusion("disagrees", f"Across the {group}s, {ny} falls as {nx} rises ({said}): "
                      f"this machine contradicts “{claim}”.", p=p)


def extremes(runs: pd.DataFrame, metric: str, group: str) -> Conclusion:
    """The groups with the lowest and highest mean of `metric` ("lowest relay CPU per Gbit:
    epoll + coalesce, 0.15 CPU·s/Gbit"), with how many runs each mean has."""
    ok = _ok(runs)
    name, unit = _what(metric)
    m = ok.groupby(group)[metric].agg(["mean", "count"]).dropna() if metric in ok else None
    if m is None or m.empty:
        return Conclusion("no data", f"{name}: not measured.")
    lo, hi = m["mean"].idxmin(), m["mean"].idxmax()
    return Conclusion("measured", f"Lowest {name}: {lo}, {fmt.with_unit(m.loc[lo, 'mean'], unit)}"
                      f" (mean of {int(m.loc[lo, 'count'])} run(s)); highest: {hi}, "
                      f"{fmt.with_unit(m.loc[hi, 'mean'], unit)}.")


@dataclass(frozen=True)
class _Carried:
    """What a set of runs carried: delivered and offered Mbit/s, loss, relay CPU."""

    delivered: pd.Series
    offered: pd.Series
    asked: pd.Series  # the paced target (NaN: unpaced)
    loss: pd.Series
    cpu: pd.Series

    @property
    def kept_up(self) -> bool:
        """Paced, and every run delivered what its senders offered (98 %, under 0.5 % loss)."""
        share = (self.delivered / self.offered).dropna()
        return (bool(self.asked.notna().all()) and not share.empty and share.min() >= 0.98
                and self.loss.max() < 0.5)

    def said(self) -> str:
        text = (f"delivered {fmt.interval(self.delivered.min(), self.delivered.max())} Mbit/s "
                f"of {fmt.interval(self.offered.min(), self.offered.max())} Mbit/s offered, "
                f"loss up to {fmt.number(self.loss.max())} %")
        short = (self.offered < 0.95 * self.asked).any()
        if short:  # the senders themselves fell short of the paced target
            text += (f" (the senders reached {fmt.number(self.offered.min())} of the "
                     f"{fmt.number(self.asked.max())} Mbit/s asked for: the load generator "
                     "shares this machine)")
        if self.cpu.notna().any():
            busy = fmt.interval(self.cpu.min(), self.cpu.max())
            text += f", the relay using {busy} % of one core"
        return text


def _carried(runs: pd.DataFrame) -> _Carried | None:
    ok = _ok(runs)
    if ok.empty or "mbps" not in ok:
        return None

    def col(name: str) -> pd.Series:
        return pd.to_numeric(ok[name], errors="coerce") if name in ok else \
            pd.Series(float("nan"), index=ok.index)

    return _Carried(col("mbps"), col("offered_mbps"), col("rate_mbps"), col("loss_pct"),
                    col("relay_cpu_pct"))


def headroom(runs: pd.DataFrame) -> str:
    """Did the relay keep up with the offered load, and how busy was it? One clause from
    the runs (delivered against offered, loss, relay CPU % of one core): the likely reason
    CPU per Gbit need not follow the syscall count at a paced rate."""
    c = _carried(runs)
    if c is None:
        return "no successful run to say how loaded the relay was"
    if c.kept_up:
        return (f"every run {c.said()}: the relay kept up and was not CPU-bound, so a mode "
                "that crosses into the kernel less can spend the time it saves waking up "
                "per completion instead")
    return f"runs {c.said()}: the relay ran at or near its capacity"


def kept_up(runs: pd.DataFrame) -> Conclusion:
    """Whether a paced run's relays carried everything offered (the claim "more than this
    machine can carry" is tested here, not written ahead of the run)."""
    c = _carried(runs)
    if c is None:
        return Conclusion("no data", "No successful run: nothing to say about capacity.")
    if c.kept_up:
        return Conclusion("measured", f"Every run {c.said()}: at this rate the relay keeps up "
                          "in every mode, so the comparison is of cost (CPU, syscalls) for the "
                          "same work, not of capacity.")
    return Conclusion("measured", f"Runs {c.said()}: at least one mode could not carry this "
                      "rate, so its figures are those of a saturated relay.")


def share_vs(measured: Sequence[float], predicted: float, what: str,
             reason: str = "", what_if: str = "", trials: int | None = None) -> Conclusion:
    """A measured share (0–1, one value per run) against a predicted one. With `trials`
    (each run's share counts that many independent draws, e.g. 8 pairs that either cross
    shards or not), an exact binomial test (scipy.stats.binomtest) of the pooled count and
    its Clopper–Pearson CI; otherwise the t-interval of the mean, clipped to [0, 1]. Agrees
    when the prediction lies inside the 95 % CI."""
    x = np.asarray(pd.to_numeric(pd.Series(list(measured)), errors="coerce").dropna(),
                   dtype=float)
    if not len(x):
        return Conclusion("no data", f"{what}: not measured.")
    mean = float(x.mean())
    p = float("nan")
    if trials:
        k = int(np.rint(x * trials).sum())
        test = sps.binomtest(k, trials * len(x), predicted)
        ci = test.proportion_ci(0.95)
        lo, hi, p = float(ci.low), float(ci.high), float(test.pvalue)
        how = (f"{k} of {trials * len(x)} draws ({len(x)} run(s) × {trials}), binomial "
               f"{fmt.pvalue(p)}")
    elif len(x) >= 2:
        sd = float(x.std(ddof=1))
        lo, hi = sps.t.interval(0.95, len(x) - 1, loc=mean, scale=sd / math.sqrt(len(x))) \
            if sd > 0 else (mean, mean)
        lo, hi = max(0.0, float(lo)), min(1.0, float(hi))
        how = f"{len(x)} runs"
    else:
        lo = hi = float("nan")
        how = f"{len(x)} run(s), too few for an interval"
    ci_said = f", 95 % CI {fmt.interval(lo, hi)}" if not math.isnan(lo) else ""
    said = (f"{what}: measured {fmt.number(mean, 2)}{ci_said} ({how}), predicted "
            f"{fmt.number(predicted, 2)}")
    if math.isnan(lo):
        return Conclusion("not significant", f"{said}: too few runs to test the prediction.")
    if lo <= predicted <= hi:
        return Conclusion("agrees", f"{said}: the prediction lies inside the interval, so "
                          "this machine does not contradict it.", p=p)
    text = f"{said}: this machine disagrees with the prediction."
    if reason:
        text += f" Likely reason: {reason}" + ("" if reason.endswith(".") else ".")
    if what_if:
        text += f" What-if that tests it: {what_if}" + ("" if what_if.endswith(".") else ".")
    return Conclusion("disagrees", text, p=p)


def _rate_name(rate: float) -> str:
    return "unpaced" if math.isnan(rate) else f"{fmt.number(rate)} Mbit/s"


def pays_from(runs: pd.DataFrame, a: object, b: object, factor: str = "io",
              metric: str = "cpu_s_per_gbit", label_a: str | None = None,
              label_b: str | None = None) -> Conclusion:
    """compare() of b against a at each offered rate (rate_mbps; unpaced last), summed up:
    where b is significantly lower ("from 1,000 Mbit/s offered on" when that holds for
    every higher rate too), where significantly higher, and where this run cannot tell."""
    ok = _ok(runs)
    la, lb = label_a or str(a), label_b or str(b)
    name, _ = _what(metric)
    rates = sorted(set(pd.to_numeric(ok["rate_mbps"], errors="coerce").dropna()))
    if ok["rate_mbps"].isna().any():
        rates.append(float("nan"))
    per = []
    for rate in rates:
        at = ok[ok["rate_mbps"].isna()] if math.isnan(rate) else ok[ok["rate_mbps"] == rate]
        per.append((rate, compare(at, metric, a, b, factor, la, lb)))
    per = [(rate, c) for rate, c in per if c.verdict != "no data"]
    if not per:
        return Conclusion("no data", f"No successful runs of {la} and {lb} to compare.")
    lower = [rate for rate, c in per if c.verdict == "measured" and c.ratio < 1]
    higher = [rate for rate, c in per if c.verdict == "measured" and c.ratio >= 1]
    unclear = [rate for rate, c in per if c.verdict != "measured"]
    parts = []
    for rate, c in per:
        ci = f", CI {fmt.interval(c.ratio_low, c.ratio_high)}×" if not math.isnan(
            c.ratio_low) else ""
        parts.append(f"{_rate_name(rate)}: {fmt.ratio(c.ratio)}{ci}, {fmt.pvalue(c.p)}")
    detail = (f"{name[0].upper()}{name[1:]} of {lb} relative to {la} by offered rate — "
              + "; ".join(parts) + ".")

    def rates_said(rs: list[float]) -> str:
        return ", ".join(_rate_name(r) for r in rs)

    tail = [rate for rate, _ in per][-len(lower):] if lower else []
    if lower and [_rate_name(r) for r in lower] == [_rate_name(r) for r in tail]:
        where = ("at every rate measured" if len(lower) == len(per) else
                 f"from {_rate_name(lower[0])} offered on")
        text = f"{lb} costs significantly less {name} than {la} {where}"
    elif lower:
        text = f"{lb} costs significantly less {name} than {la} at {rates_said(lower)}"
    else:
        text = f"{lb} costs significantly less {name} than {la} at no rate measured here"
    if higher:
        text += f"; more at {rates_said(higher)}"
    if unclear:
        text += f"; this run cannot tell at {rates_said(unclear)} (not significant)"
    return Conclusion("measured", f"{text}. {detail}")
