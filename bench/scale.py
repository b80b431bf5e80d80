"""Connection scale: N DERP clients handshake and forward pairwise through the relay in
each mode; prints relay memory per connection (RSS delta / connections).

    .venv/bin/python bench/scale.py                      # 1000 clients, epoll+uring, w1+w4
    .venv/bin/python bench/scale.py --clients 4000 --tls user --io uring --workers 4

Clients are labkit.derp reference clients in this process (every pair is checked:
A sends to B and B to A, each packet verified), so the process needs N + 64 open
files: the soft RLIMIT_NOFILE is raised to that, and the script stops with what to change
when the hard limit is lower. The relay host raises its own limit the same way.
"""

from __future__ import annotations

import argparse
import resource
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from labkit import Relay, RelayConfig, derp  # noqa: E402

FD_SLACK = 64


class LimitError(RuntimeError):
    """The open-file limit cannot hold the requested clients."""


def ensure_open_files(clients: int) -> int:
    """Raise the soft RLIMIT_NOFILE to clients + slack; LimitError when the hard limit
    is lower. Returns the soft limit now in force."""
    want = clients + FD_SLACK
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return want
    if hard != resource.RLIM_INFINITY and hard < want:
        raise LimitError(
            f"{clients} clients need {want} open files but the hard limit is {hard}: "
            f"raise it (ulimit -Hn {want} as root, or nofile in /etc/security/limits.conf)"
            " or use fewer clients")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class ScaleResult:
    mode: str
    clients: int
    connect_s: float
    exchange_s: float
    rss_before_kib: int
    rss_after_kib: int
    conns_current: int

    @property
    def kib_per_conn(self) -> float:
        return (self.rss_after_kib - self.rss_before_kib) / self.clients

    def line(self) -> str:
        return (f"{self.mode:<16} {self.clients:>6} clients  connect {self.connect_s:5.2f} s  "
                f"pairwise {self.exchange_s:5.2f} s  relay RSS {self.rss_before_kib / 1024:6.1f}"
                f" -> {self.rss_after_kib / 1024:6.1f} MiB  = {self.kib_per_conn:5.1f} KiB/conn")


def connect(relay: Any, **kw: Any) -> derp.Client:
    from conformance.helpers import connect_to

    return connect_to(relay, timeout=10.0, **kw)


def settled_conns(relay: Any, expected: int, timeout: float = 2.0) -> int:
    """The relay's conns_current once it reaches `expected`, or its value at `timeout`.

    A connection passes from the acceptor to its worker through a ring, and each thread
    publishes its gauges at most once a millisecond (and before it sleeps), so the sum
    can lag by a connection or two right after the clients' last handshake."""
    deadline = time.monotonic() + timeout
    while (current := relay.counters()["conns_current"]) < expected:
        if time.monotonic() > deadline:
            break
        time.sleep(0.01)
    return current


def run_scale(relay: Any, clients: int) -> ScaleResult:
    """Connect `clients` clients, check every pair both ways, report memory."""
    if clients % 2:
        raise ValueError("clients must be even (pairs)")
    ensure_open_files(clients)
    before = rss_kib(relay.pid)
    conns: list[derp.Client] = []
    try:
        t0 = time.monotonic()
        for _ in range(clients):
            conns.append(connect(relay))
        t1 = time.monotonic()
        after = rss_kib(relay.pid)  # everyone connected, nothing queued
        pairs = [(conns[i], conns[i + 1]) for i in range(0, clients, 2)]
        payloads = {}
        for a, b in pairs:
            p = secrets.token_bytes(32)
            payloads[b.public_key] = p
            a.send(b.public_key, p)
            b.send(a.public_key, p[::-1])
        for a, b in pairs:
            got = b.recv_packet(10.0)
            assert (got.src, got.data) == (a.public_key, payloads[b.public_key]), "pair broke"
            back = a.recv_packet(10.0)
            assert (back.src, back.data) == (b.public_key, payloads[b.public_key][::-1])
        t2 = time.monotonic()
        current = settled_conns(relay, clients)
    finally:
        for c in conns:
            c.close()
    mode = f"{relay.io}-{relay.tls}-w{relay.workers}"
    return ScaleResult(mode, clients, t1 - t0, t2 - t1, before, after, current)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--io", nargs="+", default=["epoll", "uring"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--tls", nargs="+", default=["off"], help="off and/or user")
    args = ap.parse_args(argv)
    try:
        ensure_open_files(args.clients)
    except LimitError as e:
        print(f"scale: {e}", file=sys.stderr)
        return 2
    print(f"{args.clients} clients, pairwise, per mode (relay RSS delta / connections)")
    for io in args.io:
        for workers in args.workers:
            for tls in args.tls:
                cfg = RelayConfig(io=io, workers=workers, tls=tls,
                                  max_conns=max(4096, args.clients))
                with Relay(cfg) as relay:
                    print(run_scale(relay, args.clients).line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
