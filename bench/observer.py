"""What does observing the relay cost it? (the observer effect, issue 5)

    python bench/observer.py                 # epoll, 5 interleaved repeats
    python bench/observer.py --io epoll uring --repeats 7 --duration 3
    python bench/observer.py --rate 1000      # paced: the cost shows as CPU per Gbit

Conditions, each a fresh relay under the same unpaced load, run interleaved (A B C D,
A B C D, ...) so drift in the machine hits all of them alike:

  none      nothing reads the relay
  shm       its shared-memory counters read at 10 Hz (what a live plot does)
  sampler   labkit's Sampler at 10 Hz: shm + /proc for relay and load, perf off
  perf      `perf stat -I 200` attached to the relay pid (syscall tracepoints + software
            events), nothing else

Prints medians of delivered Mbps (the load generator's measured window), the ratio to
`none`, and relay CPU-seconds per delivered Gbit (efficiency). Not a test: figures for
the README.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit import Relay, RelayConfig  # noqa: E402
from labkit.counters.perf import PerfStat, perf_status  # noqa: E402
from labkit.counters.procfs import ProcThreads  # noqa: E402
from labkit.counters.sampler import Sampler  # noqa: E402
from labkit.counters.shm import ShmCounters  # noqa: E402
from labkit.procs.load import Load, LoadConfig  # noqa: E402


class ShmReader:
    """Read the relay's counters at `hz` on a monotonic schedule in a thread."""

    def __init__(self, relay: Relay, hz: float = 10.0) -> None:
        self.shm = ShmCounters(relay.shm_name)
        self.period = 1.0 / hz
        self.reads = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        t0 = time.monotonic()
        k = 1
        while not self._stop.wait(max(0.0, t0 + k * self.period - time.monotonic())):
            self.shm.snapshot()
            self.reads += 1
            k += 1

    def __enter__(self) -> ShmReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.shm.close()


def observer(name: str, relay: Relay) -> AbstractContextManager[Any]:
    if name == "none":
        return nullcontext()
    if name == "shm":
        return ShmReader(relay, 10.0)
    if name == "sampler":
        return Sampler(relay=relay, hz=10.0, perf=False, procfs=True)
    if name == "perf":
        return PerfStat(pid=relay.pid, interval_ms=200)
    raise ValueError(name)


def one_run(io: str, cond: str, args: argparse.Namespace) -> dict[str, float]:
    with Relay(RelayConfig(io=io, workers=args.workers, pin_cpus=args.pin)) as relay:
        # pinned: relay worker i on CPU i, the load generator on the CPU after them
        pin: dict[str, Any] = {"pin_cpus": True, "first_cpu": args.workers} if args.pin else {}
        cfg = LoadConfig.for_relay(relay, pairs=args.pairs, size=args.size, rate_mbps=args.rate,
                                   duration=args.duration, warmup=args.warmup, **pin)
        procs = ProcThreads(relay.pid)
        with observer(cond, relay) as obs:
            if isinstance(obs, PerfStat):
                obs.wait_ready()
            c0 = relay.counters()["packet_bytes_forwarded"]
            cpu0 = procs.sample().total.cpu_s
            result = Load(cfg).run()
            cpu1 = procs.sample().total.cpu_s
            c1 = relay.counters()["packet_bytes_forwarded"]
    gbit = (c1 - c0) * 8 / 1e9
    return {"mbps": result.mbps, "loss_pct": result.loss_pct,
            "cpu_s_per_gbit": (cpu1 - cpu0) / gbit if gbit else float("nan")}


def reader_cost(io: str) -> str:
    """The readers' own cost, measured directly: what the throughput noise cannot resolve."""
    with Relay(RelayConfig(io=io, workers=1)) as relay:
        with ShmCounters(relay.shm_name) as shm:
            n = 2000
            t0 = time.perf_counter()
            for _ in range(n):
                shm.snapshot()
            snap = (time.perf_counter() - t0) / n
        with Sampler(relay=relay, hz=10.0, perf=False) as sampler:
            deadline = time.monotonic() + 10
            while len(sampler.ticks()) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
        tick = sampler.tick_seconds / max(1, len(sampler.ticks()))
    return (f"reader cost (io={io}): one shm snapshot of {shm.n_workers} slots "
            f"{snap * 1e6:.0f} us in the reader, no syscall in the relay -> "
            f"{snap * 10 * 100:.3f} % of one CPU at 10 Hz; one Sampler tick (shm + /proc, "
            f"no perf) {tick * 1e3:.2f} ms -> {tick * 10 * 100:.2f} % of one CPU at 10 Hz")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--io", nargs="+", default=["epoll"], choices=["epoll", "uring"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--size", type=int, default=1400)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--rate", type=float, default=None, metavar="MBPS",
                    help="pace the load (default unpaced): at a rate the relay sustains, "
                    "Mbps stays put and CPU-s/Gbit shows the observer's cost")
    ap.add_argument("--pin", action="store_true",
                    help="pin the relay and the load generator to separate CPUs")
    ap.add_argument("--cost-only", action="store_true",
                    help="only the readers' own cost, no throughput runs")
    args = ap.parse_args(argv)
    for io in args.io:
        print(reader_cost(io))
    if args.cost_only:
        return 0

    conds = ["none", "shm", "sampler", "perf"]
    ps = perf_status()
    if not ps.ok:
        print(f"perf unavailable, its row is skipped: {ps.reason} (fix: {ps.fix})")
        conds.remove("perf")
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    for io in args.io:
        runs: dict[str, list[dict[str, float]]] = {c: [] for c in conds}
        for rep in range(args.repeats):
            # rotate the order each repeat: no condition always runs first
            order = conds[rep % len(conds):] + conds[: rep % len(conds)]
            for cond in order:
                r = one_run(io, cond, args)
                runs[cond].append(r)
                log(f"  {io} rep {rep + 1}/{args.repeats} {cond:8s} {r['mbps']:8.1f} Mbps "
                    f"loss {r['loss_pct']:.2f} %  {r['cpu_s_per_gbit']:.3f} CPU-s/Gbit")
        base = statistics.median(r["mbps"] for r in runs["none"])
        base_cpu = statistics.median(r["cpu_s_per_gbit"] for r in runs["none"])
        print(f"\nio={io}: relay workers={args.workers}, {args.pairs} pairs x {args.size} B "
              f"{'unpaced' if args.rate is None else f'paced {args.rate:g} Mbps'}, "
              f"{args.duration:g} s windows, {args.repeats} interleaved repeats, "
              f"{'pinned to separate CPUs' if args.pin else 'unpinned'}, medians")
        print(f"{'observer':10s} {'Mbps':>9s} {'min..max':>17s} {'vs none':>8s} "
              f"{'CPU-s/Gbit':>11s} {'vs none':>8s}")
        for cond in conds:
            mbps = [r["mbps"] for r in runs[cond]]
            med = statistics.median(mbps)
            cpu = statistics.median(r["cpu_s_per_gbit"] for r in runs[cond])
            print(f"{cond:10s} {med:9.1f} {min(mbps):8.1f}..{max(mbps):<8.1f} "
                  f"{med / base:8.3f} {cpu:11.3f} {cpu / base_cpu:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
