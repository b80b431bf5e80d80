"""labkit.views.plots: every figure titled, with units, hover and caption; the live panel's
thread hand-off and rollover."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from bokeh.models import BoxAnnotation, CustomJSTickFormatter, HoverTool, Label, Whisker
from experiment_helpers import fake_sweep, runs_frame

from labkit.counters.ticks import TICK_KEYS
from labkit.lab.stats import summarize
from labkit.views import plots


def _tick(i: int) -> dict[str, float]:
    return {k: float(i) for k in TICK_KEYS}


def _check_figure(layout: Any) -> None:
    """Title, axis labels with units, hover tooltips on every plot; a caption."""
    ps = plots.plots_in(layout)
    assert ps, "no plot in the layout"
    for p in ps:
        assert p.title.text, "every figure has a title"
        for ax in (*p.xaxis, *p.yaxis):
            assert ax.axis_label, f"{p.title.text}: an axis has no label"
        ylabels = " ".join(ax.axis_label for ax in p.yaxis)
        assert any(u in ylabels for u in ("/", "%", "µs", "fraction", "(")), \
            f"{p.title.text}: y axis {ylabels!r} names no unit"
        hovers = [t for t in p.tools if isinstance(t, HoverTool)]
        assert hovers and all(h.tooltips for h in hovers), f"{p.title.text}: no tooltips"
    caption = plots.caption_of(layout)
    assert len(caption) > 30 and "\n" not in caption


@pytest.fixture(scope="module")
def sweep_data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    results = fake_sweep(repeats=3, workers=(1, 2))
    runs = runs_frame(results)
    stats = summarize(runs, by=["io", "rate_mbps", "workers"])
    ts = pd.concat([r.timeseries.assign(run_id=r.summary["run_id"], io=r.summary["io"],
                                        rate_mbps=r.summary["rate_mbps"]) for r in results])
    return runs, stats, ts


def test_bars_with_ci_whiskers(sweep_data: Any) -> None:
    runs, stats, _ = sweep_data
    layout = plots.bars_ci(stats[stats["workers"] == 1], "syscalls_per_packet")
    _check_figure(layout)
    p = plots.plot_of(layout)
    assert any(isinstance(r, Whisker) for r in p.center), "CI whiskers"
    src = p.renderers[0].data_source
    assert len(src.data["mean"]) == 4  # 2 modes x 2 rates
    assert all(lo <= m <= hi for lo, m, hi in zip(src.data["low"], src.data["mean"],
                                                  src.data["high"], strict=True))
    assert "syscalls/packet" in p.yaxis[0].axis_label


@pytest.mark.parametrize("make", [
    lambda r, s, t: plots.offered_vs_delivered(r),
    lambda r, s, t: plots.latency_cdf(r),
    lambda r, s, t: plots.scaling(s, "mbps", x="workers"),
    lambda r, s, t: plots.scaling(s, "cpu_s_per_gbit", x="workers"),
    lambda r, s, t: plots.run_timeseries(t, "mbps"),
    lambda r, s, t: plots.bars_ci(s, "cpu_s_per_gbit"),
], ids=["offered-delivered", "latency-cdf", "scaling-mbps", "scaling-cpu", "timeseries",
        "bars-cpu"])
def test_each_comparison_figure(sweep_data: Any, make: Callable[..., Any]) -> None:
    _check_figure(make(*sweep_data))


def test_comparison_set_and_failed_runs(sweep_data: Any) -> None:
    runs, stats, ts = sweep_data
    runs = runs.copy()
    runs.loc[0, "status"] = "failed"
    figs = plots.comparison_figures(runs, stats, ts)
    titles = [plots.plot_of(f).title.text for f in figs]
    assert any("Syscalls per packet" in t for t in titles)
    assert any("CPU-seconds per Gbit" in t for t in titles)
    assert any("Scaling" in t for t in titles) and any("latency" in t.lower() for t in titles)
    for f in figs:
        _check_figure(f)


def test_live_panel_streams_with_rollover_outside_a_kernel() -> None:
    panel = plots.LivePanel(rollover=5, loop=None)
    _check_figure(panel.layout)
    t = threading.Thread(target=lambda: [panel.push(_tick(i)) for i in range(12)])
    t.start()
    t.join(5)
    assert panel.ticks_seen == 12
    assert len(panel.source.data["mbps"]) == 5, "rollover keeps the last 5"
    assert panel.source.data["mbps"][-1] == 11.0
    panel.clear()
    assert len(panel.source.data["mbps"]) == 0


class _FakeLoop:
    """Stands in for the kernel's IOLoop: records add_callback calls from other threads."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], Any]] = []
        self.lock = threading.Lock()

    def add_callback(self, cb: Callable[[], Any]) -> None:
        with self.lock:
            self.callbacks.append(cb)

    def run_pending(self) -> None:
        with self.lock:
            cbs, self.callbacks = self.callbacks, []
        for cb in cbs:
            cb()


