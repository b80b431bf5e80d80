"""The load host: the process behind `labkit load ...` (see labkit.procs.load for the
parent).

A thin Python host around one blocking C call, like labkit.procs.relay_host: it checks the
config, runs lk_load_run() in a thread (cffi releases the GIL), and turns SIGTERM/SIGINT
into lk_load_stop(), which ends the measured window early; the run still drains and
reports.

Protocol with the parent (with --json): one line {"event": "ready", ...} once every pair
has completed its DERP handshake (warm-up starts then), and at the end exactly one line
{"event": "result", ...}; exit 0. Failures go to stderr as
`labkit load: <what failed>: <detail>` with exit 2. Without --json the same facts are
printed for a person.
"""

import json
import os
import secrets
import select
import signal
import sys
import threading
from typing import Any

from labkit.config import ConfigError
from labkit.procs.child import first_line
from labkit.procs.load import LoadConfig, LoadResult

EXIT_FAILED = 2
# How often the waiting main thread repeats a requested stop: lk_load_run clears stale
# stops when it starts, so a signal that lands before that must be repeated.
STOP_REPEAT_S = 0.05


class _StopRepeater:
    """Turns SIGTERM/SIGINT into lk_load_stop(), repeated every STOP_REPEAT_S until the
    run ends: lk_load_run clears stale stops as it starts, so a signal that lands before
    that must be repeated. Until a signal comes the main thread sleeps in select()
    without a timeout (no polling in the measured process)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.requested = False
        self._wake_r, self._wake_w = os.pipe()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.requested = True
        self._lib.lk_load_stop()
        os.write(self._wake_w, b"s")  # wake the select below, which would otherwise resume

    def select(self, fds: list[int]) -> list[int]:
        """Wait for one of fds; repeat the stop while one is pending."""
        while True:
            readable, _, _ = select.select([*fds, self._wake_r], [], [],
                                           STOP_REPEAT_S if self.requested else None)
            if self.requested:
                self._lib.lk_load_stop()
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
            hits = [fd for fd in readable if fd in fds]
            if hits:
                return hits

    def close(self) -> None:
        os.close(self._wake_r)
        os.close(self._wake_w)


def _totals(shm: Any) -> dict[str, int]:
    """All-phase packet counts from the generator's own counters (the host's mapping
    outlives the C side's unlink, and every thread publishes once more as it exits)."""
    if shm is None:
        return {}
    rows = shm.snapshot()
    shm.close()
    return {
        "total_sent": sum(r["load_sent"] for r in rows),
        "total_received": sum(r["load_received"] for r in rows),
        "total_pace_missed": sum(r["load_pace_missed"] for r in rows),
    }


def run(cfg: LoadConfig, as_json: bool) -> int:
    """Run one load for cfg. Returns the process exit code."""
    cfg.validate()
    from labkit.counters.shm import ShmCounters
    from labkit.native import error_text, ffi, lib  # here: --help and config errors need no build

    shm_name = f"/labkit-load-{os.getpid()}-{secrets.token_hex(4)}"
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    c_cfg, _keepalive = cfg.to_c(ffi, lib, ready_fd=ready_w, shm_name=shm_name)
    out = ffi.new("lk_load_result *")
    outcome: dict[str, Any] = {}

    def body() -> None:
        rc = lib.lk_load_run(c_cfg, out)
        outcome["rc"] = rc
        if rc != lib.LK_OK:
            # Read the detail on this thread, right after the failure that set it.
            outcome["error"] = error_text(rc)
        os.write(done_w, b"x")

    stop = _StopRepeater(lib)
    shm = None
    load_thread = threading.Thread(target=body, name="lk_load_run")
    load_thread.start()
    try:
        if first_line(ready_r, done_r, stop.select) is not None:
            shm = ShmCounters(shm_name)
            announce(cfg, shm_name, as_json)
        stop.select([done_r])
        load_thread.join()
    finally:
        for fd in (ready_r, ready_w, done_r, done_w):
            os.close(fd)
        stop.close()
    if outcome["rc"] != lib.LK_OK:
        if shm is not None:
            shm.close()
        print(f"labkit load: {outcome['error']}", file=sys.stderr)
        return EXIT_FAILED
    result = LoadResult.from_c(ffi, out, **_totals(shm))
    if as_json:
        sys.stdout.write(json.dumps(result.to_json()) + "\n")
    else:
        print(summary(cfg, result))
    sys.stdout.flush()
    return 0


def announce(cfg: LoadConfig, shm_name: str, as_json: bool) -> None:
    if as_json:
        event = {
            "event": "ready",
            "pid": os.getpid(),
            "shm": shm_name,
            "target": f"{cfg.host}:{cfg.port}",
            "tls": cfg.tls,
            "mode": cfg.mode,
            "pairs": cfg.pairs,
            "threads": cfg.threads,
        }
        sys.stdout.write(json.dumps(event) + "\n")
    else:
        sys.stdout.write(f"labkit load: {cfg.pairs} pairs connected to {cfg.host}:{cfg.port}; "
                         f"warm-up {cfg.warmup:g} s, then {cfg.duration:g} s measured\n")
    sys.stdout.flush()


def summary(cfg: LoadConfig, r: LoadResult) -> str:
    kind = "round trip" if cfg.mode == "echo" else "one-way"
    lat = r.latency
    return (
        f"{r.mbps:.1f} Mbps, {r.pps:.0f} packets/s over {r.seconds:.2f} s; "
        f"sent {r.sent}, received {r.received}, lost {r.lost} ({r.loss_pct:.2f} %)\n"
        f"{kind} latency µs: p50 {lat['p50']:.1f}  p90 {lat['p90']:.1f}  "
        f"p99 {lat['p99']:.1f}  p99.9 {lat['p999']:.1f}  min {lat['min']:.1f}  "
        f"max {lat['max']:.1f}  mean {lat['mean']:.1f}"
    )


def main(cfg: LoadConfig, as_json: bool) -> int:
    try:
        return run(cfg, as_json)
    except (ConfigError, ImportError) as e:
        print(f"labkit load: {e}", file=sys.stderr)
        return EXIT_FAILED
