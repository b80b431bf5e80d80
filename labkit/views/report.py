"""A static, self-contained HTML report of stored runs: `labkit report RUNS… -o report.html`.

One file, no network: bokeh's JavaScript is inlined (bokeh.resources.INLINE), tables are
plain HTML. It shows where the runs come from (machine, kernel, labkit version, git
revision, pinning, which measurement sources were live and which were unavailable), the
Welch comparisons between the two modes, the comparison figures (labkit.views.plots), the
per-point statistics, and every failed run with its error and stderr tail.
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from bokeh.core.templates import get_env
from bokeh.embed import file_html
from bokeh.models import Div
from bokeh.resources import INLINE

from labkit.lab import store
from labkit.lab.stats import summarize, welch
from labkit.views import fmt, plots

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px 36px;
       color: #222; max-width: 1200px; }
h1 { margin-bottom: 4px; } h2 { margin-top: 36px; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; font-size: 12.5px; margin: 8px 0 16px 0; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.kv td:first-child { font-weight: 600; text-align: left; } .kv td { text-align: left; }
.bad { color: #b00020; font-weight: 600; } .ok { color: #1b7f3b; font-weight: 600; }
pre { background: #f7f7f7; border: 1px solid #e3e3e3; padding: 8px; font-size: 11.5px;
      max-height: 240px; overflow: auto; white-space: pre-wrap; }
.fig { margin: 10px 0 6px 0; }
"""

# bokeh's file_html fills bokeh_css/bokeh_js with only the (inlined) bundles the figures
# need, and embed(root) places each figure.
_TEMPLATE = get_env().from_string("""{% from macros import embed %}<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }}</title>
{{ bokeh_css }}
{{ bokeh_js }}
<style>{{ css }}</style>
</head><body>
{{ before }}
{% for doc in docs %}{% for root in doc.roots %}<div class="fig">{{ embed(root) }}</div>
{% endfor %}{% endfor %}
{{ after }}
{{ plot_script }}
</body></html>
""")

_HEADLINE = ("mbps", "loss_pct", "syscalls_per_packet", "perf_syscalls_per_packet",
             "cpu_s_per_gbit", "ctx_switches_per_kpkt", "lat_p99_us")


