"""Every relay I/O mode side by side: the figures behind the lab's headline claims.

    .venv/bin/python bench/modes.py                 # saturation + 1 Gbit/s paced, 3 repeats
    .venv/bin/python bench/modes.py --rates unpaced --repeats 5 --duration 8
    .venv/bin/python bench/modes.py --senders frame-per-write
    .venv/bin/python bench/modes.py --soak 60       # relay RSS through 60 s at saturation

For each mode (epoll as a classic event loop, epoll with coalesced sends, io_uring with
every switch, and io_uring with each switch off in turn) and each kind of sender (labkit's
batched one, and frame-per-write: one send() per frame, as a real client writes) it runs
the same load through labkit.sweep: interleaved repeats (A B C … A B C …, so machine
drift hits every mode and sender alike), relay and load generator pinned to different
CPUs, and prints medians per sender:
delivered Mbit/s, packets/s, loss, relay CPU (user/system), packets per relay CPU-second,
relay CPU-seconds per forwarded Gbit, syscalls per forwarded packet (perf's raw_syscalls
on the relay's threads where perf works, else the relay's own count, labelled), context
switches per second, one-way latency (median and 99th percentile), and the load
generator's CPU (to see whether it, not the relay, was the limit). Then the ratios
against epoll, per sender. The machine's load average is printed before and after. A
script, not a test: the machine is shared, so read medians and ratios.
"""

import argparse
import math
import os
import sys
import tempfile
import threading
import time
from typing import Any

import pandas as pd

from labkit import LoadConfig, Relay, RelayConfig, run, sweep
from labkit.procs.load import SENDERS

# Mode name -> RelayConfig fields.  Multishot receives need provided buffers and
# poll_recv needs both, so turning one off turns off what needs it (the relay refuses the
# other combinations).
MODES: dict[str, dict[str, Any]] = {
    "epoll": {"io": "epoll"},
    "epoll+coalesce": {"io": "epoll", "coalesce": True},
    "epoll+backpressure": {"io": "epoll", "backpressure": True},
    "uring": {"io": "uring"},
    "uring (first defaults)": {"io": "uring", "poll_recv": False, "backpressure": False,
                                "defer_taskrun": False, "single_issuer": False},
    "uring +poll_recv": {"io": "uring", "poll_recv": True},
    "uring +gather_wait": {"io": "uring", "gather_wait": True},
    "uring -backpressure": {"io": "uring", "backpressure": False},
    "uring -defer_taskrun": {"io": "uring", "defer_taskrun": False},
    "uring -batch": {"io": "uring", "batch": False},
    "uring -multishot": {"io": "uring", "multishot": False},
    "uring -pbuf": {"io": "uring", "multishot": False, "provided_buffers": False},
    "uring -coalesce": {"io": "uring", "coalesce": False},
    "epoll tls": {"io": "epoll", "tls": "user"},
    "uring tls": {"io": "uring", "tls": "user"},
}
# What a plain run compares: the issue-13 table's rows (the first defaults: "before").
DEFAULT_MODES = ("epoll", "epoll+coalesce", "uring", "uring (first defaults)",
                 "uring -defer_taskrun", "uring +poll_recv", "uring +gather_wait",
                 "uring -multishot", "epoll tls", "uring tls")


def _resolved(fields: dict[str, Any]) -> dict[str, Any]:
    cfg = RelayConfig(**fields)
    return {"io": cfg.io, "tls": cfg.tls} | cfg.switches()


def mode_of(row: pd.Series) -> str:
    """The MODES name a summary row ran: the first whose resolved io, TLS and switches
    it carries (a mode that equals the defaults is named by the entry listed first)."""
    for name, fields in MODES.items():
        want = _resolved(fields)
        if all((row[k] == v) if k in ("io", "tls") else (bool(row[k]) == v)
               for k, v in want.items()):
            return name
    return "?"


def table(runs: pd.DataFrame) -> pd.DataFrame:
    """Medians per mode of the runs of one sender."""
    ok = runs[runs["status"] == "ok"].copy()
    ok["mode"] = ok.apply(mode_of, axis=1)
    ok["pkts_per_cpu_s"] = ok["relay_packets"] / ok["relay_cpu_s"]
    ok["ctx_per_s"] = ok["relay_ctx_switches"] / ok["window_s"]
    perf = ok["perf_syscalls_per_packet"].notna().all()
    ok["sys_per_pkt"] = ok["perf_syscalls_per_packet"] if perf else ok["syscalls_per_packet"]
    cols = {"mbps": "Mbit/s", "pps": "pkt/s", "loss_pct": "loss %",
            "relay_user_s": "relay user s", "relay_sys_s": "relay sys s",
            "pkts_per_cpu_s": "pkt per relay CPU-s", "cpu_s_per_gbit": "relay CPU-s/Gbit",
            "sys_per_pkt": "syscalls/pkt (perf)" if perf else "syscalls/pkt (relay's own)",
            "ctx_per_s": "ctx sw/s", "recvs_per_packet": "recvs/pkt",
            "bytes_per_recv": "B/recv", "enters_per_packet": "enters/pkt",
            "sends_held_per_packet": "held sends/pkt",
            "resched_ipis_per_packet": "resched IPIs/pkt", "lat_p50_us": "latency p50 us",
            "lat_p99_us": "latency p99 us", "load_cpu_pct": "load gen CPU %"}
    med = ok.groupby("mode", sort=False)[list(cols)].median().rename(columns=cols)
    med.insert(0, "runs", ok.groupby("mode", sort=False).size())
    return med.reindex([m for m in MODES if m in med.index])


