"""Raw DERP against DERP over WebSocket, side by side in one run: what the framing and
the unmasking cost the relay per packet, with two kinds of sender.

    .venv/bin/python bench/transport.py                      # 3 interleaved repeats
    .venv/bin/python bench/transport.py --repeats 5 --rate 1000 --duration 5

1. batched: labkit's load generator (`transport` raw / websocket), whose senders write
   a batch of frames per send (one WebSocket message per batch), paced at --rate over
   --pairs pairs, through labkit.sweep (interleaved, pinned, perf where it works).
2. frame-per-write: the pure-Python client (labkit.derp), one SendPacket per write
   (one WebSocket message per frame), --py-packets per repeat from one thread, its
   receiver draining bytes unparsed.  Relay CPU from /proc/<pid>/task/*/schedstat,
   syscalls from the relay's own counters.

For each sender and io mode it prints medians (and min..max) of relay CPU-seconds per
Gbit forwarded and syscalls per forwarded packet, and WebSocket / raw with Welch's
t-test p-value.  A script, not a test: the machine is shared, so read the ratios.
"""

import argparse
import os
import statistics
import sys
import tempfile
from typing import Any

import pandas as pd
from scipy import stats

from labkit import LoadConfig, Relay, RelayConfig, sweep
from labkit.lab.frame_sender import frame_per_write

TRANSPORTS = ("raw", "websocket")


def describe(rows: pd.DataFrame, figure: str) -> pd.DataFrame:
    out = []
    for (sender, io), g in rows.groupby(["sender", "io"], sort=False):
        raw = g[g.transport == "raw"][figure].dropna().tolist()
        ws = g[g.transport == "websocket"][figure].dropna().tolist()
        if not raw or not ws:
            continue
        mr, mw = statistics.median(raw), statistics.median(ws)
        p = (float(stats.ttest_ind(raw, ws, equal_var=False).pvalue)
             if len(raw) > 1 and len(ws) > 1 else float("nan"))
        out.append({"sender": sender, "io": io, "figure": figure,
                    "raw": f"{mr:.4g} ({min(raw):.3g}..{max(raw):.3g})",
                    "websocket": f"{mw:.4g} ({min(ws):.3g}..{max(ws):.3g})",
                    "ws / raw": mw / mr if mr else float("nan"), "p (Welch)": p,
                    "runs": f"{len(raw)}+{len(ws)}"})
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ios", default="epoll,uring")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rate", default="1000",
                   help="batched: offered Mbit/s, or 'unpaced' (as fast as the relay takes it)")
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--size", type=int, default=1400)
    p.add_argument("--py-packets", type=int, default=20000)
    p.add_argument("--perf", default="auto", choices=["auto", "on", "off"])
    a = p.parse_args(argv)
    ios = [x.strip() for x in a.ios.split(",")]
    rate = None if a.rate == "unpaced" else float(a.rate)
    rate_text = "unpaced" if rate is None else f"{rate:g} Mbit/s"
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                   "?")
    print(f"machine: {cpu}, {os.cpu_count()} CPUs, kernel {os.uname().release}, load "
          f"{os.getloadavg()[0]:.1f}; {a.pairs} pairs x {a.size} B")
    rows: list[dict[str, Any]] = []

    perf = {"auto": "auto", "on": True, "off": False}[a.perf]
    grid = [{"io": io, "transport": t, "rate_mbps": rate} for io in ios for t in TRANSPORTS]
    res = sweep(grid, repeats=a.repeats, duration=a.duration, warmup=a.warmup,
                load=LoadConfig(pairs=a.pairs, size=a.size), perf=perf,
                store=tempfile.mkdtemp(prefix="labkit-bench-transport-"), resume=False,
                compare=None, name="bench-transport")
    if not res.failures.empty:
        print(f"{len(res.failures)} failed runs:\n{res.failures[['point', 'error']]}")
    ok = res.runs[res.runs["status"] == "ok"]
    use_perf = ok["perf_syscalls_per_packet"].notna().all()
    for _, r in ok.iterrows():
        rows.append({"sender": f"batched ({rate_text})", "io": r["io"],
                     "transport": r["transport"], "cpu_s_per_gbit": r["cpu_s_per_gbit"],
                     "syscalls_per_packet": r["perf_syscalls_per_packet"] if use_perf
                     else r["syscalls_per_packet"], "mbps": r["mbps"],
                     "loss_pct": r["loss_pct"]})

    for io in ios:
        with Relay(RelayConfig(io=io)) as relay:
            for _ in range(a.repeats):
                for t in TRANSPORTS:  # interleaved: drift lands on both alike
                    m = frame_per_write(relay, t, packets=a.py_packets, size=a.size)
                    rows.append({"sender": "frame-per-write (derp.py)", "io": io,
                                 "transport": t, **m})
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"\nsyscalls per packet: {'perf raw_syscalls' if use_perf else 'relay own count'} "
          "for batched; relay's own count for frame-per-write")
    for figure in ("cpu_s_per_gbit", "syscalls_per_packet", "mbps", "loss_pct"):
        print()
        print(describe(df, figure).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
