"""Bokeh figures: the live panel fed by the sampler, and the comparison figures of a sweep.

Every figure has a title, axis labels with units, hover tooltips and a one-line caption
saying what to look at. The comparison functions return a bokeh `column(plot, caption)`;
`plot_of(layout)` and `caption_of(layout)` take them apart.

Live panel and threads
----------------------
The sampler calls LivePanel.push(tick) on its own thread at 2–10 Hz. A bokeh Document is
not thread-safe, and in Jupyter the kernel's main thread also changes the same Document
(a widget's comm handler runs there). So
push() never touches a bokeh object: it appends the tick to a deque under a lock and, in a
kernel, asks the kernel's tornado IOLoop to run flush() on the main thread
(IOLoop.add_callback, tornado's one thread-safe method; a flush already scheduled is not
scheduled again). flush() drains the deque into one ColumnDataSource.stream(...,
rollover=N) call, which the widget sends to the browser as one PATCH-DOC message. Every
Document change therefore happens on the kernel's main thread.

Two consequences: the main thread must be free for the plot to move, which is why the
Dashboard runs experiments in a background thread; and a cell that blocks the main thread
in experiment.run(live=panel) gets its updates through pump(), which run() calls between
its waits (pump() flushes only on the thread that owns the panel). Outside a kernel
(scripts, tests) there is no loop and no comm: push() flushes under the lock itself.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from bokeh.layouts import column, gridplot
from bokeh.models import (
    BoxAnnotation,
    ColumnDataSource,
    Div,
    FactorRange,
    HoverTool,
    Label,
    Legend,
    Plot,
    Range1d,
    Slope,
    Whisker,
)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from labkit.config import MODE_DEFAULTS, SWITCHES
from labkit.counters import ticks
from labkit.lab.window import FIGURES
from labkit.views import fmt

MODE_COLORS = {"epoll": "#1f77b4", "uring": "#d62728"}
MODE_NAMES = {"epoll": "epoll", "uring": "io_uring"}
CAPTION_CSS = "font-size: 13px; color: #444; margin: 2px 0 18px 6px; max-width: 900px;"
_TOOLS = "pan,wheel_zoom,box_zoom,reset,save"


# Colours for groups that are not the two modes: Category10 without the modes' blue and red,
# so no other group is mistaken for epoll or io_uring
_OTHER_COLORS = tuple(c for c in Category10_10 if c not in MODE_COLORS.values())


def color_for(value: Any, order: Sequence[Any] = ()) -> str:
    """A mode's own colour (by io value or display name), else a stable other colour."""
    for io, name in MODE_NAMES.items():
        if value in (io, name):
            return MODE_COLORS[io]
    others = [v for v in order if not any(v in pair for pair in MODE_NAMES.items())]
    idx = others.index(value) if value in others else sum(map(ord, str(value)))
    return _OTHER_COLORS[idx % len(_OTHER_COLORS)]


def captioned(fig: Any, caption: str) -> Any:
    """column(fig, one-line caption): how every labkit figure is returned. Its axes are
    written by labkit.views.fmt (no `2.500e+5`): every figure passes through here."""
    fmt.style_axes(fig)
    div = Div(text=f'<div class="labkit-caption" style="{CAPTION_CSS}">{caption}</div>',
              name="caption")
    return column(fig, div, name=f"labkit:{fig.title.text if fig.title else ''}")


def plot_of(layout: Any) -> Any:
    """The (first) Plot of a captioned layout."""
    return plots_in(layout)[0]


def caption_of(layout: Any) -> str:
    """The caption text of a captioned layout."""
    div = next(c for c in layout.children if isinstance(c, Div))
    return str(div.text).split(">", 1)[1].rsplit("<", 1)[0]


def _label(metric: str) -> str:
    name, unit = FIGURES.get(metric, (metric, ""))
    return f"{name} ({unit})" if unit else name


