"""The dashboard: toggle the relay's optimisations and watch the effect live.

    from labkit.views.dashboard import Dashboard
    Dashboard()          # last expression of a cell: shows the panel

Controls: io (epoll / io_uring), TLS (off / user / kTLS), workers, each io_uring switch,
rate, message size, pairs, duration; Run and Stop; the live panel
(labkit.views.plots.LivePanel) and a results table that grows by one row per run. An
option this machine cannot honour is disabled, and the reason is shown beside the controls
(machine_limits(): every option asked of labkit.caps).

Threads: Run starts experiment.run() on a background thread, so the notebook stays
responsive and the live plot keeps moving (its updates are marshalled to the kernel's main
thread, see labkit.views.plots). Widget changes made by that thread are marshalled the
same way (the kernel IOLoop's add_callback). Stop signals the relay and the load
generator by pid at once; they are gone within a second.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import ipywidgets as W
import pandas as pd

from labkit import caps
from labkit.config import MODE_DEFAULTS, SWITCHES, URING_ONLY, ConfigError, RelayConfig
from labkit.lab import experiment
from labkit.lab.result import Result
from labkit.native import contract
from labkit.procs.load import TRANSPORTS, LoadConfig
from labkit.views import fmt
from labkit.views.plots import LivePanel, kernel_loop

IO_CHOICES = (("epoll", "epoll"), ("uring", "io_uring"))
TLS_CHOICES = (("off", "off"), ("user", "user TLS"), ("ktls", "kTLS"))
TABLE_COLUMNS = ("run_id", "status", "io", "tls", "workers", "switches", "rate_mbps", "size",
                 "pairs", "mbps", "loss_pct", "syscalls_per_packet", "perf_syscalls_per_packet",
                 "ctx_switches_per_kpkt", "cpu_s_per_gbit", "lat_p99_us", "error")


# Headers with their units, short enough that the table fits the notebook's text column
_SHORT_HEADERS = {"run_id": "run", "status": "status", "io": "io", "tls": "TLS",
                  "workers": "workers", "switches": "switches", "rate_mbps": "offered (Mbit/s)",
                  "load": "load (pairs × B)", "mbps": "delivered (Mbit/s)",
                  "loss_pct": "loss (%)", "syscalls_per_packet": "syscalls / packet",
                  "perf_syscalls_per_packet": "perf syscalls / packet",
                  "ctx_switches_per_kpkt": "ctx switches / kpkt",
                  "cpu_s_per_gbit": "CPU·s / Gbit", "lat_p99_us": "p99 latency (µs)",
                  "error": "error"}


# ---- what the machine can honour ------------------------------------------------------------

# Every option the dashboard offers, named as labkit.caps.Caps.allows() takes them.
OPTIONS = (*(f"io:{v}" for v, _ in IO_CHOICES), *(f"tls:{v}" for v, _ in TLS_CHOICES),
           *(f"switch:{s}" for s in SWITCHES), "perf")


def machine_limits(machine: caps.Caps | None = None) -> dict[str, str]:
    """Option -> why this machine cannot honour it; absent options are fine. Each of
    OPTIONS is asked of labkit.caps (the process's probe, caps.current(), unless `machine`
    is given): the dashboard never probes by itself."""
    if machine is None:
        try:
            machine = caps.current()
        except Exception as e:  # a broken probe must not break the panel
            return {"caps": f"labkit.caps() failed: {type(e).__name__}: {e}"}
    limits = {}
    for option in OPTIONS:
        ok, why = machine.allows(option)
        if not ok:
            limits[option] = why
    return limits


# ---- a choice whose options can be disabled one by one ---------------------------------------


class Choice(W.HBox):
    """Exclusive toggle buttons with per-option disabling and a tooltip saying why."""

    def __init__(self, label: str, choices: tuple[tuple[str, str], ...], value: str,
                 reasons: Mapping[str, str]) -> None:
        self.buttons: dict[str, W.ToggleButton] = {}
        for v, text in choices:
            reason = reasons.get(v)
            b = W.ToggleButton(value=(v == value), description=text,
                               disabled=reason is not None,
                               tooltip=reason or text, layout=W.Layout(width="auto"))
            b.observe(self._clicked(v), names="value")
            self.buttons[v] = b
        self._value = value
        self._callbacks: list[Callable[[str], None]] = []
        self._busy = False
        super().__init__([W.Label(label, layout=W.Layout(width="90px")),
                          *self.buttons.values()])

    def _clicked(self, v: str) -> Callable[[dict[str, Any]], None]:
        def handler(change: dict[str, Any]) -> None:
            if self._busy:
                return
            if change["new"]:
                self.value = v
            elif v == self._value:  # a click on the selected button keeps it selected
                self._busy = True
                self.buttons[v].value = True
                self._busy = False
        return handler

    @property
    def value(self) -> str:
        return self._value

    @value.setter
    def value(self, v: str) -> None:
        if v not in self.buttons:
            raise ValueError(f"{v!r} is not one of {list(self.buttons)}")
        if self.buttons[v].disabled:
            raise ValueError(f"{v!r} is disabled here: {self.buttons[v].tooltip}")
        self._busy = True
        for k, b in self.buttons.items():
            b.value = k == v
        self._busy = False
        changed = v != self._value
        self._value = v
        if changed:
            for cb in self._callbacks:
                cb(v)

    def on_change(self, cb: Callable[[str], None]) -> None:
        self._callbacks.append(cb)

    def set_disabled(self, disabled: bool) -> None:
        for b in self.buttons.values():
            if not b.tooltip or b.tooltip == b.description:
                b.disabled = disabled


# ---- the dashboard ----------------------------------------------------------------------------


class Dashboard:
    """The control panel. `widget` is the ipywidgets tree; displaying the Dashboard shows it.

    store: False (keep results in memory only), True (your store) or a directory.
    limits: option -> reason overrides (default machine_limits()).
    """

    def __init__(self, store: bool | str | os.PathLike[str] = False, hz: float = 5.0,
                 perf: str | bool = "auto", limits: Mapping[str, str] | None = None,
                 rollover: int = 600) -> None:
        self.store = store
        self.hz = hz
        self.perf = perf
        self.limits = dict(machine_limits() if limits is None else limits)
        self.live = LivePanel(rollover=rollover)
        self.results = pd.DataFrame(columns=list(TABLE_COLUMNS))
        self.last_result: Result | None = None
        self.control: experiment.RunControl | None = None
        self._thread: threading.Thread | None = None
        self._loop = kernel_loop()
        self._build()

    # -- construction -----------------------------------------------------------------------

    def _build(self) -> None:
        lim = self.limits
        self.io = Choice("io", IO_CHOICES, "epoll",
                         {"uring": lim["io:uring"]} if "io:uring" in lim else {})
        self.tls = Choice("TLS", TLS_CHOICES, "off",
                          {k.split(":")[1]: v for k, v in lim.items() if k.startswith("tls:")})
        cores = len(os.sched_getaffinity(0))
        self.workers = W.IntSlider(value=1, min=1, max=max(4, cores), description="workers")
        self.switches: dict[str, W.Checkbox] = {}
        for s in SWITCHES:
            self.switches[s] = W.Checkbox(value=MODE_DEFAULTS["epoll"][s], description=s,
                                          indent=False, tooltip=contract.SWITCHES[s].help,
                                          layout=W.Layout(width="150px"))
        self.rate = W.BoundedFloatText(value=200.0, min=0.0, max=100_000.0, step=50.0,
                                       description="rate Mbit/s",
                                       tooltip="offered payload rate; 0 = unpaced")
        self.size = W.BoundedIntText(value=1400, min=16, max=65536, description="size B",
                                     tooltip="packet payload bytes")
        self.pairs = W.IntSlider(value=4, min=1, max=64, description="pairs")
        self.transport = W.ToggleButtons(options=list(TRANSPORTS), value="raw",
                                         description="transport",
                                         tooltip="raw DERP, or DERP inside WebSocket messages")
        self.duration = W.BoundedFloatText(value=3.0, min=0.2, max=3600.0, step=0.5,
                                           description="duration s")
        self.warmup = W.BoundedFloatText(value=0.5, min=0.0, max=60.0, step=0.5,
                                         description="warm-up s")
        self.run_button = W.Button(description="Run", button_style="success", icon="play")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop",
                                    disabled=True)
        self.run_button.on_click(self.on_run)
        self.stop_button.on_click(self.on_stop)
        self.status = W.HTML("<b>idle</b>")
        self.table = W.HTML(self._table_html())
        self.limits_box = W.HTML(self._limits_html())
        self.io.on_change(self._io_changed)
        self._io_changed(self.io.value)
        sw = list(self.switches.values())
        controls = W.VBox([
            self.io, self.tls, self.workers,
            W.HBox([W.Label("switches", layout=W.Layout(width="90px")),
                    W.GridBox(sw, layout=W.Layout(grid_template_columns="repeat(4, 160px)"))]),
            W.HBox([self.rate, self.size]), W.HBox([self.pairs, self.duration, self.warmup]),
            self.transport,
            W.HBox([self.run_button, self.stop_button, self.status]),
            self.limits_box,
        ])
        self.widget = W.VBox([
            W.HTML("<h3 style='margin:4px 0'>labkit relay dashboard</h3>"),
            controls, self.live.widget(),
            W.HTML("<b>Results</b> (one row per run; lower syscalls/packet and CPU·s/Gbit at "
                   "the same Mbit/s is better)"),
            self.table,
        ])

    def _limits_html(self) -> str:
        if not self.limits:
            return "<small>Every option is available on this machine.</small>"
        items = "".join(f"<li><b>{k}</b>: {v}</li>" for k, v in sorted(self.limits.items()))
        return ("<small>Disabled here (this machine cannot honour them):"
                f"<ul style='margin:2px 0'>{items}</ul></small>")

    def _io_changed(self, io: str) -> None:
        defaults = MODE_DEFAULTS[io]
        for name, box in self.switches.items():
            reason = self.limits.get(f"switch:{name}")
            if io == "epoll" and name in URING_ONLY:
                reason = reason or "io_uring only"
            box.value = bool(defaults[name]) and reason is None
            box.disabled = reason is not None
            box.tooltip = reason or contract.SWITCHES[name].help

    # -- configs ----------------------------------------------------------------------------

    def relay_config(self) -> RelayConfig:
        io = self.io.value
        sw: dict[str, bool | None] = {}
        for name, box in self.switches.items():
            if io == "epoll" and name in URING_ONLY:
                sw[name] = None
            else:
                sw[name] = bool(box.value)
        return RelayConfig(io=io, tls=self.tls.value, workers=int(self.workers.value), **sw)

    def load_config(self) -> LoadConfig:
        rate = float(self.rate.value)
        return LoadConfig(pairs=int(self.pairs.value), size=int(self.size.value),
                          rate_mbps=rate if rate > 0 else None,
                          duration=float(self.duration.value), warmup=float(self.warmup.value),
                          transport=self.transport.value)

    # -- run / stop ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def on_run(self, _button: Any = None) -> bool:
        """Start a run in the background; False (with the reason in the status) if not."""
        if self.running:
            self._set_status("<b>busy</b>: a run is in progress; Stop it first")
            return False
        try:
            relay_cfg = self.relay_config().validate()
            load_cfg = self.load_config()
            load_cfg.replace(port=1).validate()
        except ConfigError as e:
            self._set_status(f"<b style='color:#b00020'>invalid</b>: "
                             f"{_html(str(e)).replace(chr(10), '<br>')}")
            return False
        self.control = experiment.RunControl()
        self.run_button.disabled = True
        self.stop_button.disabled = False
        self._set_status(f"<b>starting</b> {relay_cfg.io}, TLS {relay_cfg.tls}, "
                         f"{relay_cfg.workers} worker(s)…")
        self._thread = threading.Thread(target=self._body, args=(relay_cfg, load_cfg,
                                                                 self.control),
                                        name="labkit-dashboard-run", daemon=True)
        self._thread.start()
        return True

    def on_stop(self, _button: Any = None) -> None:
        if self.control is not None:
            self.control.stop()
            self._set_status("<b>stopping</b>…")

    def wait(self, timeout: float) -> bool:
        """Wait for the current run to finish; True if it did within timeout."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _body(self, relay_cfg: RelayConfig, load_cfg: LoadConfig,
              control: experiment.RunControl) -> None:
        result: Result | None = None
        error: str | None = None

        def started() -> None:
            self._set_status(f"<b>running</b>: relay pid {control.relay_pid}, load pid "
                             f"{control.load_pid}")

        try:
            result = experiment.run(relay_cfg, load_cfg, hz=self.hz, perf=self.perf,
                                    live=self.live, control=control, store=self.store,
                                    check=False,
                                    on_start=lambda _r, _l: self._ui(started))
        except Exception as e:  # shown in the panel: the thread must not die silently
            error = f"{type(e).__name__}: {e}"
        self._ui(lambda: self._finished(result, error))

    def _finished(self, result: Result | None, error: str | None) -> None:
        self.run_button.disabled = False
        self.stop_button.disabled = True
        if result is None:
            self._set_status(f"<b style='color:#b00020'>error</b>: {_html(error or '')}")
            return
        self.last_result = result
        s = result.summary
        row = {c: s.get(c) for c in TABLE_COLUMNS}
        row["switches"] = ", ".join(n for n in SWITCHES if s.get(n)) or "none"
        self.results = pd.concat([self.results, pd.DataFrame([row])], ignore_index=True) \
            if not self.results.empty else pd.DataFrame([row], columns=list(TABLE_COLUMNS))
        self.table.value = self._table_html()
        if result.ok:
            self._set_status(f"<b>done</b>: {s['mbps']:.1f} Mbit/s, "
                             f"{s['syscalls_per_packet']:.3f} syscalls/packet, "
                             f"{s['cpu_s_per_gbit']:.3f} CPU·s/Gbit")
        else:
            self._set_status(f"<b>{result.status}</b>: {_html(str(s['error']))}")

    def _table_html(self) -> str:
        if self.results.empty:
            return "<i>no runs yet</i>"
        return results_table(self.results)

    def _set_status(self, text: str) -> None:
        self.status.value = text

    def _ui(self, fn: Callable[[], None]) -> None:
        """Run fn on the kernel's main thread (directly outside a kernel)."""
        if self._loop is not None and threading.current_thread() is not threading.main_thread():
            self._loop.add_callback(fn)
        else:
            fn()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def results_table(results: pd.DataFrame) -> str:
    """The runs as a table that fits the notebook: numbers by labkit.views.fmt, the run id
    shortened to its tail, pairs and size in one column, the error column only when a run
    failed, unpaced shown as such."""
    view = results.copy()
    view["run_id"] = view["run_id"].astype(str).str[-6:]
    view["rate_mbps"] = [("unpaced" if fmt.missing(v) else v) for v in view["rate_mbps"]]
    view["load"] = [f"{fmt.number(p)} × {fmt.number(z)}" for p, z in
                    zip(view["pairs"], view["size"], strict=True)]
    view = view.drop(columns=["pairs", "size"])
    if view["error"].map(fmt.missing).all():
        view = view.drop(columns=["error"])
    else:
        view["error"] = ["" if fmt.missing(e) else str(e) for e in view["error"]]
    order = [c for c in _SHORT_HEADERS if c in view]
    page = fmt.html_table(view[order], _SHORT_HEADERS, index=False)
    return page.replace('class="dataframe labkit-table"',
                        'class="dataframe labkit-table labkit-results"')


def _html(text: str) -> str:
    import html

    return html.escape(text)