def ratios(med: pd.DataFrame) -> pd.DataFrame:
    """Each mode against epoll: the figures the lab's claims rest on."""
    sys_col = next(c for c in med.columns if c.startswith("syscalls/pkt"))
    base = med.loc["epoll"]
    return pd.DataFrame({
        "syscalls/pkt vs epoll": med[sys_col] / base[sys_col],
        "pkt per CPU-s vs epoll": med["pkt per relay CPU-s"] / base["pkt per relay CPU-s"],
        "CPU-s/Gbit vs epoll": med["relay CPU-s/Gbit"] / base["relay CPU-s/Gbit"],
        "Mbit/s vs epoll": med["Mbit/s"] / base["Mbit/s"],
    })


def soak(seconds: float, mode: str, pairs: int, size: int) -> None:
    """Relay RSS sampled once a second through a long saturated run: it must stay flat
    (pools are sized at start, nothing grows per packet)."""
    samples: list[tuple[float, int]] = []

    def watch(relay: Relay, _load: Any) -> None:
        def loop() -> None:
            t0 = time.monotonic()
            while relay.returncode is None:
                try:
                    with open(f"/proc/{relay.pid}/status") as f:
                        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
                except (FileNotFoundError, ProcessLookupError, StopIteration):
                    return
                samples.append((time.monotonic() - t0, rss))
                time.sleep(1.0)  # a sampling period, not a wait for a condition

        threading.Thread(target=loop, daemon=True).start()

    res = run(RelayConfig(**MODES[mode]), LoadConfig(pairs=pairs, size=size, rate_mbps=None),
              duration=seconds, warmup=2.0, perf=False, store=False, on_start=watch)
    s = res.summary
    print(f"soak {mode}: {seconds:.0f} s at saturation, {float(s['mbps']):.0f} Mbit/s, "
          f"loss {float(s['loss_pct']):.2f} %")
    if len(samples) < 3:
        print("  too few RSS samples")
        return
    t, rss = zip(*samples, strict=True)
    k = max(1, len(rss) // 10)  # first and last tenth of the run
    first, last = sum(rss[:k]) / k, sum(rss[-k:]) / k
    print(f"  relay RSS: first {first / 1024:.1f} MiB, last {last / 1024:.1f} MiB, "
          f"max {max(rss) / 1024:.1f} MiB over {len(rss)} samples "
          f"(change {100 * (last - first) / first:+.1f} %)")


def load_average() -> str:
    """The machine's 1/5/15-minute load averages: a shared machine's figures need them."""
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="unpaced,1000",
                   help="comma list of offered Mbit/s or 'unpaced' (default unpaced,1000)")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES),
                   help="comma list from: " + ", ".join(MODES))
    p.add_argument("--senders", default=",".join(SENDERS),
                   help="comma list from: " + ", ".join(SENDERS) + " (default both)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--size", type=int, default=1400)
    p.add_argument("--perf", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--store", default=None,
                   help="directory for the runs' parquet files (default: a temporary one)")
    p.add_argument("--soak", type=float, default=0.0,
                   help="instead: one run this long at saturation, printing relay RSS")
    p.add_argument("--soak-mode", default="uring", choices=list(MODES))
    p.add_argument("--csv", default=None, help="also write every run's summary row here")
    a = p.parse_args(argv)
    if a.soak:
        soak(a.soak, a.soak_mode, a.pairs, a.size)
        return 0
    modes = [m.strip() for m in a.modes.split(",")]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    senders = [x.strip() for x in a.senders.split(",")]
    if set(senders) - set(SENDERS):
        p.error(f"unknown senders {sorted(set(senders) - set(SENDERS))}; choose from {SENDERS}")
    perf = {"auto": "auto", "on": True, "off": False}[a.perf]
    store = a.store or tempfile.mkdtemp(prefix="labkit-bench-")
    pd.set_option("display.width", 200)
    pd.set_option("display.float_format", lambda v: f"{v:.4g}" if not math.isnan(v) else "-")
    print(f"machine: {os.cpu_count()} CPUs, kernel {os.uname().release}; "
          f"{a.pairs} pairs x {a.size} B, {a.duration:g} s windows after {a.warmup:g} s "
          f"warm-up, {a.repeats} interleaved repeats, medians")
    print(f"load average before: {load_average()}")
    for rate in [r.strip() for r in a.rates.split(",")]:
        rate_mbps = None if rate == "unpaced" else float(rate)
        grid = [dict(MODES[m]) | {"rate_mbps": rate_mbps, "sender": snd}
                for snd in senders for m in modes]
        res = sweep(grid, repeats=a.repeats, duration=a.duration, warmup=a.warmup,
                    load=LoadConfig(pairs=a.pairs, size=a.size), perf=perf, store=store,
                    name=f"bench-modes-{rate}", resume=False, compare=None)
        if a.csv:
            path = f"{a.csv}.{rate}.csv"
            res.runs.to_csv(path, index=False)
            print(f"runs written to {path}")
        if not res.failures.empty:
            print(f"{len(res.failures)} failed runs:\n{res.failures[['point', 'error']]}")
        for snd in senders:
            med = table(res.runs[res.runs["load_sender"] == snd])
            print(f"\n== offered load: {rate}" + ("" if rate == "unpaced" else " Mbit/s")
                  + f", sender: {snd}")
            print(med.to_string())
            if "epoll" in med.index:
                print("\nagainst epoll (median of each mode / median of epoll):")
                print(ratios(med).to_string())
        print(f"load average: {load_average()}")
    print(f"\nruns stored in {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
