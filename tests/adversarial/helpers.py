"""Raw-socket tools for misbehaving clients: closure checks that never sleep blindly."""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import struct
import time
from typing import Any

from conformance.helpers import ARRIVE, counter, dial_to, wait_until

from labkit import derp


def mesh_info(mesh_key: bytes) -> dict[str, Any]:
    return {"meshKey": mesh_key.hex(), "version": 2, "CanAckPings": False}


def wrong_mesh_info(mesh_key: bytes) -> dict[str, Any]:
    """The right key with its last hex digit changed (docs/protocol.md §9 item 40)."""
    text = mesh_key.hex()
    return {"meshKey": text[:-1] + ("0" if text[-1] != "0" else "1"), "version": 2}


def header(frame_type: int, length: int) -> bytes:
    """A frame header claiming `length` payload bytes (none follow)."""
    return struct.pack(">BI", frame_type, length)


def tcp(relay: Any) -> socket.socket:
    """A plain TCP connection to the relay, whatever its TLS mode (nothing sent)."""
    return socket.create_connection((relay.host, relay.port), timeout=ARRIVE)


def peer_closed(sock: socket.socket) -> bool:
    """True once the relay has closed `sock` (EOF or reset); reads and drops data."""
    try:
        sock.settimeout(0.0)
        while True:
            data = sock.recv(65536)
            if not data:
                return True
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return False
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError, ConnectionError):
        return True
    except ssl.SSLError:
        return True
    except OSError:
        return True


def wait_all_closed(socks: list[socket.socket], timeout: float) -> float:
    """Wait until the relay closed every socket; seconds it took (AssertionError after
    `timeout`). Blocks in select, not in sleeps."""
    start = time.monotonic()
    deadline = start + timeout
    open_ = list(socks)
    while open_:
        open_ = [s for s in open_ if not peer_closed(s)]
        if not open_:
            break
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{len(open_)} of {len(socks)} connections still open "
                                 f"after {timeout} s")
        select.select([s.fileno() for s in open_], [], [], min(left, 0.1))
    return time.monotonic() - start


def close_quietly(*socks: Any) -> None:
    for s in socks:
        with contextlib.suppress(OSError):
            s.close()


def reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0): an abrupt disconnect, no FIN handshake."""
    raw = sock
    with contextlib.suppress(OSError):
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    close_quietly(raw)


def pools_full(relay: Any) -> bool:
    """True when every worker's packet buffers are all back in its pool."""
    return all(w["pool_free"] == w["pool_size"] for w in relay.worker_counters())


def counters(relay: Any, *names: str) -> dict[str, int]:
    return {n: counter(relay, n) for n in names}


def wait_delta(relay: Any, before: dict[str, int], want: dict[str, int],
               timeout: float = ARRIVE) -> dict[str, int]:
    """Wait until each counter rose by at least want[name]; return the deltas."""
    def deltas() -> dict[str, int]:
        now = counters(relay, *before)
        return {n: now[n] - before[n] for n in before}

    wait_until(lambda: all(deltas()[n] >= v for n, v in want.items()), timeout,
               f"counters to rise by {want} (from {before})")
    return deltas()


def rss_kib(pid: int) -> int:
    """VmRSS of a process in KiB (/proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def upgraded_raw(relay: Any) -> derp.Client:
    """A Client that has read ServerKey and sent nothing else."""
    from conformance.helpers import upgraded

    return upgraded(relay)


__all__ = ["dial_to"]
