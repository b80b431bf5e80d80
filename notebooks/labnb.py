"""Small helpers the guided notebooks share. Nothing here measures anything: every
experiment is written out in the notebook that runs it.

- QUICK / pick(): LABKIT_QUICK=1 (CI sets it) shortens runs; banner() says so in the output.
- caps(): labkit.caps() once per kernel, and have(name) -> (ok, why not).
- show(): display bokeh layouts inline (BokehJS loaded once, inline, works offline).
- recorded(): reference runs from data/runs with a "RECORDED on <machine>, <date>" label,
  so a figure drawn from them can never pass for a live measurement.
- live_or_recorded(): run the live experiment, and on any failure of the capability it
  needs (or when the machine lacks it) show the recorded runs instead, with the reason.
- window_delta() / last(): counter arithmetic on a Result's time series.
- REPLAY / replayed(): LABKIT_REPLAY=DIR runs a notebook on the runs stored in DIR instead
  of measuring (labelled REPLAYED, never passed off as live): how a test shows that a
  notebook's conclusions follow its data, on runs where the expected story is false.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
DATA_RUNS = ROOT / "data" / "runs"  # labkit.lab.store.RECORDED_DIR
QUICK = os.environ.get("LABKIT_QUICK", "").strip() not in ("", "0")
REPLAY = os.environ.get("LABKIT_REPLAY", "").strip()


def pick(full: Any, quick: Any) -> Any:
    """`full` normally, `quick` under LABKIT_QUICK=1."""
    return quick if QUICK else full


def banner(**settings: Any) -> None:
    """Print the run plan, and say loudly when quick mode shortened it."""
    plan = ", ".join(f"{k}={v}" for k, v in settings.items())
    if QUICK:
        print(f"LABKIT_QUICK=1: QUICK MODE, shortened runs ({plan}). Figures are noisier "
              "than a full run; unset LABKIT_QUICK for the full experiment.")
    else:
        print(f"full experiment: {plan}")


_CAPS: Any = None


def caps() -> Any:
    """labkit.caps(), probed once per kernel."""
    global _CAPS
    if _CAPS is None:
        import labkit

        _CAPS = labkit.caps()
    return _CAPS


def have(name: str) -> tuple[bool, str]:
    """(available, what is missing and what to do) for one capability of labkit.caps()."""
    c = caps()[name]
    return bool(c.ok), c.reason


def show(*layouts: Any, width: int = 900) -> None:
    """Show bokeh layouts inline; several side by side in a row `width` pixels wide (each
    captioned layout's plot and caption are narrowed to its share)."""
    from bokeh.io import show as bokeh_show
    from bokeh.layouts import row
    from bokeh.models import Div

    from labkit.views import plots

    plots.load_bokehjs()
    if len(layouts) == 1:
        bokeh_show(layouts[0])
        return
    share = width // len(layouts) - 10
    for layout in layouts:
        for p in plots.plots_in(layout):
            p.width = share
        for child in getattr(layout, "children", []):
            if isinstance(child, Div):
                child.width = share
    bokeh_show(row(*layouts))


def machine_label(row: pd.Series | dict[str, Any]) -> str:
    """'AMD EPYC, 2 cores, Linux 6.18…' from a stored run's metadata columns."""
    kernel = str(row.get("kernel") or "?")
    return f"{row.get('cpu_model') or '?'}, {row.get('cores') or '?'} cores, Linux {kernel}"


def recorded(sweep: str | None = None, where: Path = DATA_RUNS,
             **equals: Any) -> tuple[pd.DataFrame, str]:
    """Reference runs stored in data/runs (labkit.lab.store), optionally one sweep's and
    filtered by column == value, and the label every figure drawn from them must carry."""
    from labkit.lab import store

    runs = store.load(where) if where.exists() else pd.DataFrame()
    if not runs.empty and sweep is not None:
        runs = runs[runs["sweep"] == sweep] if "sweep" in runs else runs.iloc[0:0]
    for k, v in equals.items():
        if not runs.empty:
            runs = runs[runs[k] == v]
    if runs.empty:
        return runs, "no recorded runs"
    machines = sorted({machine_label(r) for _, r in runs.iterrows()})
    dates = sorted(str(d)[:10] for d in runs["date"].dropna())
    span = dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}"
    label = f"RECORDED on {'; '.join(machines)}, {span} ({len(runs)} runs), not live"
    return runs.reset_index(drop=True), label


def replayed(where: str = "") -> tuple[pd.DataFrame, str]:
    """The runs stored under LABKIT_REPLAY (or `where`), and the label every figure drawn
    from them carries: "REPLAYED from DIR: <machine>, <dates> (n runs), not live"."""
    from labkit.lab import store

    where = where or REPLAY
    runs = store.load(where)
    if runs.empty:
        raise FileNotFoundError(f"LABKIT_REPLAY={where}: no run files there")
    machines = sorted({machine_label(r) for _, r in runs.iterrows()})
    dates = sorted(str(d)[:10] for d in runs["date"].dropna()) or ["undated"]
    label = (f"REPLAYED from {where}: {'; '.join(machines)}, {dates[0]}"
             f"{'' if dates[0] == dates[-1] else ' to ' + dates[-1]} ({len(runs)} runs), "
             "not live")
    print(f"NOT LIVE: {label}")
    return runs.reset_index(drop=True), label


def window(ts: pd.DataFrame) -> pd.DataFrame:
    """The measured window's ticks of a Result's time series."""
    return ts[ts["phase"] == "window"] if "phase" in ts else ts


def window_delta(ts: pd.DataFrame, column: str) -> float:
    """How much a cumulative counter column rose across the measured window."""
    w = window(ts)
    if w.empty or column not in w:
        return float("nan")
    return float(w[column].iloc[-1] - w[column].iloc[0])


def last(ts: pd.DataFrame, column: str) -> float:
    """A cumulative counter's final value (the last tick, after the load has finished)."""
    return float(ts[column].iloc[-1]) if column in ts and not ts.empty else float("nan")


def means(runs: pd.DataFrame, by: str | list[str], columns: list[str]) -> pd.DataFrame:
    """Mean of each column per group, over the runs with status ok."""
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    cols = [c for c in columns if c in ok]
    return ok.groupby(by, sort=False)[cols].mean(numeric_only=True)


@dataclass
class Source:
    """Where a notebook's figures come from: the runs, the label every figure carries,
    whether they were measured now, and if not, why."""

    runs: pd.DataFrame
    label: str
    live: bool
    why_not: str = ""


def live_or_recorded(sweep: str, run_live: Callable[[], pd.DataFrame] | None,
                     live_label: str, why_not: str = "") -> Source:
    """run_live() (None: the capability is missing, and why_not says why); if it raises,
    the capability failed here: say so, with the error, and fall back to the RECORDED
    runs of `sweep`."""
    if run_live is not None:
        try:
            return Source(run_live(), live_label, True)
        except Exception as e:  # any failure of the live path falls back, said on screen
            why_not = f"the live run failed here: {type(e).__name__}: {e}"
    runs, label = recorded(sweep)
    print(f"NOT LIVE: {why_not}\n-> showing {label}")
    return Source(runs, label, False, why_not)
