"""What runs and sweeps produce: Result (one run), SweepResult (a sweep), RunFailed.

Kept apart from the code that makes them (labkit.lab.experiment) so that the store, which
writes and reads Results, does not have to import the orchestration that calls it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd


class RunFailed(RuntimeError):
    """A run failed; .result holds the recorded Result (status, error, stderr tail)."""

    def __init__(self, result: Result) -> None:
        self.result = result
        s = result.summary
        tail = str(s.get("stderr_tail") or "").rstrip()
        super().__init__(f"run {s['run_id']} failed: {s['error']}"
                         + (f"\nstderr tail:\n{tail}" if tail else ""))


@dataclass
class Result:
    """One run: `summary` (one row: config, derived figures, status), `timeseries` (one row
    per sampler tick, with the Sampler's columns and `phase`), `meta` (configs, machine,
    capabilities real or fallback, pinning, labkit version, git revision, date)."""

    summary: pd.Series
    timeseries: pd.DataFrame
    meta: dict[str, Any]
    path: Path | None = None

    @property
    def status(self) -> str:
        return str(self.summary["status"])

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error(self) -> str | None:
        e = self.summary.get("error")
        return None if e is None or (isinstance(e, float) and math.isnan(e)) else str(e)

    def frame(self) -> pd.DataFrame:
        """The summary as a one-row DataFrame (pd.concat these for a table of runs)."""
        return self.summary.to_frame().T.infer_objects()

    def raise_for_status(self) -> Result:
        if not self.ok:
            raise RunFailed(self)
        return self

    def __repr__(self) -> str:
        s = self.summary
        if not self.ok:
            return f"Result({s['run_id']}, {self.status}: {s['error']})"
        return (f"Result({s['run_id']}, io={s['io']}, {s['mbps']:.1f} Mbit/s, "
                f"loss {s['loss_pct']:.2f} %, {s['syscalls_per_packet']:.3f} syscalls/packet, "
                f"{s['cpu_s_per_gbit']:.3f} CPU·s/Gbit)")

    def _repr_html_(self) -> str:
        return self.frame().T.rename(columns={0: "value"}).to_html()


@dataclass
class SweepResult:
    """runs: one summary row per run (including resumed ones); stats: mean, median, 95 % CI
    per point and metric; comparisons: Welch's t-test between the two compared modes."""

    name: str
    runs: pd.DataFrame
    stats: pd.DataFrame
    comparisons: pd.DataFrame
    by: list[str]
    paths: list[Path] = field(default_factory=list)
    skipped: int = 0
    # sweep(relays=…): each relay's settings, what all shared and what was not equal
    fairness: dict[str, Any] = field(default_factory=dict)

    @property
    def failures(self) -> pd.DataFrame:
        if self.runs.empty:
            return self.runs
        return self.runs[self.runs["status"] != "ok"]

    def __repr__(self) -> str:
        n_ok = int((self.runs["status"] == "ok").sum()) if not self.runs.empty else 0
        return (f"SweepResult({self.name!r}, {len(self.runs)} runs, {n_ok} ok, "
                f"{len(self.failures)} not ok, {self.skipped} resumed from the store)")