def test_live_panel_marshals_sampler_ticks_to_the_loop_thread() -> None:
    loop = _FakeLoop()
    panel = plots.LivePanel(loop=loop)
    seen_threads: list[str] = []
    panel.source.on_change("data", lambda attr, old, new: seen_threads.append(
        threading.current_thread().name))
    t = threading.Thread(target=lambda: [panel.push(_tick(i)) for i in range(10)],
                         name="sampler")
    t.start()
    t.join(5)
    assert len(panel.source.data["mbps"]) == 0, "the sampler thread never touches bokeh"
    assert 1 <= len(loop.callbacks) <= 10, "flushes are coalesced while one is pending"
    loop.run_pending()  # the loop's (owner) thread
    assert len(panel.source.data["mbps"]) == 10
    assert "sampler" not in seen_threads
    panel.push(_tick(99))  # on the owner thread: flushed at once
    assert panel.source.data["mbps"][-1] == 99.0
    panel.pump()


def test_live_panel_widget_carries_bokehjs_and_patches() -> None:
    """The widget brings BokehJS with it (a reloaded page has none) and sends each change
    of the panel's Document as one PATCH-DOC message; its snapshot is the layout itself."""
    from labkit.views.bokeh_widget import BokehWidget

    panel = plots.LivePanel(loop=None)
    w = panel.widget()
    assert isinstance(w, BokehWidget) and panel.widget() is w
    assert w.bokeh_version and sum(len(s) for s in w.bokehjs) > 500_000
    assert panel.layout.id in w.snapshot
    sent: list[dict[str, Any]] = []
    w.send = lambda content, buffers=None: sent.append(content)  # type: ignore[method-assign]
    panel.push(_tick(5))
    assert [m["kind"] for m in sent] == ["patch"]
    assert "ColumnsStreamed" in sent[0]["content"]


def test_efficiency_curve_one_line_per_mode_with_unpaced_runs() -> None:
    results = fake_sweep(rates=(250, 1000, float("nan")), repeats=2)
    runs = runs_frame(results)
    runs.loc[runs["rate_mbps"].isna(), "offered_mbps"] = 5000.0
    layout = plots.efficiency_curve(runs, group="io")
    _check_figure(layout)
    p = plots.plot_of(layout)
    assert p.x_scale.__class__.__name__ == "LogScale"
    lines = [r for r in p.renderers if r.glyph.__class__.__name__ == "Line"]
    assert len(lines) == 2, "one line per mode"
    xs = list(lines[0].data_source.data["x"])
    assert xs == sorted(xs) and max(xs) >= 4000, "unpaced runs sit at what they offered"
    assert any(r.glyph.marker == "circle_x" for r in p.renderers
               if hasattr(r.glyph, "marker")), "unpaced runs are marked apart"
    assert all(isinstance(ax.formatter, CustomJSTickFormatter) for ax in (*p.xaxis, *p.yaxis))


def test_live_panel_bands_each_run_and_breaks_lines_between_runs() -> None:
    from labkit.config import RelayConfig

    panel = plots.LivePanel(loop=None)
    for cfg in (RelayConfig(io="epoll"), RelayConfig(io="uring", batch=False)):
        panel.mark("starting", cfg)
        panel.push(_tick(1))
        panel.mark("window", cfg)
        panel.push(_tick(2))
        panel.mark("drain", cfg)
        panel.push(_tick(3))
    xs = panel.source.data["x"]
    mbps = panel.source.data["mbps"]
    assert len(xs) == 7 and math.isnan(mbps[3]), "a NaN row between the two runs"
    assert panel.source.data["run"][-1] == "io_uring −batch"
    first = panel.figures[0]
    labels = [a.text for a in first.center if isinstance(a, Label)]
    assert labels == ["epoll", "io_uring −batch"]
    boxes = [a for a in first.center if isinstance(a, BoxAnnotation)]
    bands = [b for b in boxes if b.fill_color != "#888888"]
    greys = [b for b in boxes if b.fill_color == "#888888"]
    assert [b.fill_color for b in bands] == [plots.MODE_COLORS["epoll"],
                                             plots.MODE_COLORS["uring"]]
    assert len(greys) == 4, "warm-up and drain of each run"
    assert bands[0].right == xs[2] and xs[2] < bands[1].left == xs[3] < xs[4]
    assert greys[0].right < xs[2], "the warm-up ends where the window starts"


def test_run_timeseries_shades_the_unmeasured_ticks(sweep_data: Any) -> None:
    _, _, ts = sweep_data
    layout = plots.run_timeseries(ts, "mbps")
    p = plots.plot_of(layout)
    greys = [a for a in p.center if isinstance(a, BoxAnnotation)]
    assert greys, "the warm-up is shaded"
    assert "warm-up" in plots.caption_of(layout) and "excluded" not in plots.caption_of(layout)


def test_bars_have_no_stray_group_label_and_ci_cut_at_zero() -> None:
    runs = pd.DataFrame({"io": ["epoll"] * 3 + ["uring"] * 3, "status": "ok",
                         "lat_p99_us": [100.0, 120.0, 9000.0, 80.0, 90.0, 85.0]})
    stats = summarize(runs, by=["io"], metrics=["lat_p99_us"])
    assert (stats["ci_low"] >= 0).all() and stats["ci_clipped"].any()
    layout = plots.bars_ci(stats, "lat_p99_us", x=None)
    p = plots.plot_of(layout)
    assert "/ io" not in p.xaxis[0].axis_label
    cis = p.renderers[0].data_source.data["ci"]
    assert any("cut at 0" in c for c in cis) and not any("e+" in c for c in cis)
