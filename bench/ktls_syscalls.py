"""Relay syscalls per packet, userspace TLS vs kernel TLS (issue 4's closing figure).

    labkit sandbox -- .venv/bin/python bench/ktls_syscalls.py    # host without kTLS
    python bench/ktls_syscalls.py                                 # host with kTLS

For each io backend, the same paced load (the load generator with userspace TLS, so the
client side is identical) against a relay with tls=user and with tls=ktls, interleaved
repeats. From the relay's own counters: syscalls per forwarded packet by kind, wire bytes
per packet, and relay CPU-ms per 1000 packets (/proc/PID/stat).

Inside `labkit sandbox` this is a UML measurement: one CPU shared by relay and load
generator, every syscall a host context switch, and the guest's AES-GCM without AES-NI.
It shows where the work moves (syscall counts, bytes through the socket API), not kTLS's
speed: do not compare its CPU figures with a real kernel's. Not a test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labkit import Relay, RelayConfig, caps  # noqa: E402
from labkit.hosts import sandbox  # noqa: E402
from labkit.procs.load import Load, LoadConfig  # noqa: E402

SYSCALLS = ("sys_read", "sys_write", "sys_writev", "sys_epoll_wait", "sys_epoll_ctl",
            "sys_io_uring_enter", "sys_accept", "sys_close", "sys_other")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all threads), from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def one_run(io: str, tls: str, args: argparse.Namespace) -> dict[str, float]:
    with Relay(RelayConfig(io=io, tls=tls)) as relay:
        base = relay.counters()
        cpu0 = cpu_seconds(relay.pid)
        cfg = LoadConfig.for_relay(relay, tls="user", pairs=args.pairs, size=args.size,
                                   rate_mbps=args.rate, duration=args.duration, warmup=0)
        result = Load(cfg).run()
        cpu1 = cpu_seconds(relay.pid)
        c = relay.counters()
    packets = c["packets_forwarded"] - base["packets_forwarded"]
    if packets == 0 or result.lost:
        raise SystemExit(f"{io}/{tls}: {packets} forwarded, {result.lost} lost: not comparable")
    row = {k: (c[k] - base[k]) / packets for k in SYSCALLS}
    row["syscalls"] = sum(row[k] for k in SYSCALLS)
    row["bytes_in"] = (c["bytes_in"] - base["bytes_in"]) / packets
    row["bytes_out"] = (c["bytes_out"] - base["bytes_out"]) / packets
    row["cpu_ms_per_1k"] = (cpu1 - cpu0) * 1e6 / packets
    row["packets"] = packets
    row["conns_ktls"] = c["conns_ktls"]
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--io", nargs="+", default=["epoll", "uring"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--size", type=int, default=1400)
    p.add_argument("--rate", type=float, default=20.0, help="offered Mbps (paced)")
    p.add_argument("--duration", type=float, default=2.0)
    args = p.parse_args()
    ok, why = caps.ktls_probe()
    if not ok:
        print(f"no kTLS in this kernel ({why}): run it inside `labkit sandbox -- ...`",
              file=sys.stderr)
        return 2
    uml = sandbox.inside_guest()
    print(f"kernel {platform.release()}, {os.cpu_count()} CPU(s); load: {args.pairs} pairs, "
          f"{args.size} B, {args.rate} Mbps paced, {args.duration} s, tls=user clients; "
          f"medians of {args.repeats} interleaved repeats")
    if uml:
        print("UML MEASUREMENT (labkit sandbox): one CPU, syscalls cost a host context "
              "switch, AES-GCM without AES-NI. Counts are meaningful; CPU figures are not "
              "a real kernel's and kTLS is slower here than it would be.")
    rows: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.repeats):
        for io in args.io:
            for tls in ("user", "ktls"):
                rows.setdefault((io, tls), []).append(one_run(io, tls, args))
    cols = ("syscalls", "sys_read", "sys_write", "sys_writev", "sys_epoll_wait",
            "sys_io_uring_enter", "bytes_in", "bytes_out", "cpu_ms_per_1k")
    print("\nper forwarded packet (relay's own counters):")
    print(f"{'io':6} {'tls':5} " + " ".join(f"{c.removeprefix('sys_'):>14}" for c in cols))
    for (io, tls), runs in rows.items():
        med = {c: statistics.median(r[c] for r in runs) for c in cols}
        print(f"{io:6} {tls:5} " + " ".join(f"{med[c]:14.3f}" for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