def _kv(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table(df: pd.DataFrame) -> str:
    if df.empty:
        return "<p><i>none</i></p>"
    return fmt.frame(df).to_html(index=False, na_rep=fmt.NA, border=0, escape=True)


def _unique(values: Any) -> str:
    vals = [str(v) for v in dict.fromkeys(values) if v is not None and str(v) != "nan"]
    return ", ".join(vals) if vals else "unknown"


def _sources(metas: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """Per measurement source: how many runs had it live, and why it was not otherwise."""
    rows: dict[str, dict[str, Any]] = {}
    for meta in metas.values():
        for src, state in (meta.get("sources") or {}).items():
            r = rows.setdefault(src, {"source": src, "live in runs": 0, "otherwise": set()})
            if str(state).startswith("live"):
                r["live in runs"] += 1
            else:
                r["otherwise"].add(str(state))
    for r in rows.values():
        r["otherwise"] = "; ".join(sorted(r["otherwise"])) or "–"
    return pd.DataFrame(list(rows.values()))


def _caps(metas: dict[str, dict[str, Any]]) -> list[tuple[str, Any]]:
    for meta in metas.values():
        caps = meta.get("capabilities") or {}
        if caps:
            out = []
            for k, v in caps.items():
                out.append((k, _cap_text(v)))
            return out
    return []


def _cap_text(v: Any) -> str:
    if isinstance(v, dict):
        ok = v.get("available", v.get("ok"))
        reason = v.get("reason") or v.get("detail") or ""
        if ok is None:
            return ", ".join(f"{k}={w}" for k, w in v.items())
        return ("yes" if ok else "no") + (f": {reason}" if reason else "")
    return str(v)


def build(runs: pd.DataFrame, metas: dict[str, dict[str, Any]],
          timeseries: pd.DataFrame | None = None, title: str = "labkit report",
          group: str = "io") -> str:
    """The report page as one HTML string."""
    ok = runs[runs["status"] == "ok"] if not runs.empty else runs
    by = [c for c in ("io", "tls", "workers", "rate_mbps", "size", "pairs") if c in runs
          and runs[c].nunique(dropna=False) > 1]
    if group not in by and group in runs:
        by = [group, *by]
    stats = summarize(runs, by=by) if not runs.empty else pd.DataFrame()
    cmp = pd.DataFrame()
    if group in runs and {"epoll", "uring"} <= set(runs[group]):
        cmp = welch(runs, factor=group, a="epoll", b="uring",
                               by=[b for b in by if b != group], metrics=_HEADLINE)
    figs = plots.comparison_figures(runs, stats, timeseries, group=group) if not ok.empty \
        else []
    if not figs:
        figs = [Div(text="<p><i>No successful run: nothing to plot.</i></p>")]

    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="sub">{len(runs)} runs ({len(ok)} ok, {len(runs) - len(ok)} not ok) · '
             f"generated {datetime.now(UTC).isoformat(timespec='seconds')}</p>"]
    parts.append("<h2>Where these numbers come from</h2>")
    pin_notes = _unique(runs.get("pinning", pd.Series(dtype=str)))
    parts.append(_kv([
        ("machine", _unique(runs.get("cpu_model", []))),
        ("cores", _unique(runs.get("cores", []))),
        ("kernel", _unique(runs.get("kernel", []))),
        ("labkit version", _unique(runs.get("labkit_version", []))),
        ("git revision", _unique(runs.get("git_revision", []))),
        ("run dates", f"{runs['date'].min()} … {runs['date'].max()}" if "date" in runs
         and not runs.empty else "unknown"),
        ("sweeps", _unique(runs.get("sweep", []))),
        ("pinning", pin_notes),
        ("measured window", _unique(f"{w:g} s after {u:g} s warm-up" for w, u in zip(
            runs.get("duration", []), runs.get("warmup", []), strict=False))),
    ]))
    src = _sources(metas)
    parts.append("<h3>Measurement sources</h3><p>Each source is either live or says why not; "
                 "a figure from an unavailable source is left empty, never substituted.</p>")
    parts.append(_table(src))
    caps = _caps(metas)
    if caps:
        parts.append("<h3>Machine capabilities (labkit.caps)</h3>" + _kv(caps))

    if not cmp.empty:
        parts.append(f"<h2>{html.escape(group)}: epoll vs io_uring (Welch's t-test)</h2>"
                     "<p>ratio = uring / epoll; p from scipy.stats.ttest_ind(equal_var=False) "
                     "over the repeats. Significant: p &lt; 0.05.</p>")
        view = cmp.drop(columns=["factor", "a", "b"]).copy()
        view["metric"] = view["metric"].map(lambda m: plots._label(m))
        view["p"] = view["p"].map(fmt.pvalue)
        view["ratio"] = view["ratio"].map(fmt.ratio)
        parts.append(_table(view))

    before = "\n".join(parts) + "\n<h2>Figures</h2>"
    parts = []
    parts.append("<h2>Statistics per point (mean, median, 95 % t-interval)</h2>"
                 "<p>No figure here can be negative: where a skewed sample's t-interval "
                 "reaches below 0, its lower end is cut at 0 (ci_clipped).</p>")
    parts.append(_table(stats))

    bad = runs[runs["status"] != "ok"] if not runs.empty else runs
    parts.append(f"<h2>Failed or stopped runs ({len(bad)})</h2>")
    if bad.empty:
        parts.append('<p class="ok">None.</p>')
    for _, r in bad.iterrows():
        parts.append(f'<p><span class="bad">{html.escape(str(r["status"]))}</span> '
                     f"<code>{html.escape(str(r['run_id']))}</code> "
                     f"({html.escape(', '.join(f'{c}={r[c]}' for c in by if c in r))}): "
                     f"{html.escape(str(r.get('error')))}</p>")
        tail = r.get("stderr_tail")
        if isinstance(tail, str) and tail.strip():
            parts.append(f"<pre>{html.escape(tail)}</pre>")

    parts.append("<h2>Every run</h2>")
    cols = [c for c in ("run_id", "status", *by, "repeat", "offered_mbps", "mbps", "loss_pct",
                        "syscalls_per_packet", "perf_syscalls_per_packet", "cpu_s_per_gbit",
                        "ctx_switches_per_kpkt", "relay_cpu_pct", "lat_p50_us", "lat_p99_us",
                        "pinning") if c in runs]
    parts.append(_table(runs[cols]) if not runs.empty else "<p><i>none</i></p>")

    return file_html(figs, resources=INLINE, title=title, template=_TEMPLATE,
                     template_variables={"css": _CSS, "before": before,
                                         "after": "\n".join(parts)})


def write(sources: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str],
          title: str | None = None) -> Path:
    """Read the run files under `sources` and write the report to `out` (atomically)."""
    runs = store.load(*sources)
    if runs.empty:
        raise store.StoreError(2, f"no run files in {', '.join(map(str, sources)) or 'data/runs'}")
    metas = store.load_meta(*sources)
    ts = store.load_timeseries(*sources)
    page = build(runs, metas, ts, title=title or "labkit report")
    return store.write_atomic(Path(out), page.encode())
