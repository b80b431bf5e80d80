"""Does an idle relay cost anything? CPU and loop passes with clients connected, no traffic.

    .venv/bin/python bench/idle.py                    # 8 clients, 5 s, every mode below
    .venv/bin/python bench/idle.py --clients 32 --seconds 10 --keepalive 1

A relay that waits for work costs nothing beyond its keepalive timers: it sleeps in
epoll_wait or io_uring_enter until a client or a timer wakes it. One that polls (sqpoll's
kernel thread while it has not gone idle, or a busy-wait loop) shows as CPU here. For
each mode a fresh relay, `--clients` connected DERP clients (labkit.derp) that send
nothing, a settling pause, then over `--seconds`: the relay process's CPU time (its
CPU-time clock: user + system, every thread, nanoseconds), its event-loop passes (the
shared-memory counter loop_passes) and its context switches. Prints CPU as % of one core
and passes per second. Keepalives are sent every `--keepalive` seconds, so a pass or two
per client per keepalive is the floor. A script, not a test: read the figures.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit import Relay, RelayConfig, derp  # noqa: E402
from labkit.counters.procfs import ProcThreads  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "epoll": {"io": "epoll"},
    "uring (defaults)": {"io": "uring"},
    "uring -defer_taskrun": {"io": "uring", "defer_taskrun": False},
    "uring +sqpoll": {"io": "uring", "sqpoll": True, "defer_taskrun": False},
}
SETTLE_S = 1.0  # handshakes and the first keepalive exchange are over by then


def measure(fields: dict[str, Any], clients: int, seconds: float,
            keepalive: float) -> dict[str, float]:
    with Relay(RelayConfig(**fields, keepalive=keepalive)) as relay:
        conns = [derp.Client.connect(relay.host, relay.port) for _ in range(clients)]
        try:
            time.sleep(SETTLE_S)  # a settling period before the measured one
            proc = ProcThreads(relay.pid)
            s0, c0 = proc.sample().total, relay.counters()
            time.sleep(seconds)  # the measured idle period itself
            s1, c1 = proc.sample().total, relay.counters()
        finally:
            for c in conns:
                c.close()
    return {"cpu_pct": 100 * (s1.cpu_s - s0.cpu_s) / seconds,
            "passes_per_s": (c1["loop_passes"] - c0["loop_passes"]) / seconds,
            "ctx_per_s": (s1.ctx_switches - s0.ctx_switches) / seconds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8, help="connected clients (default 8)")
    p.add_argument("--seconds", type=float, default=5.0,
                   help="measured idle period, s (default 5)")
    p.add_argument("--keepalive", type=float, default=60.0,
                   help="relay keepalive interval, s (default 60, derper's)")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated, of: {', '.join(MODES)}")
    a = p.parse_args()
    modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown or a.clients < 1 or a.seconds <= 0 or a.keepalive <= 0:
        p.error(f"unknown modes {unknown}" if unknown else
                "--clients must be >= 1, --seconds and --keepalive > 0")
    print(f"{a.clients} idle clients, {a.seconds:g} s measured after {SETTLE_S:g} s, "
          f"keepalive every {a.keepalive:g} s")
    print(f"{'mode':24} {'relay CPU %':>12} {'loop passes/s':>14} {'ctx sw/s':>9}")
    for m in modes:
        r = measure(MODES[m], a.clients, a.seconds, a.keepalive)
        print(f"{m:24} {r['cpu_pct']:12.3f} {r['passes_per_s']:14.1f} {r['ctx_per_s']:9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
