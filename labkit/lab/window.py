"""A run's measured window: counter snapshots at its edges and the figures derived from
them, declared once in FIGURES (name -> label, unit) in the order a summary shows them.

- mbps, pps, loss: the load generator's own window figures (payload bits received);
- syscalls_per_packet: the relay's own syscall counters (kinds.SYSCALLS) per forwarded
  packet; perf_syscalls_per_packet: the same from perf's raw_syscalls tracepoint, NaN where
  perf is not available (the two are labelled apart: they count different things);
- ctx_switches_per_kpkt: relay context switches (/proc, all threads) per 1,000 packets;
- cpu_s_per_gbit: relay CPU-seconds per forwarded Gbit of payload (efficiency: the fair
  figure when relay and load share cores);
- delivered_*: relay CPU, perf syscalls and context switches per packet (or Gbit) the
  load generator received: the one basis every relay shares, external ones included;
- recvs_per_packet, bytes_per_recv, enters_per_packet, pbuf_refills_per_packet,
  sends_held_per_packet: what the receive path costs per packet (the relay's own
  counters), the figures that explain an io_uring result rather than only show it;
- resched_ipis_per_packet: rescheduling interrupts the relay's CPUs took per forwarded
  packet (labkit.counters.interrupts): the cost a ring without defer_taskrun puts on
  every arriving segment, invisible to the relay's own counters; NaN unless the relay was
  pinned to CPUs of its own;
- lat_*_us: one-way latency percentiles from the load generator.

An external relay (labkit.procs.external) has no shared-memory counters: SHM_ONLY figures
are NaN for it, "not available for this relay".

These are a run's figures; the sampler's per-tick rates are labkit.counters.ticks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from labkit.counters import interrupts, kinds
from labkit.counters.procfs import ProcThreads
from labkit.procs.external import ExternalRelayProcess
from labkit.procs.load import PERCENTILES, LoadResult
from labkit.procs.relay import Relay

# Derived figures of a run, in the order a summary shows them: name -> (label, unit).
FIGURES: dict[str, tuple[str, str]] = {
    "offered_mbps": ("offered rate", "Mbit/s"),
    # paced runs: the share of the asked-for rate the generator never sent (it woke late
    # on a busy machine, or the relay pushed back): non-zero means offered < asked
    "pace_missed_pct": ("asked-for rate the load generator could not send", "%"),
    "mbps": ("delivered rate", "Mbit/s"),
    "pps": ("delivered packets", "packets/s"),
    "loss_pct": ("loss", "%"),
    "syscalls_per_packet": ("syscalls per packet (relay's own count)", "syscalls/packet"),
    "perf_syscalls_per_packet": ("syscalls per packet (perf raw_syscalls)", "syscalls/packet"),
    "ctx_switches_per_kpkt": ("relay context switches per 1,000 packets", "switches/kpkt"),
    "cpu_s_per_gbit": ("relay CPU-seconds per Gbit", "CPU·s/Gbit"),
    "recvs_per_packet": ("receives with data per packet in", "receives/packet"),
    "bytes_per_recv": ("bytes per receive", "bytes/receive"),
    "enters_per_packet": ("io_uring_enter calls per packet", "calls/packet"),
    "pbuf_refills_per_packet": ("provided-buffer refills per packet in", "buffers/packet"),
    "sends_held_per_packet": ("sends held for the batched enter per packet", "sends/packet"),
    "resched_ipis_per_packet": ("rescheduling interrupts on the relay's CPUs per packet",
                                "IPIs/packet"),
    "relay_cpu_pct": ("relay CPU", "% of one core"),
    "load_cpu_pct": ("load generator CPU", "% of one core"),
    "drops": ("relay drops in the window", "packets"),
    # per packet the load generator received: the same basis for every relay, labkit's
    # or an external one (which has no forwarded count of its own)
    "delivered_cpu_s_per_gbit": ("relay CPU-seconds per delivered Gbit", "CPU·s/Gbit"),
    "delivered_perf_syscalls_per_packet": ("relay syscalls per delivered packet (perf)",
                                           "syscalls/packet"),
    "delivered_ctx_switches_per_packet": ("relay context switches per delivered packet",
                                          "switches/packet"),
    "lat_p50_us": ("latency p50", "µs"),
    "lat_p90_us": ("latency p90", "µs"),
    "lat_p99_us": ("latency p99", "µs"),
    "lat_p999_us": ("latency p99.9", "µs"),
    "lat_max_us": ("latency max", "µs"),
}


# Figures only labkit's relay can give (they read its shared-memory counters): NaN, "not
# available for this relay", for an external one, never 0.
SHM_ONLY = ("relay_packets", "relay_syscalls", "syscalls_per_packet", "ctx_switches_per_kpkt",
            "cpu_s_per_gbit", "drops", "recvs_per_packet", "bytes_per_recv",
            "enters_per_packet", "pbuf_refills_per_packet", "sends_held_per_packet",
            "resched_ipis_per_packet")


@dataclass
class Snap:
    """One edge of the window: the relay's counters and both processes' CPU, at time t."""

    t: float
    counters: dict[str, int]
    relay_cpu_s: float
    relay_user_s: float  # tick-granular (10 ms): for the user/system split only
    relay_sys_s: float
    relay_ctx: int
    load_cpu_s: float
    # IPI rows of the relay's CPUs (labkit.counters.interrupts); None when not pinned
    relay_cpu_ipis: dict[str, int] | None = None


def snapshot(relay: Relay | ExternalRelayProcess, relay_proc: ProcThreads,
             load_proc: ProcThreads, relay_cpus: Sequence[int] = ()) -> Snap:
    """`relay_cpus`: the CPUs the relay is pinned to on its own (empty: not pinned)."""
    t = time.monotonic()
    counters = relay.counters()
    r = relay_proc.sample().total
    lo = load_proc.sample().total
    ipis = interrupts.cpu_interrupts(relay_cpus) if relay_cpus else None
    return Snap(t, counters, r.cpu_s, r.utime_s, r.stime_s, r.ctx_switches, lo.cpu_s, ipis)


def window_figures(s0: Snap, s1: Snap, res: LoadResult, size: int) -> dict[str, float]:
    """The figures of the window between s0 and s1 (FIGURES and their raw counts); `res`
    is the load generator's result, `size` its payload bytes per packet."""
    def d(name: str) -> int:
        return s1.counters.get(name, 0) - s0.counters.get(name, 0)

    dt = s1.t - s0.t
    fwd = d("packets_forwarded")
    sys_n = sum(d(n) for n in kinds.in_group(s1.counters, kinds.SYSCALLS))
    drops = sum(d(n) for n in kinds.in_group(s1.counters, kinds.DROPS))
    cpu = s1.relay_cpu_s - s0.relay_cpu_s
    gbit = d("packet_bytes_forwarded") * 8 / 1e9
    nan = float("nan")
    offered = res.sent * size * 8 / res.seconds / 1e6 if res.seconds > 0 else nan
    out = {
        "window_s": dt,
        "offered_mbps": offered,
        "pace_missed": res.pace_missed,
        "pace_missed_pct": (100 * res.pace_missed / (res.sent + res.pace_missed)
                            if res.sent + res.pace_missed else nan),
        "mbps": res.mbps,
        "pps": res.pps,
        "sent": res.sent,
        "received": res.received,
        "lost": res.lost,
        "loss_pct": res.loss_pct,
        "relay_packets": fwd,
        "relay_syscalls": sys_n,
        "syscalls_per_packet": sys_n / fwd if fwd else nan,
        "perf_syscalls_per_packet": nan,
        "relay_ctx_switches": s1.relay_ctx - s0.relay_ctx,
        "ctx_switches_per_kpkt": 1000 * (s1.relay_ctx - s0.relay_ctx) / fwd if fwd else nan,
        "relay_cpu_s": cpu,
        "relay_user_s": s1.relay_user_s - s0.relay_user_s,
        "relay_sys_s": s1.relay_sys_s - s0.relay_sys_s,
        "relay_cpu_pct": 100 * cpu / dt if dt > 0 else nan,
        "load_cpu_s": s1.load_cpu_s - s0.load_cpu_s,
        "load_cpu_pct": 100 * (s1.load_cpu_s - s0.load_cpu_s) / dt if dt > 0 else nan,
        "cpu_s_per_gbit": cpu / gbit if gbit > 0 else nan,
        "drops": drops,
        "latency_samples": res.latency_samples,
    }
    pin, recvs = d("packets_in"), d("recv_data")
    out |= {
        "recvs_per_packet": recvs / pin if pin else nan,
        "bytes_per_recv": d("bytes_in") / recvs if recvs else nan,
        "enters_per_packet": d("sys_io_uring_enter") / fwd if fwd else nan,
        "pbuf_refills_per_packet": d("pbuf_refills") / pin if pin else nan,
        "sends_held_per_packet": d("sends_held") / fwd if fwd else nan,
    }
    ipis = (s1.relay_cpu_ipis["RES"] - s0.relay_cpu_ipis["RES"]
            if s0.relay_cpu_ipis and s1.relay_cpu_ipis else None)
    out["resched_ipis_per_packet"] = ipis / fwd if ipis is not None and fwd else nan
    delivered_gbit = res.received * size * 8 / 1e9
    out["delivered_cpu_s_per_gbit"] = cpu / delivered_gbit if delivered_gbit > 0 else nan
    out["delivered_ctx_switches_per_packet"] = (
        (s1.relay_ctx - s0.relay_ctx) / res.received if res.received else nan)
    out["delivered_perf_syscalls_per_packet"] = nan  # from the time series (perf_per_packet)
    if not s1.counters:  # no shared-memory counters: an external relay
        out |= dict.fromkeys(SHM_ONLY, nan)
    for k in PERCENTILES:  # the load generator's latency summary
        out[f"lat_{k}_us"] = float(res.latency[k])
    return out


def perf_per_packet(ts: pd.DataFrame, t0: float, ws: float, we: float,
                    packets: int) -> float:
    """perf's syscall count over the window from the sampler's cumulative perf column
    (interpolated at the window's edges), per forwarded packet; NaN without perf."""
    if not packets or ts.empty:
        return float("nan")
    cols = [c for c in ("perf.raw_syscalls:sys_enter",) if c in ts.columns]
    t = ts["t"].to_numpy(dtype=float)
    if cols:
        cum = ts[cols[0]].to_numpy(dtype=float)
    elif "perf_syscalls_per_s" in ts:
        rate = ts["perf_syscalls_per_s"].to_numpy(dtype=float)
        cum = np.concatenate([[0.0], np.cumsum(rate[1:] * np.diff(t))])
    else:
        return float("nan")
    ok = np.isfinite(cum) & np.isfinite(t)
    if ok.sum() < 2:
        return float("nan")
    lo, hi = np.interp([ws - t0, we - t0], t[ok], cum[ok])
    return float((hi - lo) / packets)

