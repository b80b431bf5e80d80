"""A notebook-ready flame graph from a real relay run (issue 5).

py-spy records the relay host's Python threads (with --native frames); perf records the
relay's C threads, which py-spy cannot see (they have no Python thread state). The graph
must name the relay's own C functions.
"""

from __future__ import annotations

import pytest

import labkit
from labkit import Relay, RelayConfig
from labkit.counters import pyspy
from labkit.counters.perf import perf_status
from labkit.procs.load import Load, LoadConfig

FRAMES = {"epoll": ("ep_wait", "ep_readable"), "uring": ("ur_wait",)}


def test_folded_parsers() -> None:
    raw = ("thread (101): MainThread;select (libc.so.6) 7\n"
           "thread (102): lk_relay_run;lk_relay_run (relay.c:162) 3\n")
    folded, tids = pyspy.parse_pyspy_raw(raw)
    assert tids == {101, 102} and sum(folded.values()) == 10
    script = ("python 201 \n\t  ffffffff81 do_syscall_64 ([kernel.kallsyms])\n"
              "\t  13047 ep_send (/x/_native.so)\n\t  1 lk_worker_main (/x/_native.so)\n"
              "\t  2 start_thread (/lib/libc.so.6)\n\npython 101 \n\t  5 select (libc)\n\n"
              "python 201 \n\t  13047 ep_send (/x/_native.so)\n"
              "\t ffffffffffffffff [unknown] ([unknown])\n")
    got = pyspy.parse_perf_script(script, skip_tids={101}, names={201: "lk_worker 0"})
    assert got == {
        "lk_worker 0 (201);start_thread;lk_worker_main;ep_send;do_syscall_64_[k]": 1,
        "lk_worker 0 (201);[unwind incomplete];ep_send": 1,
    }
    svg = pyspy.render_svg(got, "t <&>")
    assert svg.startswith("<svg") and "lk_worker_main" in svg and "t &lt;&amp;&gt;" in svg


def test_ptrace_status_here() -> None:
    st = pyspy.ptrace_status()
    assert st.ok or (st.reason and st.fix)


@pytest.mark.parametrize("io", ["epoll", "uring"])
def test_flame_graph_shows_relay_native_frames(io: str) -> None:
    pt = pyspy.ptrace_status()
    if not pt.ok:
        pytest.skip(f"py-spy cannot attach: {pt.reason} (fix: {pt.fix})")
    ps = perf_status()
    if not ps.ok:
        pytest.skip("the relay's C threads are only visible to perf, which is unavailable: "
                    f"{ps.reason} (fix: {ps.fix})")
    with Relay(RelayConfig(io=io, workers=1)) as relay:
        cfg = LoadConfig.for_relay(relay, pairs=4, size=1400, duration=6.0, warmup=0.2)
        with Load(cfg) as load:
            fg = labkit.profile(relay, 2.0, rate=299, title=f"relay io={io}")
            load.stop()
    assert fg.path.exists() and fg.path.suffix == ".svg"
    svg = fg.path.read_text()
    assert fg._repr_svg_() == svg and "<svg" in fg._repr_html_()
    assert fg.sources["py-spy"].startswith("live"), fg.sources
    assert fg.sources["perf"].startswith("live"), fg.sources
    # the host's Python side, with native frames under it
    assert fg.has_frame(r"^_cffi_f_lk_relay_run") and fg.has_frame(r"relay_host\.py")
    # the relay's C workers, by name
    assert fg.has_frame(r"^lk_worker_main$"), fg.top(20)
    for name in FRAMES[io]:
        assert fg.has_frame(rf"^{name}$"), (name, fg.top(30))
        assert f">{name}<" in svg or f"{name} (" in svg
    assert "lk_worker 0 (" in svg
