"""Notebook 08's experiment: the relay on one testbed host, the load on two others, over
a LAN-like and a WAN-like link, for each event loop.

    rows = across_hosts.compare(io=("epoll", "uring"), duration=2, warmup=0.5)["rows"]

One testbed (labkit.hosts.testbed) of three hosts with a dask worker in each
(labkit.hosts.testbed_cluster); the relay runs on host 1, the load generators on hosts 2
and 3 (run(cluster=...)). Every link is reshaped in place between the shapes (SHAPES:
netem delay and loss on each host's link), so one cluster serves every run. For each
shape and event loop, two runs:

- throughput: unpaced, `pairs` pairs split over the two load hosts: what the link does
  to the rate TCP gets through the relay, to the relay's queues and to its drops;
- ping: echo mode at a low paced rate, one pair per load host: the round-trip time of a
  packet through the relay, and the syscalls per packet at a rate both shapes carry.

Delay and loss need netem: where this kernel has none, call it in the sandbox guest,
`labkit.hosts.testbed.in_guest("labkit.lab.across_hosts:compare", {...})`; it returns
plain data (JSON both ways) with the machine and kernel it ran on.
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from labkit.config import RelayConfig
from labkit.lab import experiment, store
from labkit.procs.load import LoadConfig

# Per link, each way: a host-to-host round trip crosses two links (2 x delay_ms = 20 ms).
SHAPES: dict[str, dict[str, float]] = {
    "LAN": {},
    "WAN: 20 ms RTT, 0.5 % loss": {"delay_ms": 10.0, "loss_pct": 0.5},
}
PING_RATE_MBPS = 0.4  # echo load: low enough that no shape queues it
PING_SIZE = 200
FIGURES = ("mbps", "loss_pct", "drops", "syscalls_per_packet", "perf_syscalls_per_packet",
           "cpu_s_per_gbit", "lat_p50_us", "lat_p99_us")


def compare(io: Sequence[str] = ("epoll", "uring"),
            shapes: Mapping[str, Mapping[str, float]] | None = None, *,
            duration: float = 2.0, warmup: float = 0.5, pairs: int = 4,
            name: str = "lkw", subnet: str = "10.77.0.0/24",
            start_timeout: float | None = None, start_allowance: float | None = None,
            kinds: Sequence[str] = ("throughput", "ping")) -> dict[str, Any]:
    """Every (shape, io) pair's throughput and ping run on one 3-host testbed; returns
    {"machine", "kernel", "date", "rows": [one dict per run]} (see the module text).
    start_timeout: for each process to start (default: the relay's, 60 s inside the
    sandbox guest), start_allowance: how far apart the load hosts may connect (the
    one-CPU guest needs 10 s: its process starts are slow, and the second load host
    starts while the first one sends). kinds: which
    of the two runs to make per shape and event loop."""
    from labkit.hosts.qdisc import LinkShape
    from labkit.hosts.testbed import Testbed
    from labkit.hosts.testbed_cluster import testbed_client

    shapes = dict(shapes if shapes is not None else SHAPES)
    rows: list[dict[str, Any]] = []
    with Testbed(name, hosts=3, subnet=subnet, control=True) as tb, \
            testbed_client(tb) as client:
        for shape_name, shape in shapes.items():
            tb.reshape(LinkShape(**shape))
            for mode in io:
                for kind, load in (
                        ("throughput", LoadConfig(pairs=pairs)),
                        ("ping", LoadConfig(mode="echo", pairs=2, size=PING_SIZE,
                                            rate_mbps=PING_RATE_MBPS))):
                    if kind not in kinds:
                        continue
                    r = experiment.run(RelayConfig(io=mode), load, duration=duration,
                                       warmup=warmup, cluster=client, load_hosts=2,
                                       check=False, start_timeout=start_timeout,
                                       start_allowance=start_allowance)
                    rows.append(_row(r, shape_name, shape, mode, kind))
    return {"machine": store.machine(), "kernel": platform.release(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"), "rows": rows}


def _row(r: Any, shape_name: str, shape: Mapping[str, float], mode: str,
         kind: str) -> dict[str, Any]:
    s, h = r.summary, r.meta["hosts"]
    final = h.get("relay_final_counters") or {}
    ts = r.timeseries
    window = ts[ts["phase"] == "window"] if "phase" in ts else ts
    queued = window["relay.queue_depth"] if "relay.queue_depth" in window else None
    row = {"shape": shape_name, **{f"link_{k}": v for k, v in shape.items()},
           "io": mode, "kind": kind, "status": r.status, "error": r.error,
           "relay_host": h.get("relay"), "load_hosts": h.get("load"),
           "queue_depth_max": final.get("queue_depth_max"),
           "queue_depth_mean": float(queued.mean()) if queued is not None and len(queued)
           else None,
           "load_lateness_s": h.get("load_lateness_s"), "perf_source": s.get("perf_source"),
           # the fastest round trip of any load host: delay is a floor under every packet
           "lat_min_us": min((x["latency"]["min"] for x in h.get("load_results") or []),
                             default=None)}
    for k in FIGURES:
        v = s.get(k)
        row[k] = None if v is None or v != v else float(v)  # NaN -> None: JSON
    return row
