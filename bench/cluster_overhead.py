"""What does running through dask cost? A local run against the same run placed on a
cluster's workers (issue 16), side by side.

    python bench/cluster_overhead.py                        # epoll and uring, 3 repeats
    python bench/cluster_overhead.py --rate 2000 --repeats 5
    python bench/cluster_overhead.py --testbed              # also: workers in namespaces

Conditions, interleaved per repeat (local, dask, [testbed], local, dask, ...) for each
mode, with the same relay config and load (pairs, size, rate, window):

  local    labkit.run(): relay and load as children of this process, one Sampler here
  dask     labkit.run(cluster=LocalCluster): relay on one worker process, load on another,
           a Sampler on each host streaming through distributed Queues; the same pinning
           (relay CPU 0, load CPU 1). Differences from `local` are dask's: worker
           processes beside the relay, the tasks' queues, the run's coordination
  testbed  (--testbed, root) the same through a testbed of namespaces: the load reaches
           the relay over veth and a bridge instead of loopback, so this column adds the
           network path to dask's cost

Prints per mode and condition the medians of: wall seconds of the whole run() call (set
up to stored result), delivered Mbit/s, relay syscalls per packet, relay CPU-seconds per
Gbit, and the ratio of each to `local`. Not a test: figures for the report.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit.config import RelayConfig  # noqa: E402
from labkit.lab import experiment  # noqa: E402
from labkit.procs.load import LoadConfig  # noqa: E402

FIGURES = (("wall_s", "wall s/run", ".2f"), ("mbps", "Mbit/s", ".0f"),
           ("syscalls_per_packet", "syscalls/pkt", ".3f"),
           ("cpu_s_per_gbit", "relay CPU·s/Gbit", ".3f"))


@contextlib.contextmanager
def conditions(with_testbed: bool) -> Iterator[dict[str, Callable[..., Any]]]:
    from distributed import Client, LocalCluster

    with contextlib.ExitStack() as stack:
        lc = stack.enter_context(LocalCluster(n_workers=2, threads_per_worker=2,
                                              processes=True, dashboard_address=None,
                                              silence_logs=40))
        local_client = stack.enter_context(Client(lc))
        runs: dict[str, Callable[..., Any]] = {
            "local": lambda r, lo: experiment.run(r, lo),
            "dask": lambda r, lo: experiment.run(r, lo, cluster=local_client),
        }
        if with_testbed:
            from labkit.hosts.testbed import Testbed
            from labkit.hosts.testbed_cluster import testbed_client

            tb = stack.enter_context(Testbed("lkbench", hosts=2, subnet="10.76.0.0/24",
                                             control=True))
            tb_client = stack.enter_context(testbed_client(tb))
            runs["testbed"] = lambda r, lo: experiment.run(r, lo, cluster=tb_client)
        yield runs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--io", nargs="+", default=["epoll", "uring"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--rate", type=float, default=None, help="Mbit/s; default unpaced")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--testbed", action="store_true")
    args = ap.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "?")
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    load = LoadConfig(pairs=args.pairs, size=args.size, rate_mbps=args.rate,
                      duration=args.duration, warmup=args.warmup)
    with conditions(args.testbed) as runs:
        for rep in range(args.repeats):
            for io in args.io:
                for name, run in runs.items():
                    t = time.monotonic()
                    r = run(RelayConfig(io=io), load)
                    wall = time.monotonic() - t
                    s = r.summary
                    rows.setdefault((io, name), []).append(
                        {"wall_s": wall} | {k: float(s[k]) for k, _, _ in FIGURES[1:]})
                    print(f"  #{rep + 1} {io:<6} {name:<8} {wall:5.2f} s "
                          f"{float(s['mbps']):7.0f} Mbit/s", file=sys.stderr)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    rate = "unpaced" if args.rate is None else f"{args.rate:g} Mbit/s"
    print(f"CPU: {cpu}; load average before {' '.join(load_before)}, after "
          f"{' '.join(load_after)}")
    print(f"{args.pairs} pairs of {args.size}-byte packets, {rate}, {args.duration:g} s "
          f"window after {args.warmup:g} s warm-up, {args.repeats} interleaved repeats, "
          "medians (ratio to local)")
    head = "| mode | run | " + " | ".join(label for _, label, _ in FIGURES) + " |"
    print(head)
    print("|" + "---|" * (2 + len(FIGURES)))
    for io in args.io:
        base = {k: statistics.median(x[k] for x in rows[(io, "local")]) for k, _, _ in FIGURES}
        for name in runs:
            med = {k: statistics.median(x[k] for x in rows[(io, name)]) for k, _, _ in FIGURES}
            cells = [f"{format(med[k], fmt)}" + ("" if name == "local" else
                                                 f" ({med[k] / base[k]:.2f}×)")
                     for k, _, fmt in FIGURES]
            print(f"| {io} | {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
