"""labkit.views.dashboard.Dashboard without a browser: controls, disabled options with
reasons, a real run in the background, and Stop within a second."""

from __future__ import annotations

import os
import select
import time

import pytest

from labkit.caps import Capability, Caps
from labkit.config import URING_ONLY, RelayConfig
from labkit.views import dashboard


def test_caps_report_becomes_disabled_options_with_reasons() -> None:
    report = Caps([
        Capability("io_uring", False, "io_uring_setup: EPERM", "sysctl it"),
        Capability("ktls", False, "no tls ULP", ""),
        Capability("perf", True, "/usr/bin/perf", ""),
        Capability("cpus", True, "2 usable"),
    ])
    limits = dashboard.machine_limits(report)
    assert limits == {"io:uring": "io_uring_setup: EPERM (to do: sysctl it)",
                      "tls:ktls": "no tls ULP"}
    assert isinstance(dashboard.machine_limits(), dict)


def test_disabled_options_show_why() -> None:
    d = dashboard.Dashboard(limits={"io:uring": "no io_uring here", "tls:ktls": "no kTLS"})
    assert d.io.buttons["uring"].disabled and d.io.buttons["uring"].tooltip == "no io_uring here"
    assert d.tls.buttons["ktls"].disabled and not d.tls.buttons["user"].disabled
    with pytest.raises(ValueError, match="no kTLS"):
        d.tls.value = "ktls"
    assert "no io_uring here" in d.limits_box.value and "no kTLS" in d.limits_box.value


def test_io_choice_sets_switch_defaults_and_disables_uring_only() -> None:
    d = dashboard.Dashboard(limits={})
    for name in URING_ONLY:
        assert d.switches[name].disabled and d.switches[name].tooltip == "io_uring only"
    assert not d.switches["coalesce"].disabled
    d.io.value = "uring"
    assert d.switches["batch"].value and d.switches["multishot"].value
    assert not d.switches["sqpoll"].value and not d.switches["batch"].disabled
    d.switches["batch"].value = False
    cfg = d.relay_config()
    assert cfg.io == "uring" and cfg.batch is False and cfg.multishot is True
    d.io.value = "epoll"
    assert d.relay_config().switches() == RelayConfig(io="epoll").switches()
    d.io.buttons["uring"].value = True  # a click on a button selects it
    assert d.io.value == "uring" and not d.io.buttons["epoll"].value


def test_invalid_config_is_refused_with_the_api_message(monkeypatch: pytest.MonkeyPatch) -> None:
    d = dashboard.Dashboard(limits={})
    monkeypatch.setattr(d, "relay_config", lambda: RelayConfig(workers=0))
    assert d.on_run() is False and not d.running
    assert "invalid" in d.status.value and "workers=0" in d.status.value


def test_run_fills_the_table_and_the_live_figure() -> None:
    d = dashboard.Dashboard(limits={}, hz=10)
    d.io.value = "uring"
    d.rate.value = 100
    d.pairs.value = 2
    d.duration.value = 0.6
    d.warmup.value = 0.2
    before = len(d.live.source.data["mbps"])
    assert d.on_run() is True
    assert d.run_button.disabled and not d.stop_button.disabled
    assert d.wait(30), "the run did not finish within 30 s"
    assert len(d.results) == 1, d.status.value
    row = d.results.iloc[0]
    assert row["status"] == "ok" and row["io"] == "uring" and row["mbps"] > 50
    assert "batch" in row["switches"]
    assert len(d.live.source.data["mbps"]) > before + 3, "the live figure's source grew"
    # experiment.run marked the run on the panel: a band named after its mode
    from bokeh.models import Label

    names = [a.text for a in d.live.figures[0].center if isinstance(a, Label)]
    assert names and names[-1].startswith("io_uring"), names
    assert "<table" in d.table.value and "done" in d.status.value
    assert not d.run_button.disabled and d.stop_button.disabled
    d.rate.value = 50  # a second run: the table grows
    assert d.on_run() and d.wait(30)
    assert len(d.results) == 2


def test_stop_ends_processes_within_a_second() -> None:
    d = dashboard.Dashboard(limits={}, hz=5)
    d.duration.value = 60
    d.warmup.value = 0.2
    d.pairs.value = 1
    d.rate.value = 20
    assert d.on_run()
    assert d.control is not None
    assert d.control.started.wait(20), "the run did not start"
    pids = (d.control.relay_pid, d.control.load_pid)
    fds = [os.pidfd_open(p) for p in pids if p is not None]
    try:
        assert len(fds) == 2
        t0 = time.monotonic()
        d.on_stop()
        pending = set(fds)
        while pending and time.monotonic() - t0 < 1.0:
            ready, _, _ = select.select(list(pending), [], [], 1.0 - (time.monotonic() - t0))
            pending -= set(ready)
        assert not pending, "relay or load still running 1 s after Stop"
    finally:
        for fd in fds:
            os.close(fd)
    assert d.wait(10)
    assert d.results.iloc[-1]["status"] == "stopped"
    assert "stopped" in d.status.value


def test_results_table_is_plain_and_narrow() -> None:
    """No literal None, no exponent, one number style, and fewer columns than the run has
    fields (pairs and size share one; the error column only when a run failed)."""
    import pandas as pd

    row = {c: None for c in dashboard.TABLE_COLUMNS} | {
        "run_id": "nb-run-abcdef123456", "status": "ok", "io": "uring", "tls": "off",
        "workers": 1, "switches": "batch", "rate_mbps": float("nan"), "size": 1400,
        "pairs": 4, "mbps": 99_880.2, "loss_pct": 0.0, "syscalls_per_packet": 0.0028,
        "ctx_switches_per_kpkt": 2154.0, "cpu_s_per_gbit": 0.19, "lat_p99_us": 1766.0}
    page = dashboard.results_table(pd.DataFrame([row])).split("</style>", 1)[1]
    assert "None" not in page and "e+" not in page and "e-" not in page
    assert "99,880" in page and "2,154" in page and "n/a" in page and "unpaced" in page
    assert "4 × 1,400" in page and "error" not in page and "labkit-results" in page
    failed = dashboard.results_table(pd.DataFrame([row | {"status": "failed",
                                                          "error": "relay died"}]))
    assert "relay died" in failed