def _fmt(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "unpaced"
    return fmt.number(v)


# ---- live panel ---------------------------------------------------------------------------


# x: seconds since the panel opened (ticks restart at 0 with every run); run: its label
LIVE_COLUMNS = ("x", *ticks.TICK_KEYS, "run")


def run_label(cfg: Any) -> str:
    """A relay config in a few words: the I/O mode, the switches that differ from that
    mode's defaults (+x on, −x off), TLS and workers when not the plain ones; an external
    relay (no io mode) by its name."""
    if not hasattr(cfg, "io"):
        return str(getattr(cfg, "name", "relay"))
    io = str(cfg.io)
    parts = [MODE_NAMES.get(io, io)]
    defaults = MODE_DEFAULTS.get(io, {})
    for name in SWITCHES:
        v = getattr(cfg, name, None)
        if v is not None and name in defaults and bool(v) != defaults[name]:
            parts.append(f"{'+' if v else '−'}{name}")
    tls = getattr(cfg, "tls", "off")
    if tls != "off":
        parts.append(f"TLS {tls}")
    workers = getattr(cfg, "workers", 1)
    if workers != 1:
        parts.append(f"{workers} workers")
    return " ".join(parts)
# (title, [(tick key, color)], caption); units and legends are the ticks table's
LIVE_FIGURES = (
    ("Throughput", [("mbps", "#d62728"), ("load_mbps", "#1f77b4")],
     "Relay-forwarded and load-received payload rates: they should track each other; a gap "
     "is loss or queueing."),
    ("Syscalls", [("syscalls_per_s", "#2ca02c"), ("perf_syscalls_per_s", "#9467bd")],
     "Fewer syscalls for the same Mbit/s is the io_uring win; perf's line is absent without "
     "perf."),
    ("Context switches", [("ctx_switches_per_s", "#8c564b")],
     "A relay that blocks and wakes per packet switches often; batching lowers this."),
    ("CPU", [("relay_cpu_pct", "#ff7f0e"), ("load_cpu_pct", "#7f7f7f")],
     "Relay CPU for the rate above: lower at the same Mbit/s is better efficiency."),
    ("Drops", [("drops_per_s", "#e377c2")],
     "Should stay at zero; drops mean the relay's queues or buffer pool overflowed."),
)


def kernel_loop() -> Any:
    """The Jupyter kernel's tornado IOLoop (main thread), or None outside a kernel."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    ip = get_ipython()
    kernel = getattr(ip, "kernel", None)
    return getattr(kernel, "io_loop", None)


_bokehjs_loaded = False


def load_bokehjs() -> None:
    """Load BokehJS into the notebook page once per kernel (as an output of the current
    cell): jupyter_bokeh's BokehModel renders through the page's `window.Bokeh` and shows a
    JavaScript error without it."""
    global _bokehjs_loaded
    if _bokehjs_loaded or kernel_loop() is None:
        return
    from bokeh.io import output_notebook
    from bokeh.resources import INLINE

    # inline, not from the CDN: the lab must work offline (and behind Binder's proxy)
    output_notebook(resources=INLINE, hide_banner=True)
    _bokehjs_loaded = True


class _RunBand:
    """One run on the live panel: a band in its mode's colour across every figure, its
    name in the first, and grey stretches over its warm-up and drain (the parts no figure
    counts). The band and the open grey stretch follow the run's latest tick."""

    def __init__(self, figures: Sequence[Any], x: float, label: str, io: str) -> None:
        self.figures = figures
        colour = color_for(io) if io else "#7f7f7f"
        self.bands = self._boxes(x, colour, 0.07, line=True)
        figures[0].add_layout(Label(x=x, y=4, x_units="data", y_units="screen", text=label,
                                    text_color=colour, text_font_size="10pt",
                                    text_font_style="bold", x_offset=3))
        self.grey: list[BoxAnnotation] | None = self._boxes(x, "#888888", 0.18)  # warm-up

    def _boxes(self, x: float, colour: str, alpha: float,
               line: bool = False) -> list[BoxAnnotation]:
        boxes = [BoxAnnotation(left=x, right=x, fill_color=colour, fill_alpha=alpha,
                               line_color=colour, line_alpha=0.5 if line else 0,
                               level="underlay") for _ in self.figures]
        for f, b in zip(self.figures, boxes, strict=True):
            f.add_layout(b)
        return boxes

    def reach(self, x: float) -> None:
        for b in (*self.bands, *(self.grey or ())):
            b.right = x

    def phase(self, phase: str, x: float) -> None:
        if phase == "window" and self.grey:  # the warm-up ends where the window starts
            for b in self.grey:
                b.right = x
            self.grey = None
        elif phase == "drain" and self.grey is None:
            self.grey = self._boxes(x, "#888888", 0.18)

    def close(self) -> None:
        self.grey = None


class LivePanel:
    """Time series of Mbit/s, syscalls/s, context switches/s, CPU % and drops, streamed from
    the sampler thread with rollover (the last `rollover` ticks are kept).

        panel = LivePanel()
        panel.widget()                       # an ipywidget (views.BokehWidget): display it
        experiment.run(..., live=panel)      # or sampler.subscribe(panel.push)

    See the module docstring for how ticks cross from the sampler thread.
    """

    def __init__(self, rollover: int = 600, loop: Any = None, height: int = 170,
                 width: int = 820) -> None:
        self.rollover = rollover
        self.source = ColumnDataSource({c: [] for c in LIVE_COLUMNS})
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._owner = threading.current_thread()
        self._loop = loop if loop is not None else kernel_loop()
        self._scheduled = False
        self._epoch = time.monotonic()
        self.run_label = ""
        self.ticks_seen = 0
        self.figures = self._make_figures(height, width)
        for f in self.figures[1:]:
            f.x_range = self.figures[0].x_range
        self._runs: list[_RunBand] = []
        caption = Div(text=f'<div class="labkit-caption" style="{CAPTION_CSS}">Live, '
                      "one point per sampler tick (x: seconds since the panel opened). "
                      "Each coloured band is one run, named with its mode in the first "
                      "plot; the grey part of a band is start-up and warm-up, or drain (not "
                      "counted in any figure), the clear part the measured window. Lines "
                      "break between runs. Compare syscalls/s and CPU % across bands at the same "
                      "Mbit/s.</div>", name="caption")
        self.layout = column(gridplot([[f] for f in self.figures], toolbar_location="right",
                                      merge_tools=True), caption)
        self._widget: Any = None

    def _make_figures(self, height: int, width: int) -> list[Any]:
        figs = []
        for i, (title, series, _caption) in enumerate(LIVE_FIGURES):
            unit = ticks.unit(series[0][0])  # one unit per figure: its series share it
            f = figure(title=f"{title} ({unit})", height=height, width=width, tools=_TOOLS,
                       x_axis_label="time since the panel opened (s)" if i == len(
                           LIVE_FIGURES) - 1 else "time (s)", y_axis_label=unit)
            renderers = []
            for col, color in series:
                renderers.append(f.line("x", col, source=self.source, color=color,
                                        line_width=2, legend_label=ticks.tick(col).label))
            f.add_tools(HoverTool(renderers=renderers, tooltips=[
                ("run", "@run"), ("t", "@x{0.0} s"),
                *[(ticks.tick(col).label, f"@{col}{{0,0.0}} {unit}") for col, _ in series]],
                mode="vline"))
            f.legend.click_policy = "hide"
            f.legend.label_text_font_size = "9pt"
            f.add_layout(f.legend[0], "right")  # beside the plot, not over the lines
            figs.append(fmt.style_axes(f))
        return figs

    # -- thread side ----------------------------------------------------------------------

    def push(self, tick: Mapping[str, Any]) -> None:
        """Queue one sampler tick (any thread; never touches bokeh objects off the owner
        thread when a kernel loop exists)."""
        row = {c: _num(tick.get(c)) for c in LIVE_COLUMNS if c not in ("x", "run")}
        row["x"] = time.monotonic() - self._epoch
        row["run"] = self.run_label
        self._queue(row)

    def mark(self, phase: str, relay: Any = None) -> None:
        """A run's phase changed (experiment.run calls this, on its thread): "starting"
        opens a new band named after `relay` (run_label()) and breaks the lines; "window"
        ends its grey warm-up; "drain" starts its grey drain."""
        if phase == "starting" and relay is not None:
            self.run_label = run_label(relay)
        self._queue({"mark": phase, "x": time.monotonic() - self._epoch,
                     "label": self.run_label, "io": str(getattr(relay, "io", ""))})

    def _queue(self, item: dict[str, Any]) -> None:
        with self._lock:
            self._pending.append(item)
            schedule = self._loop is not None and not self._scheduled
            if schedule:
                self._scheduled = True
        if self._loop is None:
            self.flush()
        elif threading.current_thread() is self._owner:
            self.flush()
        elif schedule:
            self._loop.add_callback(self.flush)

    def pump(self) -> None:
        """Flush queued ticks if called on the panel's owner thread (a no-op elsewhere)."""
        if threading.current_thread() is self._owner:
            self.flush()

    def flush(self) -> int:
        """Stream every queued tick into the data source and apply the run marks between
        them, in order; returns how many ticks."""
        with self._lock:
            self._scheduled = False
            items = list(self._pending)
            self._pending.clear()
            n = 0
            rows: list[dict[str, Any]] = []
            for item in items:
                if "mark" in item:
                    n += self._stream(rows)
                    rows = []
                    self._apply_mark(item)
                else:
                    rows.append(item)
            n += self._stream(rows)
        return n

    def _stream(self, rows: list[dict[str, Any]]) -> int:
        if not rows:
            return 0
        data = {c: [r[c] for r in rows] for c in LIVE_COLUMNS}
        self.source.stream(data, rollover=self.rollover)
        self.ticks_seen += len(rows)
        if self._runs:  # the current run's band (and open grey stretch) reach its last tick
            self._runs[-1].reach(rows[-1]["x"])
        return len(rows)

    def _apply_mark(self, m: dict[str, Any]) -> None:
        x = m["x"]
        if m["mark"] == "starting":
            if len(self.source.data["x"]):
                # a row of NaN between two runs: bokeh breaks a line at NaN, so no line is
                # drawn across the gap between one run's last tick and the next one's first
                gap = {c: [float("nan")] for c in LIVE_COLUMNS if c != "run"}
                self.source.stream(gap | {"run": [""], "x": [x]}, rollover=self.rollover)
            if self._runs:
                self._runs[-1].close()
            self._runs.append(_RunBand(self.figures, x, m["label"], m["io"]))
        elif self._runs:
            self._runs[-1].phase(m["mark"], x)

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
            self.source.data = {c: [] for c in LIVE_COLUMNS}

    # -- display --------------------------------------------------------------------------

    def widget(self) -> Any:
        """The panel as an ipywidget that renders on every page load (views.BokehWidget),
        made once."""
        if self._widget is None:
            from labkit.views.bokeh_widget import BokehWidget

            self._widget = BokehWidget(self.layout, loop=self._loop)
        return self._widget

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget()._repr_mimebundle_(**kwargs)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


# ---- comparison figures -------------------------------------------------------------------


def _groups(df: pd.DataFrame, col: str) -> list[Any]:
    vals = list(dict.fromkeys(df[col].tolist()))
    order = list(MODE_COLORS)
    return sorted(vals, key=lambda v: (order.index(v) if v in order else len(order), str(v)))


def bars_ci(stats: pd.DataFrame, metric: str, group: str = "io", x: str | None = "rate_mbps",
            title: str | None = None, caption: str | None = None) -> Any:
    """Bars of the mean of `metric` per `group` (colour), side by side per `x`, with 95 % CI
    whiskers, from labkit.lab.stats.summarize() output."""
    st = stats[stats["metric"] == metric].copy()
    if x is not None and x not in st:
        x = None
    groups = _groups(st, group) if not st.empty else []
    xs = sorted(dict.fromkeys(st[x].tolist()), key=_sort_key) if x else [""]
    factors = [(_fmt(xv), str(g)) for xv in xs for g in groups]
    rows = []
    for _, r in st.iterrows():
        xv = _fmt(r[x]) if x else ""
        rows.append({
            "factor": (xv, str(r[group])), "mean": r["mean"], "median": r["median"],
            "low": _or(r["ci_low"], r["mean"]), "high": _or(r["ci_high"], r["mean"]),
            "n": int(r["n"]), "group": str(r[group]), "xv": xv,
            "color": color_for(r[group], groups),
            "ci": "n < 2: no CI" if r["n"] < 2 else fmt.interval(r["ci_low"], r["ci_high"])
            + (" (lower end cut at 0)" if bool(r.get("ci_clipped", False)) else ""),
        })
    src = _source(pd.DataFrame(rows, columns=[
        "factor", "mean", "median", "low", "high", "n", "group", "xv", "color", "ci"]))
    name, unit = FIGURES.get(metric, (metric, ""))
    # the groups are the bars' colours (their legend is the hover); the axis names x only
    xlabel = ("offered rate (Mbit/s; unpaced: as fast as the relay takes)" if x == "rate_mbps"
              else (x or f"{group} (mode)"))
    f = figure(x_range=FactorRange(*factors) if factors else FactorRange(),
               title=title or f"{name[0].upper()}{name[1:]}, mean with 95 % CI", height=340,
               width=820, tools=_TOOLS, x_axis_label=xlabel, y_axis_label=unit or name)
    bars = f.vbar(x="factor", top="mean", width=0.8, source=src, color="color", alpha=0.85,
                  line_color="white")
    f.add_layout(Whisker(source=src, base="factor", upper="high", lower="low",
                         line_width=1.5))
    f.add_tools(HoverTool(renderers=[bars], tooltips=[
        (group, "@group"), (x or "", "@xv"), ("mean", f"@mean{{0,0.000}} {unit}"),
        ("median", "@median{0,0.000}"), ("95% CI", "@ci"), ("runs", "@n")]))
    f.y_range.start = 0
    tops = [v for r in rows for v in (r["high"], r["mean"]) if v == v]
    if tops and max(tops) > 0:
        f.y_range.end = max(tops) * 1.08  # room for the whiskers, not just the bars
    f.xgrid.grid_line_color = None
    f.xaxis.major_label_orientation = 0.6 if len(factors) > 8 else 0
    return captioned(f, caption or f"Each bar is the mean over repeats; whiskers are the 95 % "
                     f"t-interval. Lower {name} at the same offered rate is better.")


def _source(df: pd.DataFrame) -> ColumnDataSource:
    """A data source from a frame's columns (not its index)."""
    return ColumnDataSource({str(c): df[c].to_numpy() for c in df.columns})


def _or(v: Any, default: Any) -> Any:
    return default if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _sort_key(v: Any) -> tuple[int, Any]:
    if isinstance(v, float) and math.isnan(v):
        return (1, 0)
    return (0, v) if isinstance(v, int | float) else (0, str(v))


def offered_vs_delivered(runs: pd.DataFrame, group: str = "io") -> Any:
    """Delivered vs offered Mbit/s per run (colour = group), with the y = x line, and a
    second plot of loss % against the offered rate."""
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    groups = _groups(ok, group) if not ok.empty else []
    top = max([1.0, *ok["offered_mbps"].dropna().tolist(), *ok["mbps"].dropna().tolist()]) \
        if not ok.empty else 1.0
    f = figure(title="Offered vs delivered rate", height=340, width=410, tools=_TOOLS,
               x_axis_label="offered (Mbit/s)", y_axis_label="delivered (Mbit/s)",
               x_range=Range1d(0, top * 1.08), y_range=Range1d(0, top * 1.08))
    g2 = figure(title="Loss vs offered rate", height=340, width=410, tools=_TOOLS,
                x_axis_label="offered (Mbit/s)", y_axis_label="loss (%)",
                x_range=f.x_range)
    f.add_layout(Slope(gradient=1, y_intercept=0, line_color="#999", line_dash="dashed"))
    tips = [(group, f"@{{{group}}}"), ("run", "@run_id"), ("offered", "@offered_mbps{0,0.0} "
            "Mbit/s"), ("delivered", "@mbps{0,0.0} Mbit/s"), ("loss", "@loss_pct{0.00} %"),
            ("CPU", "@relay_cpu_pct{0.0} %")]
    legend_items = []
    for g in groups:
        sub = ok[ok[group] == g][["run_id", group, "offered_mbps", "mbps", "loss_pct",
                                  "relay_cpu_pct", "rate_mbps"]].copy()
        sub[group] = sub[group].astype(str)
        src = _source(sub)
        c = color_for(g, groups)
        r1 = f.scatter("offered_mbps", "mbps", source=src, size=9, color=c, alpha=0.8)
        r2 = g2.scatter("offered_mbps", "loss_pct", source=src, size=9, color=c, alpha=0.8,
                        marker="triangle")
        mean = sub.groupby("rate_mbps", dropna=False)[["offered_mbps", "mbps", "loss_pct"]] \
            .mean().sort_values("offered_mbps")
        f.line(mean["offered_mbps"].to_numpy(), mean["mbps"].to_numpy(), color=c, line_width=2)
        g2.line(mean["offered_mbps"].to_numpy(), mean["loss_pct"].to_numpy(), color=c,
                line_width=2)
        legend_items.append((str(g), [r1]))
        f.add_tools(HoverTool(renderers=[r1], tooltips=tips))
        g2.add_tools(HoverTool(renderers=[r2], tooltips=tips))
    if legend_items:
        f.add_layout(Legend(items=legend_items, location="top_left"))
    g2.y_range.start = 0
    grid = gridplot([[fmt.style_axes(f), fmt.style_axes(g2)]], toolbar_location="right",
                    merge_tools=True)
    div = Div(text=f'<div class="labkit-caption" style="{CAPTION_CSS}">Points on the dashed '
              "line delivered everything offered; where a mode bends below it, the loss plot "
              "rises: that offered rate is past its capacity.</div>", name="caption")
    layout = column(grid, div, name="labkit:offered-vs-delivered")
    return layout


def plots_in(layout: Any) -> list[Any]:
    """Every Plot inside a layout, in creation order."""
    found = [m for m in layout.references() if isinstance(m, Plot)]
    return sorted(found, key=lambda p: int("".join(c for c in p.id if c.isdigit()) or 0))


_CDF_POINTS = (("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999),
               ("max", 1.0))


def latency_cdf(runs: pd.DataFrame, group: str = "io", by: str | None = "rate_mbps") -> Any:
    """One-way latency CDF per group (and offered rate), through the recorded percentiles
    (min, p50, p90, p99, p99.9, max; the median of each over repeats)."""
    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    if by is not None and by not in ok:
        by = None
    f = figure(title="One-way latency CDF", height=360, width=820, tools=_TOOLS,
               x_axis_type="log", x_axis_label="one-way latency (µs, log scale)",
               y_axis_label="fraction of packets", y_range=Range1d(0, 1.02))
    groups = _groups(ok, group) if not ok.empty else []
    byvals = sorted(dict.fromkeys(ok[by].tolist()), key=_sort_key) if by else [None]
    dashes = ["solid", "dashed", "dotted", "dotdash", "dashdot"]
    items = []
    for g in groups:
        for i, bv in enumerate(byvals):
            sub = ok[ok[group] == g]
            if by is not None:
                sub = sub[(sub[by] == bv) | (sub[by].isna() & pd.isna(bv))]
            if sub.empty:
                continue
            xs = [float(sub[f"lat_{k}_us"].median()) for k, _ in _CDF_POINTS]
            ys = [q for _, q in _CDF_POINTS]
            xs = [max(v, 0.1) for v in xs]
            label = f"{g}" + (f" @ {_fmt(bv)} Mbit/s" if by else "")
            src = ColumnDataSource({"x": xs, "y": ys, "pct": [k for k, _ in _CDF_POINTS],
                                    "series": [label] * len(xs)})
            r = f.line("x", "y", source=src, color=color_for(g, groups), line_width=2,
                       line_dash=dashes[i % len(dashes)])
            f.scatter("x", "y", source=src, color=color_for(g, groups), size=6)
            items.append((label, [r]))
            f.add_tools(HoverTool(renderers=[r], tooltips=[
                ("series", "@series"), ("percentile", "@pct"), ("latency", "@x{0,0.0} µs"),
                ("fraction", "@y{0.000}")]))
    if items:
        f.add_layout(Legend(items=items, location="bottom_right"))
    return captioned(f, "Further left is faster; look at the tail (top of each curve): "
                     "p99 and p99.9 climb first when a relay queues.")


def scaling(stats: pd.DataFrame, metric: str = "mbps", x: str = "workers",
            group: str = "io") -> Any:
    """`metric` against `x` (relay workers) per group, mean with 95 % CI whiskers."""
    st = stats[(stats["metric"] == metric)].copy() if not stats.empty else stats
    name, unit = FIGURES.get(metric, (metric, ""))
    f = figure(title=f"Scaling with {x}: {name}", height=340, width=820, tools=_TOOLS,
               x_axis_label=f"relay {x} (threads)" if x == "workers" else x,
               y_axis_label=f"{name} ({unit})")
    items = []
    if not st.empty and x in st:
        groups = _groups(st, group)
        agg = st.groupby([group, x], as_index=False).agg(
            mean=("mean", "mean"), low=("ci_low", "mean"), high=("ci_high", "mean"),
            n=("n", "sum"))
        for g in groups:
            sub = agg[agg[group] == g].sort_values(x)
            sub = sub.assign(low=sub["low"].fillna(sub["mean"]),
                             high=sub["high"].fillna(sub["mean"]), label=str(g))
            src = _source(sub.drop(columns=[group]))
            c = color_for(g, groups)
            r = f.line(x, "mean", source=src, color=c, line_width=2)
            f.scatter(x, "mean", source=src, color=c, size=8)
            f.add_layout(Whisker(source=src, base=x, upper="high", lower="low",
                                 line_color=c))
            items.append((str(g), [r]))
            f.add_tools(HoverTool(renderers=[r], tooltips=[
                (group, "@label"), (x, f"@{x}"), ("mean", f"@mean{{0,0.000}} {unit}"),
                ("95% CI", "@low{0,0.000} – @high{0,0.000}"), ("runs", "@n")]))
    if items:
        f.add_layout(Legend(items=items, location="top_left"))
    f.xaxis.ticker.desired_num_ticks = 6
    return captioned(f, f"Ideal scaling is a straight rise with {x}; a flat line means the "
                     "bottleneck is elsewhere (the load generator, a shared core, a lock).")


def run_timeseries(ts: pd.DataFrame, metric: str = "mbps", group: str = "io",
                   max_runs_per_group: int = 1) -> Any:
    """`metric` over time for the first run(s) of each group, the window shaded."""
    unit = ticks.unit(metric)
    f = figure(title=f"One run per mode over time: {metric.replace('_', ' ')}", height=300,
               width=820, tools=_TOOLS, x_axis_label="time since sampling started (s)",
               y_axis_label=f"{metric.replace('_', ' ')} ({unit})")
    items = []
    if not ts.empty and group in ts:
        groups = _groups(ts, group)
        if "rate_mbps" in ts and ts["rate_mbps"].notna().any():
            # the same offered rate for every group: the highest one they all ran
            common = set.intersection(*(set(ts.loc[ts[group] == g, "rate_mbps"].dropna())
                                        for g in groups))
            if common:
                ts = ts[ts["rate_mbps"] == max(common)]
                f.title.text += f" at {max(common):g} Mbit/s offered"
        for g in groups:
            ids = list(dict.fromkeys(ts.loc[ts[group] == g, "run_id"]))[:max_runs_per_group]
            for rid in ids:
                sub = ts[ts["run_id"] == rid][["t", metric, "phase", "run_id"]].copy()
                _shade_phases(f, sub)
                src = _source(sub)
                r = f.line("t", metric, source=src, color=color_for(g, groups), line_width=2)
                items.append((f"{g} ({rid[-6:]})", [r]))
                f.add_tools(HoverTool(renderers=[r], tooltips=[
                    ("run", "@run_id"), ("t", "@t{0.0} s"), ("phase", "@phase"),
                    (metric, f"@{metric}{{0,0.0}} {unit}")], mode="vline"))
    if items:
        f.add_layout(Legend(items=items, location="top_left"))
    return captioned(f, "Grey: warm-up before the measured window and drain after it, shown "
                     "here but counted in no figure or table; the clear stretch is the "
                     "measured window. Look for a flat plateau there (a slope means the run "
                     "had not settled).")


def _shade_phases(f: Any, run_ts: pd.DataFrame) -> None:
    """Grey boxes over one run's ticks outside its measured window (phase "warmup" before
    it, "drain" after it)."""
    t = pd.to_numeric(run_ts["t"], errors="coerce")
    win = t[run_ts["phase"] == "window"]
    if win.empty:
        return
    for left, right in ((t.min(), win.min()), (win.max(), t.max())):
        if right > left:
            f.add_layout(BoxAnnotation(left=float(left), right=float(right),
                                       fill_color="#888888", fill_alpha=0.12, line_alpha=0,
                                       level="underlay"))


def efficiency_curve(runs: pd.DataFrame, group: str = "io", metric: str = "cpu_s_per_gbit",
                     caption: str | None = None, order: Sequence[Any] = ()) -> Any:
    """`metric` (relay CPU-seconds per Gbit) against the offered rate, one line per `group`
    (an I/O mode): every run a point, the line through the mean per offered rate with its
    95 % CI. Unpaced runs sit at the rate they actually offered (open markers). x is log:
    the rates span a decade or more."""
    from labkit.lab.stats import summarize

    ok = runs[runs["status"] == "ok"] if "status" in runs else runs
    name, unit = FIGURES.get(metric, (metric, ""))
    f = figure(title=f"Efficiency curve: {name} against offered load", height=380,
               width=820, tools=_TOOLS, x_axis_type="log",
               x_axis_label="offered rate (Mbit/s, log scale; unpaced: what the senders "
                            "managed)", y_axis_label=f"{name} ({unit})")
    groups = [g for g in order if g in set(ok[group])] or (_groups(ok, group)
                                                            if not ok.empty else [])
    items = []
    for g in groups:
        sub = ok[ok[group] == g].copy()
        sub["paced"] = sub["rate_mbps"].notna() if "rate_mbps" in sub else True
        colour = color_for(g, groups)
        st = summarize(sub, by=["rate_mbps"], metrics=[metric, "offered_mbps"])
        wide = st.pivot_table(index="rate_mbps", columns="metric", values=["mean", "ci_low",
                              "ci_high"], dropna=False) if not st.empty else pd.DataFrame()
        if not wide.empty:
            pts = pd.DataFrame({
                "x": wide[("mean", "offered_mbps")], "mean": wide[("mean", metric)],
                "low": wide[("ci_low", metric)].fillna(wide[("mean", metric)]),
                "high": wide[("ci_high", metric)].fillna(wide[("mean", metric)]),
            }).dropna(subset=["x", "mean"]).sort_values("x")
            pts["label"] = str(g)
            src = _source(pts)
            line = f.line("x", "mean", source=src, color=colour, line_width=2.5)
            f.add_layout(Whisker(source=src, base="x", upper="high", lower="low",
                                 line_color=colour))
            f.add_tools(HoverTool(renderers=[line], tooltips=[
                ("mode", "@label"), ("offered", "@x{0,0} Mbit/s"),
                ("mean", f"@mean{{0,0.000}} {unit}"),
                ("95% CI", "@low{0,0.000} – @high{0,0.000}")]))
            items.append((str(g), [line]))
        for paced, marker in ((True, "circle"), (False, "circle_x")):
            part = sub[sub["paced"] == paced][["offered_mbps", metric, "run_id",
                                               "loss_pct"]].dropna(subset=[metric])
            if part.empty:
                continue
            part = part.assign(label=str(g), kind="paced" if paced else "unpaced")
            dots = f.scatter("offered_mbps", metric, source=_source(part), color=colour,
                             size=7, alpha=0.6, marker=marker)
            f.add_tools(HoverTool(renderers=[dots], tooltips=[
                ("mode", "@label"), ("run", "@run_id"), ("load", "@kind"),
                ("offered", "@offered_mbps{0,0} Mbit/s"),
                (name, f"@{metric}{{0,0.000}} {unit}"), ("loss", "@loss_pct{0.0} %")]))
    if items:
        f.add_layout(Legend(items=items, location="top_right"))
    f.y_range.start = 0
    return captioned(f, caption or "Each point is a run, each line the mean per offered rate "
                     "with its 95 % CI; crossed circles are unpaced runs. Where one mode's "
                     "line lies below another's, it does the same work on less CPU.")


def comparison_figures(runs: pd.DataFrame, stats: pd.DataFrame,
                       timeseries: pd.DataFrame | None = None, group: str = "io") -> list[Any]:
    """The standard set for a sweep: syscalls/packet and CPU/Gbit bars, offered vs
    delivered, latency CDF, scaling with workers (when workers vary), one run over time."""
    out = []
    x = "rate_mbps" if "rate_mbps" in stats else None
    for metric in ("syscalls_per_packet", "perf_syscalls_per_packet", "cpu_s_per_gbit",
                   "ctx_switches_per_kpkt"):
        if not stats.empty and (stats["metric"] == metric).any():
            out.append(bars_ci(stats, metric, group=group, x=x))
    out.append(offered_vs_delivered(runs, group=group))
    out.append(latency_cdf(runs, group=group))
    if "workers" in runs and runs["workers"].nunique() > 1:
        out.append(scaling(stats, "mbps", x="workers", group=group))
        out.append(scaling(stats, "cpu_s_per_gbit", x="workers", group=group))
    if timeseries is not None and not timeseries.empty:
        out.append(run_timeseries(timeseries, "mbps", group=group))
    return out
