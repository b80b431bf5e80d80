"""A second kind of sender: the pure-Python client (labkit.derp), one SendPacket per write.

labkit's load generator writes a batch of frames per send; a perf claim that holds only
for that sender is a claim about the sender. This one writes one frame per send (over
WebSocket: one message per frame), from one thread, while its receiver drains bytes
unparsed, and reports what the relay spent: CPU-seconds per Gbit forwarded (every relay
thread's schedstat, nanoseconds) and syscalls per forwarded packet (the relay's own
counters). It is slow (a Python loop), so read its figures per packet, not its rate.

    m = frame_per_write(relay, "websocket", packets=20_000, size=1400)
    m["cpu_s_per_gbit"], m["syscalls_per_packet"]
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from labkit import derp

DRAIN_TIMEOUT = 10.0  # seconds the relay may take to forward what it was given


def relay_cpu_ns(pid: int) -> int:
    """CPU time of every thread of `pid` so far (schedstat: nanoseconds, not ticks)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that just ended
    return total


def _syscalls(counters: dict[str, int]) -> int:
    return sum(v for k, v in counters.items() if k.startswith("sys_"))


def _settled(c0: dict[str, int], c1: dict[str, int], packets: int) -> bool:
    """Has the relay forwarded (or dropped) every packet it was sent?"""
    done = c1["packets_forwarded"] - c0["packets_forwarded"]
    return done + sum(c1[k] - c0[k] for k in c1 if k.startswith("drop_")) >= packets


def frame_per_write(relay: Any, transport: str, *, packets: int, size: int,
                    **connect: Any) -> dict[str, float]:
    """Send `packets` packets of `size` bytes through `relay` (a running labkit.Relay),
    one frame per write, over `transport`; return the relay's costs and the rate."""
    a = derp.Client.connect(relay.host, relay.port, transport=transport, **connect)
    b = derp.Client.connect(relay.host, relay.port, transport=transport, **connect)
    done = threading.Event()

    def drain() -> None:  # the receiver only has to keep the relay's writes flowing
        b.sock.settimeout(0.2)
        while not done.is_set():
            try:
                if not b.sock.recv(1 << 20):
                    return
            except TimeoutError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    payload = os.urandom(size)
    try:
        c0, cpu0, t0 = relay.counters(), relay_cpu_ns(relay.pid), time.monotonic()
        for _ in range(packets):
            a.send(b.public_key, payload)
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while not _settled(c0, relay.counters(), packets) and time.monotonic() < deadline:
            time.sleep(0.01)  # polling the relay's counters, bounded by the deadline
        cpu1, t1, c1 = relay_cpu_ns(relay.pid), time.monotonic(), relay.counters()
    finally:
        done.set()
        reader.join(1.0)
        a.close()
        b.close()
    fwd = c1["packets_forwarded"] - c0["packets_forwarded"]
    gbit = (c1["packet_bytes_forwarded"] - c0["packet_bytes_forwarded"]) * 8 / 1e9
    nan = float("nan")
    return {"cpu_s_per_gbit": (cpu1 - cpu0) / 1e9 / gbit if gbit else nan,
            "syscalls_per_packet": (_syscalls(c1) - _syscalls(c0)) / fwd if fwd else nan,
            "pps": fwd / (t1 - t0), "forwarded": fwd, "sent": packets}
